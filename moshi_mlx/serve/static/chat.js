// Talking with Moshi (PersonaPlex, Hibiki): Kyutai's chat protocol (`/api/chat`) with raw
// 24 kHz int16 PCM, as `Conversation` speaks it; Moshi's text pieces and the statistics are the
// chat's own kinds.

import { Conversation, KIND, payloadText } from "./conversation.js";
import { $ } from "./ui.js";

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

export class Chat extends Conversation {
  constructor(info) {
    super(info, { name: "chat", path: "api/chat", labels: LABELS, player: { limit: 0.5 } });
    this.stats = { received: 0, textPieces: 0, sent: 0, playedSeconds: 0, lagMs: 0, skipped: 0 };
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
      text_temperature: $("text-temperature").value,
      audio_temperature: $("audio-temperature").value,
      seed: $("seed").value,
      text_prompt: this.info.prompts ? $("text-prompt").value.trim() : "",
      voice_prompt: $("voice-prompt").value,
    };
  }

  newSession() {
    return { lastText: 0 };
  }

  onOpen() {
    this.setState("loading");
  }

  onReady() {
    this.newParagraph();
    this.setState("listening");
  }

  onKind(session, kind, data) {
    if (kind === KIND.text) this.addText(session, payloadText(data));
    else if (kind === KIND.stats) this.showStats(JSON.parse(payloadText(data)));
  }

  onEnded() {
    ["--mic-level", "--moshi-level"].forEach((name) => this.panel.style.removeProperty(name));
    $("stat-buffer").textContent = "–";
  }

  onMicrophone(session, pcm, level) {
    this.panel.style.setProperty("--mic-level", Math.min(1, level * 8).toFixed(3));
    super.onMicrophone(session, pcm);
  }

  onPlayer(stats) {
    Object.assign(this.stats, { playedSeconds: stats.playedSeconds, underruns: stats.underruns });
    this.panel.style.setProperty("--moshi-level", Math.min(1, stats.level * 6).toFixed(3));
    $("stat-buffer").textContent = `${Math.round(stats.bufferedMs)} ms`;
    if (this.session && this.session.ready) {
      this.setState(stats.level > 0.02 ? "speaking" : "listening");
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
