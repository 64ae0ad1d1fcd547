// The page's audio: one AudioContext, the microphone at 24 kHz, a player with a jitter buffer.

let contextPromise = null;

// The shared AudioContext with the worklets loaded. Browsers may start it suspended until the
// user touches the page; `onSuspended` is called then (the page asks for a tap).
export function audioContext(onSuspended) {
  if (!contextPromise) {
    contextPromise = (async () => {
      const context = new AudioContext({ latencyHint: "interactive" });
      await context.audioWorklet.addModule(new URL("worklet.js", import.meta.url));
      return context;
    })();
  }
  return contextPromise.then(async (context) => {
    if (context.state !== "running") {
      const resumed = context.resume();
      const ran = await Promise.race([
        resumed.then(() => true),
        new Promise((done) => setTimeout(() => done(false), 300)),
      ]);
      if (!ran && onSuspended) onSuspended(resumed);
    }
    return context;
  });
}

// A microphone error as a sentence for the user.
export function microphoneError(error) {
  if (!window.isSecureContext || !navigator.mediaDevices) {
    return "The microphone needs https (or localhost): restart the server with --ssl DIR.";
  }
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was denied. Allow it for this site (the icon beside the address) and try again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Plug one in and try again.";
    case "NotReadableError":
      return "The microphone is in use by another program.";
    default:
      return `The microphone could not be opened: ${error && error.message ? error.message : error}`;
  }
}

// Opens the microphone (with the browser's echo cancellation and noise suppression); calls
// `onFrame(pcm, level)` with each 1920-sample Float32Array at 24 kHz. Returns `{ stop() }`.
export async function openMicrophone(onFrame, onSuspended) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw Object.assign(new Error("insecure context"), { name: "SecurityError" });
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: {
      echoCancellation: true,
      noiseSuppression: true,
      autoGainControl: true,
      channelCount: 1,
    },
  });
  const context = await audioContext(onSuspended);
  const source = context.createMediaStreamSource(stream);
  const capture = new AudioWorkletNode(context, "moshi-capture", { numberOfOutputs: 1 });
  const mute = context.createGain();
  mute.gain.value = 0; // keeps the node pulled by the graph, plays nothing
  capture.port.onmessage = (event) => onFrame(event.data.pcm, event.data.level);
  source.connect(capture).connect(mute).connect(context.destination);
  return {
    stop() {
      capture.port.onmessage = null;
      source.disconnect();
      capture.disconnect();
      mute.disconnect();
      stream.getTracks().forEach((track) => track.stop());
    },
  };
}

// Plays 24 kHz Float32Array chunks as they arrive. `stats` is refreshed twenty times a second;
// `onDrained` is called when the audio after `end()` has played out.
export async function openPlayer({ target = 0.12, limit = 1.0, onStats, onDrained, onSuspended } = {}) {
  const context = await audioContext(onSuspended);
  const node = new AudioWorkletNode(context, "moshi-player", {
    numberOfInputs: 0,
    outputChannelCount: [1],
    processorOptions: { target, limit },
  });
  node.connect(context.destination);
  const player = {
    stats: { playedSeconds: 0, bufferedMs: 0, underruns: 0, droppedMs: 0, level: 0 },
    push(pcm) {
      node.port.postMessage({ type: "push", pcm }, [pcm.buffer]);
    },
    end() {
      node.port.postMessage({ type: "end" });
    },
    flush() {
      node.port.postMessage({ type: "reset" }); // drop what is buffered (a barge-in)
    },
    close() {
      node.port.onmessage = null;
      node.disconnect();
    },
  };
  node.port.onmessage = (event) => {
    if (event.data.type === "stats") {
      player.stats = event.data;
      if (onStats) onStats(event.data);
    } else if (event.data.type === "drained" && onDrained) {
      onDrained();
    }
  };
  return player;
}

// Float32 [-1, 1] -> little-endian int16 bytes after a one-byte message kind.
export function pcm16Message(kind, pcm) {
  const bytes = new ArrayBuffer(1 + 2 * pcm.length);
  const view = new DataView(bytes);
  view.setUint8(0, kind);
  for (let i = 0; i < pcm.length; i++) {
    const x = Math.max(-1, Math.min(1, pcm[i]));
    view.setInt16(1 + 2 * i, Math.round(x * 32767), true);
  }
  return bytes;
}

// Little-endian int16 bytes from `offset` -> Float32Array.
export function pcm16Samples(buffer, offset) {
  const view = new DataView(buffer);
  const count = Math.floor((buffer.byteLength - offset) / 2);
  const pcm = new Float32Array(count);
  for (let i = 0; i < count; i++) pcm[i] = view.getInt16(offset + 2 * i, true) / 32768;
  return pcm;
}

// 24 kHz float samples -> a 16-bit mono WAV Blob.
export function wavBlob(chunks, rate = 24000) {
  const count = chunks.reduce((n, chunk) => n + chunk.length, 0);
  const bytes = new ArrayBuffer(44 + 2 * count);
  const view = new DataView(bytes);
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + 2 * count, true);
  text(8, "WAVEfmt ");
  view.setUint32(16, 16, true);
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true);
  view.setUint16(32, 2, true);
  view.setUint16(34, 16, true);
  text(36, "data");
  view.setUint32(40, 2 * count, true);
  let offset = 44;
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i++, offset += 2) {
      view.setInt16(offset, Math.round(Math.max(-1, Math.min(1, chunk[i])) * 32767), true);
    }
  }
  return new Blob([bytes], { type: "audio/wav" });
}
