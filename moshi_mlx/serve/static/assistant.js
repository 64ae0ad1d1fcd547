// The assistant: a text LLM through the server's STT and TTS (`/api/assistant`). The chat's
// audio framing, as `Conversation` speaks it; the transcript of both sides and the turns come
// as JSON text messages (user, reply, word, interrupted, reply_end).

import { Conversation } from "./conversation.js";
import { $, showModel } from "./ui.js";

const LABELS = {
  idle: "Ready",
  connecting: "Connecting…",
  listening: "Listening",
  thinking: "Thinking…",
  speaking: "Speaking",
  ended: "Conversation ended",
};

export class Assistant extends Conversation {
  constructor(info) {
    super(info, { name: "assistant", path: "api/assistant", labels: LABELS });
    this.stats = { sent: 0, received: 0, turns: 0, words: 0, interrupted: 0, playedSeconds: 0 };
    showModel($("assistant-model"), info.llm, info.llm_source);
  }

  query() {
    return { system: $("assistant-system").value.trim() };
  }

  newSession() {
    return { line: null };
  }

  onText(session, data) {
    this.onEvent(session, JSON.parse(data));
  }

  onPlayer(stats) {
    this.stats.playedSeconds = stats.playedSeconds;
    if (this.session && this.session.ready && this.session.line) {
      this.setState(stats.level > 0.02 ? "speaking" : "thinking");
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
