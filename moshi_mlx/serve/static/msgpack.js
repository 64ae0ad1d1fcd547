// The subset of MessagePack that Kyutai's STT/TTS messages use (https://msgpack.org/).
// Encodes: null, booleans, numbers, strings, arrays, Float32Array (as float32 arrays), Uint8Array
// (bin), plain objects. Decodes every type except extensions.

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

export function encode(value) {
  const parts = [];
  let size = 0;
  const push = (bytes) => {
    parts.push(bytes);
    size += bytes.length;
  };
  const head = (byte, length, count) => {
    const bytes = new Uint8Array(1 + length);
    bytes[0] = byte;
    const view = new DataView(bytes.buffer);
    if (length === 1) view.setUint8(1, count);
    else if (length === 2) view.setUint16(1, count);
    else if (length === 4) view.setUint32(1, count);
    push(bytes);
  };
  const sized = (count, fix, fixLimit, codes) => {
    if (fix !== null && count < fixLimit) head(fix | count, 0);
    else if (codes[0] !== null && count < 0x100) head(codes[0], 1, count);
    else if (count < 0x10000) head(codes[1], 2, count);
    else head(codes[2], 4, count);
  };
  const write = (v) => {
    if (v === null || v === undefined) push(Uint8Array.of(0xc0));
    else if (v === false) push(Uint8Array.of(0xc2));
    else if (v === true) push(Uint8Array.of(0xc3));
    else if (typeof v === "number") {
      const bytes = new Uint8Array(9);
      const view = new DataView(bytes.buffer);
      if (Number.isInteger(v) && v >= 0 && v < 0x80) push(Uint8Array.of(v));
      else if (Number.isInteger(v) && v >= -32 && v < 0) push(Uint8Array.of(v & 0xff));
      else if (Number.isInteger(v) && v >= 0 && v <= 0xffffffff) {
        bytes[0] = 0xce;
        view.setUint32(1, v);
        push(bytes.subarray(0, 5));
      } else if (Number.isInteger(v) && v >= -0x80000000 && v < 0) {
        bytes[0] = 0xd2;
        view.setInt32(1, v);
        push(bytes.subarray(0, 5));
      } else {
        bytes[0] = 0xcb;
        view.setFloat64(1, v);
        push(bytes);
      }
    } else if (typeof v === "string") {
      const bytes = utf8.encode(v);
      sized(bytes.length, 0xa0, 32, [0xd9, 0xda, 0xdb]);
      push(bytes);
    } else if (v instanceof Float32Array) {
      sized(v.length, 0x90, 16, [null, 0xdc, 0xdd]);
      const bytes = new Uint8Array(5 * v.length);
      const view = new DataView(bytes.buffer);
      for (let i = 0; i < v.length; i++) {
        bytes[5 * i] = 0xca;
        view.setFloat32(5 * i + 1, v[i]);
      }
      push(bytes);
    } else if (v instanceof Uint8Array) {
      sized(v.length, null, 0, [0xc4, 0xc5, 0xc6]);
      push(v);
    } else if (Array.isArray(v)) {
      sized(v.length, 0x90, 16, [null, 0xdc, 0xdd]);
      v.forEach(write);
    } else if (typeof v === "object") {
      const entries = Object.entries(v).filter(([, x]) => x !== undefined);
      sized(entries.length, 0x80, 16, [null, 0xde, 0xdf]);
      for (const [key, x] of entries) {
        write(key);
        write(x);
      }
    } else {
      throw new TypeError(`msgpack: cannot encode ${typeof v}`);
    }
  };
  write(value);
  const out = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

export function decode(buffer) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const take = (n) => {
    if (at + n > bytes.length) throw new RangeError("msgpack: message ends early");
    const start = at;
    at += n;
    return start;
  };
  const str = (n) => fromUtf8.decode(bytes.subarray(take(n), at));
  const bin = (n) => bytes.slice(take(n), at);
  const array = (n) => Array.from({ length: n }, read);
  const map = (n) => {
    const out = {};
    for (let i = 0; i < n; i++) {
      const key = read();
      out[key] = read();
    }
    return out;
  };
  function read() {
    const b = bytes[take(1)];
    if (b < 0x80) return b;
    if (b < 0x90) return map(b & 0x0f);
    if (b < 0xa0) return array(b & 0x0f);
    if (b < 0xc0) return str(b & 0x1f);
    if (b >= 0xe0) return b - 0x100;
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(view.getUint8(take(1)));
      case 0xc5: return bin(view.getUint16(take(2)));
      case 0xc6: return bin(view.getUint32(take(4)));
      case 0xca: return view.getFloat32(take(4));
      case 0xcb: return view.getFloat64(take(8));
      case 0xcc: return view.getUint8(take(1));
      case 0xcd: return view.getUint16(take(2));
      case 0xce: return view.getUint32(take(4));
      case 0xcf: return Number(view.getBigUint64(take(8)));
      case 0xd0: return view.getInt8(take(1));
      case 0xd1: return view.getInt16(take(2));
      case 0xd2: return view.getInt32(take(4));
      case 0xd3: return Number(view.getBigInt64(take(8)));
      case 0xd9: return str(view.getUint8(take(1)));
      case 0xda: return str(view.getUint16(take(2)));
      case 0xdb: return str(view.getUint32(take(4)));
      case 0xdc: return array(view.getUint16(take(2)));
      case 0xdd: return array(view.getUint32(take(4)));
      case 0xde: return map(view.getUint16(take(2)));
      case 0xdf: return map(view.getUint32(take(4)));
      default: throw new TypeError(`msgpack: unsupported type byte 0x${b.toString(16)}`);
    }
  }
  return read();
}
