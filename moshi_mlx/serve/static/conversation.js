// A spoken conversation with the server over Kyutai's chat framing with raw 24 kHz int16 PCM
// (`/api/chat`, `/api/assistant`): how one starts and ends (the socket, the microphone, the
// player, the state shown, the errors told). Messages: a kind byte, then the payload: 0 ready,
// 1 audio, 2 text, 4 statistics (JSON), 5 error. A panel (`Chat`, `Assistant`) extends it with
// its own query, kinds, text messages and transcript.

import { microphoneError, openMicrophone, openPlayer, pcm16Message, pcm16Samples } from "./audio.js";
import { $, askForTap, closeReason, dismiss, notify, socketUrl } from "./ui.js";

export const KIND = { ready: 0, audio: 1, text: 2, stats: 4, error: 5 };

// The UTF-8 text after a message's kind byte.
export const payloadText = (data) => new TextDecoder().decode(new Uint8Array(data, 1));

export class Conversation {
  // `name`: the panel's (its elements `panel-NAME`, `NAME-toggle`, `NAME-state`, `NAME-clear`,
  // `NAME-transcript`; its banners' key); `path`: the socket's route; `labels`: each state's
  // words; `player`: `openPlayer`'s options.
  constructor(info, { name, path, labels, player = {} }) {
    this.info = info;
    Object.assign(this, { name, path, labels, playerOptions: player });
    this.panel = $(`panel-${name}`);
    this.session = null;
    $(`${name}-toggle`).onclick = () => (this.session ? this.stop() : this.start());
    $(`${name}-clear`).onclick = () => ($(`${name}-transcript`).textContent = "");
  }

  // -- what a panel gives ---------------------------------------------------------------------
  query() {
    return {}; // the socket's query parameters besides `format`
  }

  newSession() {
    return {}; // a session's own fields
  }

  onOpen() {} // the socket opened (the session is not ready yet)

  onReady() {
    this.setState("listening");
  }

  onKind() {} // (session, kind, data): a message of another kind than ready, audio, error

  onText() {} // (session, text): a text message

  onEnded() {} // the panel's session ended (after its state was shown)

  // -- the common part ------------------------------------------------------------------------
  setState(state) {
    this.panel.dataset.state = state;
    $(`${this.name}-state`).textContent = this.labels[state] || state;
    $(`${this.name}-toggle`).textContent = this.session ? "Stop" : "Start talking";
    $(`${this.name}-toggle`).classList.toggle("stop", Boolean(this.session));
  }

  async start() {
    [this.name, "mic"].forEach(dismiss);
    const session = { socket: null, mic: null, player: null, ready: false, ended: false, ...this.newSession() };
    this.session = session;
    this.setState("connecting");
    try {
      const player = { ...this.playerOptions, onStats: (s) => this.onPlayer(s), onSuspended: askForTap };
      session.player = await openPlayer(player);
      session.mic = await openMicrophone((pcm, level) => this.onMicrophone(session, pcm, level));
    } catch (error) {
      const text = error && error.name ? microphoneError(error) : String(error);
      notify("mic", text, "error", { label: "Try again", run: () => this.start() });
      this.end(session, "idle");
      return;
    }
    if (session.ended) return;
    const socket = new WebSocket(socketUrl(this.path, { format: "pcm16", ...this.query() }));
    socket.binaryType = "arraybuffer";
    session.socket = socket;
    socket.onopen = () => session === this.session && this.onOpen();
    socket.onmessage = (event) => this.onMessage(session, event.data);
    socket.onclose = (event) => {
      if (session.ended) return;
      if (!session.error) {
        notify(this.name, closeReason(event), "error", { label: "Reconnect", run: () => this.start() });
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
      this.onEnded();
    }
  }

  onMicrophone(session, pcm) {
    if (!session.ready || session.socket.readyState !== WebSocket.OPEN) return;
    session.socket.send(pcm16Message(KIND.audio, pcm));
    this.stats.sent += pcm.length;
  }

  onMessage(session, data) {
    if (session.ended) return;
    if (typeof data === "string") {
      this.onText(session, data);
      return;
    }
    if (!(data instanceof ArrayBuffer) || data.byteLength === 0) return;
    const kind = new Uint8Array(data, 0, 1)[0];
    if (kind === KIND.ready) {
      session.ready = true;
      this.onReady(session);
    } else if (kind === KIND.audio) {
      const pcm = pcm16Samples(data, 1);
      this.stats.received += pcm.length;
      session.player.push(pcm);
    } else if (kind === KIND.error) {
      session.error = payloadText(data);
      const busy = /busy/i.test(session.error);
      const text = busy ? `The server is busy: ${session.error.replace(/^busy:\s*/i, "")}` : session.error;
      notify(this.name, text, busy ? "warn" : "error", { label: "Try again", run: () => this.start() });
    } else {
      this.onKind(session, kind, data);
    }
  }
}
