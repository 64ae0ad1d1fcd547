// Talking with Moshi (PersonaPlex, Hibiki): Kyutai's chat protocol with raw 24 kHz int16 PCM.
// Messages: a kind byte, then the payload. 0 ready, 1 audio, 2 text, 4 statistics (JSON), 5 error.

import { microphoneError, openMicrophone, openPlayer, pcm16Message, pcm16Samples } from "./audio.js";
import { $, askForTap, closeReason, dismiss, notify, socketUrl } from "./ui.js";

const KIND = { ready: 0, audio: 1, text: 2, stats: 4, error: 5 };
const PARAGRAPH_PAUSE = 1.6; // seconds of no text before Moshi's next words start a new line
const LABELS = {
  idle: "Ready",
  connecting: "Connecting…",
  loading: "Preparing the model…",
  listening: "Listening",
  speaking: "Speaking",
  ended: "Conversation ended",
};

// "Moshi", "PersonaPlex" or "Hibiki", from the served model's name.
export function speakerName(model = "") {
  if (/personaplex/i.test(model)) return "PersonaPlex";
  if (/hibiki/i.test(model)) return "Hibiki";
  return "Moshi";
}

export class Chat {
  constructor(info) {
    this.info = info;
    this.panel = $("panel-chat");
    this.stats = { received: 0, textPieces: 0, sent: 0, playedSeconds: 0, lagMs: 0, skipped: 0 };
    this.session = null;
    $("chat-toggle").onclick = () => (this.session ? this.stop() : this.start());
    $("chat-clear").onclick = () => ($("chat-transcript").textContent = "");
    this.configure(info);
  }

  configure(info) {
    const translation = info.kind === "translation";
    $("tab-chat").textContent = translation ? "Translate" : "Talk";
    $("transcript-title").textContent = translation ? "Translation" : `What ${speakerName(info.model)} says`;
    $("chat-transcript").dataset.placeholder = translation
      ? "The translation appears here as you speak."
      : `${speakerName(info.model)}'s words appear here as it speaks.`;
    $("chat-hint").textContent = translation
      ? "Press Start and speak: the translation follows you, in text and voice."
      : "Press Start and speak. The browser cancels the echo: no headphones needed.";
    $("persona").hidden = !info.prompts && !(info.voices && info.voices.length);
    const voices = $("voice-prompt");
    voices.replaceChildren(new Option("The model's default", ""));
    for (const voice of info.voices || []) voices.append(new Option(voice, voice));
    $("text-prompt").hidden = !info.prompts;
    $("text-prompt").previousElementSibling.hidden = !info.prompts;
    const sampling = info.sampling || {};
    if (sampling.text_temperature !== undefined) $("text-temperature").placeholder = sampling.text_temperature;
    if (sampling.audio_temperature !== undefined) $("audio-temperature").placeholder = sampling.audio_temperature;
  }

  query() {
    return {
      format: "pcm16",
      text_temperature: $("text-temperature").value,
      audio_temperature: $("audio-temperature").value,
      seed: $("seed").value,
      text_prompt: this.info.prompts ? $("text-prompt").value.trim() : "",
      voice_prompt: $("voice-prompt").value,
    };
  }

  setState(state) {
    this.panel.dataset.state = state;
    $("chat-state").textContent = LABELS[state] || state;
    $("chat-toggle").textContent = this.session ? "Stop" : "Start talking";
    $("chat-toggle").classList.toggle("stop", Boolean(this.session));
  }

  async start() {
    ["chat", "mic"].forEach(dismiss);
    const session = { socket: null, mic: null, player: null, ready: false, lastText: 0, ended: false };
    this.session = session;
    this.setState("connecting");
    try {
      session.player = await openPlayer({ limit: 0.5, onStats: (s) => this.onPlayer(s), onSuspended: askForTap });
      session.mic = await openMicrophone((pcm, level) => this.onMicrophone(session, pcm, level));
    } catch (error) {
      const text = error && error.name ? microphoneError(error) : String(error);
      notify("mic", text, "error", { label: "Try again", run: () => this.start() });
      this.end(session, "idle");
      return;
    }
    if (session.ended) return;
    const socket = new WebSocket(socketUrl("api/chat", this.query()));
    socket.binaryType = "arraybuffer";
    session.socket = socket;
    socket.onopen = () => session === this.session && this.setState("loading");
    socket.onmessage = (event) => this.onMessage(session, event.data);
    socket.onclose = (event) => {
      if (session.ended) return;
      if (!session.error) {
        notify("chat", closeReason(event), "error", { label: "Reconnect", run: () => this.start() });
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
      ["--mic-level", "--moshi-level"].forEach((name) => this.panel.style.removeProperty(name));
      $("stat-buffer").textContent = "–";
    }
  }

  onMicrophone(session, pcm, level) {
    this.panel.style.setProperty("--mic-level", Math.min(1, level * 8).toFixed(3));
    if (!session.ready || session.socket.readyState !== WebSocket.OPEN) return;
    session.socket.send(pcm16Message(KIND.audio, pcm));
    this.stats.sent += pcm.length;
  }

  onPlayer(stats) {
    Object.assign(this.stats, { playedSeconds: stats.playedSeconds, underruns: stats.underruns });
    this.panel.style.setProperty("--moshi-level", Math.min(1, stats.level * 6).toFixed(3));
    $("stat-buffer").textContent = `${Math.round(stats.bufferedMs)} ms`;
    if (this.session && this.session.ready) {
      this.setState(stats.level > 0.02 ? "speaking" : "listening");
    }
  }

  onMessage(session, data) {
    if (!(data instanceof ArrayBuffer) || data.byteLength === 0 || session.ended) return;
    const kind = new Uint8Array(data, 0, 1)[0];
    if (kind === KIND.ready) {
      session.ready = true;
      this.newParagraph();
      this.setState("listening");
    } else if (kind === KIND.audio) {
      const pcm = pcm16Samples(data, 1);
      this.stats.received += pcm.length;
      session.player.push(pcm);
    } else if (kind === KIND.text) {
      this.addText(session, new TextDecoder().decode(new Uint8Array(data, 1)));
    } else if (kind === KIND.stats) {
      this.showStats(JSON.parse(new TextDecoder().decode(new Uint8Array(data, 1))));
    } else if (kind === KIND.error) {
      session.error = new TextDecoder().decode(new Uint8Array(data, 1));
      const busy = /busy/i.test(session.error);
      const text = busy ? `The server is busy: ${session.error.replace(/^busy:\s*/i, "")}` : session.error;
      notify("chat", text, busy ? "warn" : "error", { label: "Try again", run: () => this.start() });
    }
  }

  newParagraph() {
    const line = document.createElement("p");
    $("chat-transcript").append(line);
    return line;
  }

  addText(session, piece) {
    const now = performance.now() / 1000;
    const box = $("chat-transcript");
    let line = box.lastElementChild;
    if (!line || (session.lastText && now - session.lastText > PARAGRAPH_PAUSE && line.textContent)) {
      line = this.newParagraph();
    }
    line.textContent += line.textContent ? piece : piece.trimStart();
    session.lastText = now;
    this.stats.textPieces += 1;
    box.scrollTop = box.scrollHeight;
  }

  showStats(stats) {
    this.stats.lagMs = stats.lag_ms;
    this.stats.skipped = stats.skipped;
    $("stat-lag").textContent = `${stats.lag_ms} ms`;
    $("stat-skipped").textContent = `${stats.skipped}`;
    $("stat-step").textContent = `${stats.step_ms} ms`;
    $("chat-stats").classList.toggle("behind", stats.skipped > 0);
  }
}
