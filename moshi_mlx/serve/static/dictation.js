// Dictation: the microphone to Kyutai's streaming STT (`/api/asr-streaming`, msgpack messages).

import { microphoneError, openMicrophone } from "./audio.js";
import * as msgpack from "./msgpack.js";
import { $, askForTap, closeReason, dismiss, notify, socketUrl } from "./ui.js";

const FLUSH_SECONDS = 6; // silence sent after Stop: more than the model's delay, to bring out the last words
const IDLE_SECONDS = 10; // after Stop, give up on the marker when the server has sent nothing for this long
const LABELS = { idle: "Ready", connecting: "Connecting…", listening: "Listening", finishing: "Finishing…" };

export class Dictation {
  constructor(info) {
    this.info = info;
    this.panel = $("panel-dictation");
    this.stats = { words: 0, sent: 0, steps: 0, marker: false };
    this.session = null;
    $("dictation-toggle").onclick = () => (this.session ? this.stop() : this.start());
    $("dictation-clear").onclick = () => ($("dictation-text").textContent = "");
    $("dictation-copy").onclick = () => this.copy();
  }

  setState(state) {
    this.panel.dataset.state = state;
    $("dictation-state").textContent = LABELS[state] || state;
    $("dictation-toggle").textContent = this.session ? "Stop" : "Start dictation";
    $("dictation-toggle").classList.toggle("stop", Boolean(this.session));
  }

  async start() {
    ["dictation", "mic"].forEach(dismiss);
    const session = { socket: null, mic: null, ended: false, marker: null };
    this.session = session;
    this.setState("connecting");
    try {
      session.mic = await openMicrophone((pcm, level) => this.onMicrophone(session, pcm, level), askForTap);
    } catch (error) {
      notify("mic", microphoneError(error), "error", { label: "Try again", run: () => this.start() });
      this.end(session);
      return;
    }
    const socket = new WebSocket(socketUrl("api/asr-streaming"));
    socket.binaryType = "arraybuffer";
    session.socket = socket;
    socket.onopen = () => this.setState("listening");
    socket.onmessage = (event) => this.onMessage(session, event.data);
    socket.onclose = (event) => {
      if (!session.ended && !session.error && !session.finishing) {
        notify("dictation", closeReason(event), "error", { label: "Reconnect", run: () => this.start() });
      }
      this.end(session);
    };
    this.line = null;
  }

  // Stop listening; the words still in the model's delay arrive before the marker comes back.
  stop() {
    const session = this.session;
    if (!session) return;
    session.mic.stop();
    if (!session.socket || session.socket.readyState !== WebSocket.OPEN) return this.end(session);
    session.finishing = true;
    this.setState("finishing");
    session.socket.send(msgpack.encode({ type: "Marker", id: 1 }));
    const silence = new Float32Array(1920);
    let sent = 0;
    session.heardAt = performance.now();
    session.flush = setInterval(() => {
      const idle = (performance.now() - session.heardAt) / 1000;
      if (session.socket.readyState !== WebSocket.OPEN || idle > IDLE_SECONDS) return this.end(session);
      if (sent < (FLUSH_SECONDS * 24000) / 1920) {
        session.socket.send(msgpack.encode({ type: "Audio", pcm: silence }));
        sent += 1;
      }
    }, 20);
  }

  end(session) {
    if (session.ended) return;
    session.ended = true;
    clearInterval(session.flush);
    if (session.mic) session.mic.stop();
    if (session.socket && session.socket.readyState <= WebSocket.OPEN) session.socket.close(1000);
    if (this.session === session) {
      this.session = null;
      this.setState("idle");
    }
  }

  onMicrophone(session, pcm, level) {
    $("dictation-meter").style.width = `${Math.min(100, level * 800).toFixed(1)}%`;
    if (session.finishing || !session.socket || session.socket.readyState !== WebSocket.OPEN) return;
    session.socket.send(msgpack.encode({ type: "Audio", pcm }));
    this.stats.sent += pcm.length;
  }

  onMessage(session, data) {
    if (!(data instanceof ArrayBuffer)) return;
    const message = msgpack.decode(data);
    session.heardAt = performance.now();
    if (message.type === "Word") {
      this.addWord(message.text);
    } else if (message.type === "Step") {
      this.stats.steps += 1;
      if (message.prs && message.prs.length > 2) this.panel.classList.toggle("pausing", message.prs[2] > 0.5);
    } else if (message.type === "Marker") {
      this.stats.marker = true;
      this.end(session);
    } else if (message.type === "Error") {
      session.error = message.message;
      notify("dictation", message.message, /busy|queue/i.test(message.message) ? "warn" : "error");
    }
  }

  addWord(text) {
    const box = $("dictation-text");
    const word = document.createElement("span");
    word.className = "word";
    word.textContent = (box.textContent && !/^[.,!?;:]/.test(text) ? " " : "") + text;
    box.append(word);
    this.stats.words += 1;
    box.scrollTop = box.scrollHeight;
  }

  async copy() {
    const text = $("dictation-text").textContent.trim();
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const area = Object.assign(document.createElement("textarea"), { value: text });
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    notify("copy", text ? "Copied the text." : "Nothing to copy yet.", "info");
    setTimeout(() => dismiss("copy"), 2000);
  }
}
