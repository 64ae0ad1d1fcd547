// Text to speech: Kyutai's streaming TTS (`/api/tts_streaming`, msgpack), played as it comes.

import { openPlayer, wavBlob } from "./audio.js";
import * as msgpack from "./msgpack.js";
import { $, askForTap, closeReason, dismiss, notify, socketUrl } from "./ui.js";

const LABELS = { idle: "", connecting: "Connecting…", speaking: "Speaking…", done: "Done" };

export class Speech {
  constructor(info) {
    this.panel = $("panel-tts");
    this.stats = { received: 0, words: 0, playedSeconds: 0, done: false };
    this.session = null;
    const voices = $("tts-voice");
    for (const voice of info.voices || []) {
      const name = typeof voice === "string" ? voice : voice.name;
      voices.append(new Option(name, name));
    }
    if (!voices.options.length) voices.append(new Option("The model's default", ""));
    $("tts-toggle").onclick = () => (this.session ? this.stop() : this.start());
  }

  setState(state) {
    this.panel.dataset.state = state;
    $("tts-state").textContent = LABELS[state] || state;
    $("tts-toggle").textContent = this.session ? "Stop" : "Speak";
    $("tts-toggle").classList.toggle("stop", Boolean(this.session));
  }

  async start() {
    dismiss("tts");
    const text = $("tts-text").value.trim();
    if (!text) return notify("tts", "Type some text to speak first.", "info");
    const session = { chunks: [], words: [], ended: false };
    this.session = session;
    Object.assign(this.stats, { received: 0, words: 0, playedSeconds: 0, done: false });
    this.setDownload(null);
    $("tts-words").replaceChildren();
    this.setState("connecting");
    session.player = await openPlayer({
      target: 0.2,
      onStats: (s) => this.onPlayer(session, s),
      onDrained: () => this.finish(session),
      onSuspended: askForTap,
    });
    const query = { voice: $("tts-voice").value, format: "PcmMessagePack" };
    const socket = new WebSocket(socketUrl("api/tts_streaming", query));
    socket.binaryType = "arraybuffer";
    session.socket = socket;
    socket.onopen = () => {
      for (const word of text.split(/\s+/)) socket.send(msgpack.encode({ type: "Text", text: word }));
      socket.send(msgpack.encode({ type: "Eos" }));
    };
    socket.onmessage = (event) => this.onMessage(session, event.data);
    socket.onclose = (event) => {
      if (session.ended) return;
      if (!session.error && !session.ready && event.code !== 1000) {
        notify("tts", closeReason(event), "error");
      }
      session.closed = true;
      if (session.chunks.length) {
        this.setDownload(session);
        session.player.end();
      } else {
        this.finish(session);
      }
    };
  }

  stop() {
    if (this.session) this.finish(this.session);
  }

  finish(session) {
    if (session.ended) return;
    session.ended = true;
    if (session.socket.readyState <= WebSocket.OPEN) session.socket.close(1000);
    session.player.close();
    if (session.chunks.length) this.setDownload(session);
    this.stats.done = true;
    if (this.session === session) {
      this.session = null;
      this.setState(session.chunks.length ? "done" : "idle");
    }
  }

  onMessage(session, data) {
    if (!(data instanceof ArrayBuffer)) return;
    const message = msgpack.decode(data);
    if (message.type === "Ready") {
      session.ready = true;
    } else if (message.type === "Audio") {
      const pcm = Float32Array.from(message.pcm);
      session.chunks.push(pcm.slice());
      this.stats.received += pcm.length;
      session.player.push(pcm);
      if (this.panel.dataset.state === "connecting") this.setState("speaking");
    } else if (message.type === "Text") {
      const word = document.createElement("span");
      word.className = "word";
      word.textContent = message.text;
      word.dataset.start = message.start_s;
      $("tts-words").append(word, " ");
      session.words.push(word);
      this.stats.words += 1;
    } else if (message.type === "Error") {
      session.error = message.message;
      notify("tts", message.message, /busy|queue/i.test(message.message) ? "warn" : "error");
    }
  }

  // Marks the words already heard.
  onPlayer(session, stats) {
    this.stats.playedSeconds = stats.playedSeconds;
    this.panel.style.setProperty("--moshi-level", Math.min(1, stats.level * 6).toFixed(3));
    for (const word of session.words) {
      word.classList.toggle("heard", Number(word.dataset.start) <= stats.playedSeconds);
    }
  }

  setDownload(session) {
    const link = $("tts-download");
    if (link.href) URL.revokeObjectURL(link.href);
    if (!session) {
      link.removeAttribute("href");
      link.setAttribute("aria-disabled", "true");
      return;
    }
    link.href = URL.createObjectURL(wavBlob(session.chunks));
    link.setAttribute("aria-disabled", "false");
  }
}
