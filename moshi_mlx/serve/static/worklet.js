// Audio worklets: the microphone as 24 kHz frames, and 24 kHz speech to the speakers.
// `sampleRate` is the AudioContext's rate (44.1 or 48 kHz on most devices).

const MODEL_RATE = 24000;
const FRAME = 1920; // one Mimi frame, 80 ms at 24 kHz

// A streaming windowed-sinc resampler (Hann window, low-pass at the lower Nyquist rate).
class Resampler {
  constructor(from, to, zeros = 12) {
    this.step = from / to; // input samples per output sample
    this.cutoff = Math.min(1, to / from);
    this.width = Math.ceil(zeros / this.cutoff); // half the kernel, in input samples
    this.buffer = new Float32Array(2 * this.width);
    this.length = this.width; // `width` zeros of history before the first sample
    this.time = this.width; // position of the next output sample, in buffer samples
  }

  push(input) {
    if (this.step === 1) return input.slice();
    if (this.length + input.length > this.buffer.length) {
      const grown = new Float32Array(2 * (this.length + input.length));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
    const count = Math.max(0, Math.ceil((this.length - this.width - this.time) / this.step));
    const out = new Float32Array(count);
    const { buffer, width, cutoff } = this;
    for (let n = 0; n < count; n++) {
      const t = this.time + n * this.step;
      const center = Math.floor(t);
      let sum = 0;
      for (let i = center - width + 1; i <= center + width; i++) {
        const x = t - i;
        const window = 0.5 + 0.5 * Math.cos((Math.PI * x) / (width + 1));
        const arg = Math.PI * cutoff * x;
        sum += buffer[i] * window * (arg === 0 ? 1 : Math.sin(arg) / arg);
      }
      out[n] = sum * cutoff;
    }
    this.time += count * this.step;
    const drop = Math.floor(this.time) - width;
    if (drop > 0) {
      buffer.copyWithin(0, drop, this.length);
      this.length -= drop;
      this.time -= drop;
    }
    return out;
  }
}

function rms(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  return samples.length ? Math.sqrt(sum / samples.length) : 0;
}

// Microphone -> Float32Array frames of 1920 samples at 24 kHz, posted with their level.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, MODEL_RATE);
    this.frame = new Float32Array(FRAME);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const samples = this.resampler.push(channel);
    let offset = 0;
    while (offset < samples.length) {
      const take = Math.min(FRAME - this.filled, samples.length - offset);
      this.frame.set(samples.subarray(offset, offset + take), this.filled);
      this.filled += take;
      offset += take;
      if (this.filled === FRAME) {
        const frame = this.frame;
        this.port.postMessage({ pcm: frame, level: rms(frame) }, [frame.buffer]);
        this.frame = new Float32Array(FRAME);
        this.filled = 0;
      }
    }
    return true;
  }
}

// 24 kHz chunks -> the speakers, through a small jitter buffer: playback starts (and restarts
// after running dry) once `target` seconds are queued; beyond `limit` the oldest audio is dropped.
class PlayerProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.target = Math.round((opts.target || 0.12) * sampleRate);
    this.limit = Math.round((opts.limit || 1.0) * sampleRate);
    this.reset();
    this.port.onmessage = (event) => this.receive(event.data);
  }

  reset() {
    this.resampler = new Resampler(MODEL_RATE, sampleRate);
    this.chunks = [];
    this.offset = 0; // read position in chunks[0]
    this.queued = 0;
    this.playing = false;
    this.ending = false;
    this.played = 0; // output samples played (at sampleRate)
    this.underruns = 0;
    this.dropped = 0;
    this.level = 0;
    this.sinceReport = 0;
  }

  receive(message) {
    if (message.type === "push") {
      const samples = this.resampler.push(message.pcm);
      if (samples.length) {
        this.chunks.push(samples);
        this.queued += samples.length;
      }
      while (this.queued > this.limit && this.chunks.length > 1) {
        const oldest = this.chunks.shift();
        this.queued -= oldest.length - this.offset;
        this.dropped += oldest.length - this.offset;
        this.offset = 0;
      }
    } else if (message.type === "end") {
      this.ending = true;
    } else if (message.type === "reset") {
      this.reset();
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && (this.queued >= this.target || (this.ending && this.queued > 0))) {
      this.playing = true;
    }
    let written = 0;
    if (this.playing) {
      while (written < out.length && this.chunks.length) {
        const chunk = this.chunks[0];
        const take = Math.min(out.length - written, chunk.length - this.offset);
        out.set(chunk.subarray(this.offset, this.offset + take), written);
        written += take;
        this.offset += take;
        if (this.offset === chunk.length) {
          this.chunks.shift();
          this.offset = 0;
        }
      }
      this.queued -= written;
      this.played += written;
      if (written < out.length) {
        this.playing = false;
        if (this.ending) {
          this.ending = false;
          this.port.postMessage({ type: "drained" });
        } else {
          this.underruns += 1;
        }
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.level = Math.max(rms(out), this.level * 0.9);
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate / 20) {
      this.sinceReport = 0;
      this.port.postMessage({
        type: "stats",
        playedSeconds: this.played / sampleRate,
        bufferedMs: (1000 * this.queued) / sampleRate,
        underruns: this.underruns,
        droppedMs: (1000 * this.dropped) / sampleRate,
        level: this.level,
      });
    }
    return true;
  }
}

registerProcessor("moshi-capture", CaptureProcessor);
registerProcessor("moshi-player", PlayerProcessor);
