"""`GET /api/assistant`: `moshi-mlx assistant` over a WebSocket (the browser's microphone in,
the assistant's voice out, the transcript of both sides as events).

The chat protocol's framing for audio: the server sends `b"\\x00"` once the session is ready,
then `b"\\x01"` + audio (Ogg Opus pages, or with `format=pcm16` raw little-endian int16 at
24 kHz); the client sends `b"\\x01"` + its microphone in the same format; an error is `b"\\x05"`
+ a message, then the close. Events are JSON text messages, `type` first:
- server: `user` (`text`, `ended_by`: the user's turn), `reply` (the answer starts), `word`
  (`text`, `start`: a word as its audio is sent), `interrupted` (barge-in: drop the audio not yet
  played), `reply_end` (`reply`: what the LLM wrote, `spoken`: the words said, `interrupted`,
  `timings`), `end` (after the client's `end`, the last answer was sent).
- client: `end`: the input is over; the STT hears its tail of silence, the turn ends (as the
  file mode's last one does) and is answered, then the server closes.

Each frame goes through the same jobs as the CLI's live assistant (`SttStream`, `TurnTaker`
with the frame's voice level, `Assistant.reply`), on the server's model thread. The reply is
sent paced to real time, `LEAD_SECONDS` ahead of what the client has played; a frame with the
user's voice while the assistant talks is a barge-in: the LLM is cancelled and the history keeps
the words sent up to what the client has played.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack

import numpy as np
from aiohttp import web

from mimi_mlx.constants import SAMPLE_RATE
from mimi_mlx.io.cli_support import one_line

from ..jobs.assistant import Assistant, Reply
from ..jobs.stt import SttStream
from ..jobs.turns import TurnTaker, UserTurn
from ..live.voice import voiced
from .assistant_service import AssistantSettings
from .query import QueryError
from .services import Services
from .session import AUDIO, Session, run_session
from .stt_service import Busy

ASSISTANT_PATH = "/api/assistant"
LEAD_SECONDS = 0.3  # audio sent ahead of what the client has played (its jitter buffer)
POLL = 0.02  # seconds between two looks at the clock while waiting to send


def add_routes(app: web.Application, services: Services) -> None:
    app.router.add_get(ASSISTANT_PATH, handle_assistant)


async def handle_assistant(request: web.Request) -> web.WebSocketResponse:
    return await run_session(request, AssistantSession)


class AssistantSession(Session):
    """One client's conversation with the assistant: its turns heard, answered and spoken."""

    kind = "assistant"
    whose = "the assistant's"
    count = 0

    def __init__(self, ws, services: Services, settings: AssistantSettings, peer: str):
        super().__init__(ws, services, settings, peer)
        self.ended = False  # the client sent `end`
        self.stream: SttStream | None = None
        self.taker: TurnTaker | None = None
        self.assistant: Assistant | None = None
        self.reply: Reply | None = None
        self.sent = 0  # samples of the reply sent
        self.until = 0.0  # when the client will have played what was sent (perf_counter)
        self.turns = 0
        self._cancelling: asyncio.Future | None = None  # a barge-in's cancel, on the thread

    @staticmethod
    def settings_of(service, query) -> AssistantSettings:
        return service.settings(query)

    # -- the session -----------------------------------------------------------------------------
    async def _open(self, held: AsyncExitStack) -> str | None:
        stt, tts = self.services.stt, self.services.tts
        try:
            checkpoint = await held.enter_async_context(stt.hold())
            await held.enter_async_context(tts.slot())
            voice = await tts.voice(self.settings.voice)
            await self.thread.call(self._build, checkpoint, tts.tts, voice)
        except (Busy, ValueError) as e:
            return f"the session could not start: {one_line(e)}"
        return None

    def _build(self, checkpoint, tts, voice) -> None:
        """(On the model thread) the session's STT stream and conversation."""
        self.stream = SttStream(checkpoint, vad=bool(checkpoint.lm.extra_heads))
        self.stream.reset()
        self.taker = TurnTaker(self.stream)
        s = self.settings
        llm = self.services.assistant.llm.with_settings(s.llm)
        tts.mimi.reset_decoder()
        self.assistant = Assistant(llm, tts, [voice], s.tts, s.system)

    async def _release(self) -> None:
        if self.reply is not None:  # (the model thread is done with it: FIFO)
            await asyncio.shield(self.thread.call(self.reply.cancel, self._played()))
        if self.stream is not None:
            await asyncio.shield(self.thread.call(self.stream.reset))

    def _finish(self) -> str:
        return f"after {self.turns} turn(s)"

    # -- receiving -------------------------------------------------------------------------------
    def _audio(self, payload: bytes) -> None:
        if not self.ended:
            super()._audio(payload)

    def _text(self, data: str) -> None:
        try:
            kind = json.loads(data).get("type")
        except (ValueError, AttributeError):
            kind = None
        if kind != "end":
            raise QueryError('text messages are JSON events: {"type": "end"}')
        self.ended = True
        self._input.set()

    # -- stepping (the model thread) -------------------------------------------------------------
    async def _step(self) -> None:
        finishing = False
        while True:
            reply = self.reply
            if self.frames.waiting and not finishing:
                await self._hear(self.frames.pop())
            elif reply is not None and not reply.done and self._lead() < LEAD_SECONDS:
                frame = await self.thread.call(reply.step)
                if frame is not None and frame.pcm.size:
                    self._send_audio(frame.pcm)
                for w in frame.words if frame is not None else []:
                    self._event("word", text=w.text, start=round(w.start, 3))
            elif reply is not None and reply.done:
                if self._lead() > 0:
                    await asyncio.sleep(min(self._lead(), POLL))
                    continue
                await self.thread.call(reply.finish)
                self._reply_end(reply)
            elif reply is not None:
                await asyncio.sleep(POLL)  # ahead of the client: wait for it to play
            elif self.ended and not finishing:
                finishing = True
                turn = await self.thread.call(self._finish_input, self.frames.rest())
                if turn is not None:
                    await self._start(turn)
            elif finishing:
                self._event("end")
                await self.outbox.sent()
                return
            else:
                self._input.clear()
                await self._input.wait()

    async def _hear(self, frame: np.ndarray) -> None:
        voice = voiced(frame)
        if voice and self.reply is not None:
            self._interrupt()
        turn = await self.thread.call(self._stt, frame, voice)
        if turn is not None:
            await self._start(turn)

    def _stt(self, frame: np.ndarray, voice: bool) -> UserTurn | None:
        """(On the model thread) one frame through the STT and the turn-taker."""
        steps = self.stream.feed(frame)
        self.taker.hear(voice)
        ended = None
        for (step,) in steps:
            turn = self.taker.add(step)
            if self.reply is not None:
                self.taker.reset()  # while the assistant talks, its own echo is no turn
            elif turn is not None and ended is None:
                ended = turn
        return ended

    def _finish_input(self, rest: np.ndarray) -> UserTurn | None:
        """(On the model thread) the input ended with `rest` (part of a frame): the STT's tail
        of silence, the last turn (as the file mode's)."""
        tail = np.zeros(self.stream.settings.tail_samples, np.float32)
        steps = self.stream.feed(np.concatenate([rest, tail])) + self.stream.flush()
        for (step,) in steps:
            turn = self.taker.add(step)
            if turn is not None:
                return turn
        heard = steps[-1][0].heard if steps else 0.0
        return self.taker.finish(heard)

    async def _start(self, turn: UserTurn) -> None:
        self._event("user", text=turn.text, ended_by=turn.rule)
        self.reply = await self.thread.call(self.assistant.reply, turn.text)
        self.sent = 0
        self.until = time.perf_counter()
        self._event("reply")

    def _lead(self) -> float:
        """Seconds of the reply sent that the client has not played yet."""
        return max(0.0, self.until - time.perf_counter())

    def _played(self) -> int:
        return max(0, self.sent - round(self._lead() * SAMPLE_RATE))

    def _interrupt(self) -> None:
        """Barge-in: the client drops its buffered audio; the LLM is cancelled (on the model
        thread, before the next call: FIFO), the played words are kept."""
        reply, played = self.reply, self._played()
        self.reply = None
        self._event("interrupted")
        self._cancelling = asyncio.ensure_future(self.thread.call(reply.cancel, played))
        self._reply_end(reply, played)

    def _reply_end(self, reply: Reply, played: int | None = None) -> None:
        self.reply = None
        self.turns += 1
        self._event(
            "reply_end",
            reply=reply.text,
            spoken=[w.to_dict() for w in reply.spoken(played)],
            interrupted=played is not None,
            timings=reply.timings.to_dict(),
        )

    # -- sending ---------------------------------------------------------------------------------
    def _send_audio(self, pcm: np.ndarray) -> None:
        data = self.encoder.encode(pcm)
        if data:
            self.outbox.put(AUDIO + data, audio=True)
        self.sent += len(pcm)
        self.until = max(self.until, time.perf_counter()) + len(pcm) / SAMPLE_RATE

    def _event(self, kind: str, **fields) -> None:
        self.outbox.put(json.dumps({"type": kind, **fields}, ensure_ascii=False))


__all__ = ["ASSISTANT_PATH", "add_routes", "handle_assistant"]
