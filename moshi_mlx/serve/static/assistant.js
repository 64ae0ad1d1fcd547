// The assistant: a text LLM through the server's STT and TTS (`/api/assistant`). The chat's
// audio framing with raw 24 kHz int16 PCM (0 ready, 1 audio, 5 error); the transcript of both
// sides and the turns come as JSON text messages (user, reply, word, interrupted, reply_end).

import { microphoneError, openMicrophone, openPlayer, pcm16Message, pcm16Samples } from "./audio.js";
import { $, askForTap, closeReason, dismiss, notify, socketUrl } from "./ui.js";

const KIND = { ready: 0, audio: 1, error: 5 };
const LABELS = {
  idle: "Ready",
  connecting: "Connecting…",
  listening: "Listening",
  thinking: "Thinking…",
  speaking: "Speaking",
  ended: "Conversation ended",
};

export class Assistant {
  constructor(info) {
    this.info = info;
    this.panel = $("panel-assistant");
    this.stats = { sent: 0, received: 0, turns: 0, words: 0, interrupted: 0, playedSeconds: 0 };
    this.session = null;
    $("assistant-toggle").onclick = () => (this.session ? this.stop() : this.start());
    $("assistant-clear").onclick = () => ($("assistant-transcript").textContent = "");
    $("assistant-model").textContent = info.llm || "";
  }

  setState(state) {
    this.panel.dataset.state = state;
    $("assistant-state").textContent = LABELS[state] || state;
    $("assistant-toggle").textContent = this.session ? "Stop" : "Start talking";
    $("assistant-toggle").classList.toggle("stop", Boolean(this.session));
  }

  async start() {
    ["assistant", "mic"].forEach(dismiss);
    const session = { socket: null, mic: null, player: null, ready: false, ended: false, line: null };
    this.session = session;
    this.setState("connecting");
    try {
      session.player = await openPlayer({ onStats: (s) => this.onPlayer(s), onSuspended: askForTap });
      session.mic = await openMicrophone((pcm) => this.onMicrophone(session, pcm));
    } catch (error) {
      const text = error && error.name ? microphoneError(error) : String(error);
      notify("mic", text, "error", { label: "Try again", run: () => this.start() });
      this.end(session, "idle");
      return;
    }
    if (session.ended) return;
    const query = { format: "pcm16", system: $("assistant-system").value.trim() };
    const socket = new WebSocket(socketUrl("api/assistant", query));
    socket.binaryType = "arraybuffer";
    session.socket = socket;
    socket.onmessage = (event) => this.onMessage(session, event.data);
    socket.onclose = (event) => {
      if (session.ended) return;
      if (!session.error) {
        notify("assistant", closeReason(event), "error", { label: "Reconnect", run: () => this.start() });
      }
      this.end(session, "idle");
    };
  }

  stop() {
    if (this.session) this.end(this.session, "ended");
  }

  end(session, state) {
    if (session.ended) return;
    session.ended = true;
    if (session.mic) session.mic.stop();
    if (session.player) session.player.close();
    if (session.socket && session.socket.readyState <= WebSocket.OPEN) session.socket.close(1000);
    if (this.session === session) {
      this.session = null;
      this.setState(state);
    }
  }

  onMicrophone(session, pcm) {
    if (!session.ready || session.socket.readyState !== WebSocket.OPEN) return;
    session.socket.send(pcm16Message(KIND.audio, pcm));
    this.stats.sent += pcm.length;
  }

  onPlayer(stats) {
    this.stats.playedSeconds = stats.playedSeconds;
    if (this.session && this.session.ready && this.session.line) {
      this.setState(stats.level > 0.02 ? "speaking" : "thinking");
    }
  }

  onMessage(session, data) {
    if (session.ended) return;
    if (typeof data === "string") {
      this.onEvent(session, JSON.parse(data));
      return;
    }
    if (!(data instanceof ArrayBuffer) || data.byteLength === 0) return;
    const kind = new Uint8Array(data, 0, 1)[0];
    if (kind === KIND.ready) {
      session.ready = true;
      this.setState("listening");
    } else if (kind === KIND.audio) {
      const pcm = pcm16Samples(data, 1);
      this.stats.received += pcm.length;
      session.player.push(pcm);
    } else if (kind === KIND.error) {
      session.error = new TextDecoder().decode(new Uint8Array(data, 1));
      const busy = /busy/i.test(session.error);
      const text = busy ? `The server is busy: ${session.error.replace(/^busy:\s*/i, "")}` : session.error;
      notify("assistant", text, busy ? "warn" : "error", { label: "Try again", run: () => this.start() });
    }
  }

  onEvent(session, event) {
    if (event.type === "user") {
      this.addLine("user", event.text);
      this.setState("thinking");
    } else if (event.type === "reply") {
      session.line = this.addLine("assistant", "");
    } else if (event.type === "word" && session.line) {
      const text = session.line.querySelector(".text");
      text.textContent += (text.textContent ? " " : "") + event.text;
      this.stats.words += 1;
    } else if (event.type === "interrupted") {
      session.player.flush(); // the rest was not said
      this.stats.interrupted += 1;
      if (session.line) session.line.classList.add("interrupted");
    } else if (event.type === "reply_end") {
      this.stats.turns += 1;
      session.line = null;
      this.setState("listening");
    }
  }

  addLine(who, text) {
    const box = $("assistant-transcript");
    const line = document.createElement("p");
    line.className = who;
    const name = document.createElement("span");
    name.className = "who";
    name.textContent = who === "user" ? "You" : "Assistant";
    const words = document.createElement("span");
    words.className = "text";
    words.textContent = text;
    line.append(name, words);
    box.append(line);
    box.scrollTop = box.scrollHeight;
    return line;
  }
}
