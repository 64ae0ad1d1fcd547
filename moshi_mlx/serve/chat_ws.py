"""`GET /api/chat`: Kyutai's moshi protocol over a WebSocket, byte for byte.

Binary messages, the first byte their kind: the server sends `b"\\x00"` once the session is ready,
then `b"\\x01"` + Ogg Opus pages (Moshi's voice) and `b"\\x02"` + UTF-8 text pieces (`▁` as a
space, padding never sent); the client sends `b"\\x01"` + Ogg Opus pages (its microphone); an
error is `b"\\x05"` + a message, then the close. Query `format=pcm16` (our page) carries raw
little-endian int16 PCM at 24 kHz instead of Ogg Opus, and adds `b"\\x04"` + JSON statistics
about once a second (`stats=1` asks for them with Opus: Kyutai's clients log unknown kinds).

Each frame goes through the same `Pipeline` as `chat`, with its lag rule (`InputFrames`);
Moshi's messages wait in a bounded outbox: a client that reads too slowly loses audio (counted)
and is closed after `MAX_DROPPED` in a row. One session at a time: a second client is told
"busy" at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack
from pathlib import Path

from aiohttp import web

from mimi_mlx.constants import FRAME_SECONDS, SAMPLE_RATE
from mimi_mlx.io.cli_support import one_line

from ..formats.transcript import Transcript
from ..jobs.pipeline import FrameResult
from ..live.recording import Recorder, finish_recording
from ..live.summary import StepTimes
from .chat_service import ChatSettings, settings_from_query
from .query import QueryError
from .services import Services
from .session import AUDIO, METADATA, TEXT, Session, run_session

CHAT_PATH = "/api/chat"
AHEAD = 2  # frames submitted before the oldest is collected (as `chat`)
STATS_INTERVAL = 1.0  # seconds between two statistics messages


def add_routes(app: web.Application, services: Services) -> None:
    app.router.add_get(CHAT_PATH, handle_chat)


async def handle_chat(request: web.Request) -> web.WebSocketResponse:
    return await run_session(request, ChatSession)


class ChatSession(Session):
    """One client's conversation with Moshi: the frames through the pipeline, what it says
    (audio, text pieces, statistics) to the client and, with `--record`, to a folder."""

    kind = "chat"
    whose = "Moshi's"
    count = 0

    def __init__(self, ws: web.WebSocketResponse, services: Services, settings, peer: str):
        super().__init__(ws, services, settings, peer)
        self.chat = services.chat
        self.times = StepTimes()
        self.pipeline = None
        self.recorder: Recorder | None = None
        self.transcript: Transcript | None = None
        self.started = self.last_stats = time.perf_counter()

    @staticmethod
    def settings_of(chat, query) -> ChatSettings:
        return settings_from_query(query, chat.defaults)

    async def _open(self, held: AsyncExitStack) -> str | None:
        try:
            self.pipeline = await self.thread.call(self.chat.build_pipeline, self.settings)
        except QueryError as e:
            return str(e)
        except Exception as e:
            return f"the session could not start: {one_line(e)}"
        return None

    def _started(self) -> str:
        self.started = self.last_stats = time.perf_counter()
        pipeline, options = self.pipeline, self.services.options
        info = {
            **self.chat.session.info,
            "seed": pipeline.seed,
            "sampling": pipeline.sampling.to_dict(),
        }
        if options.record is not None:
            folder = Path(options.record) / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.id:04d}"
            self.recorder = Recorder(folder, SAMPLE_RATE)
            self.transcript = Transcript(pipeline.audio_lag, {**info, "client": self.peer})
        return f"seed {pipeline.seed}, {self.settings.format}"

    async def _release(self) -> None:
        await asyncio.shield(self.thread.call(self.pipeline.reset))

    def _finish(self) -> str:
        summary = self._summary()
        if self.recorder is not None:
            summary["recording"] = finish_recording(self.recorder, self.transcript, summary)
        where = f"; recorded in {self.recorder.folder}" if self.recorder is not None else ""
        return (
            f"after {summary['duration_s']:.1f} s, "
            f"{summary['steps']} steps, {self.frames.skipped} input frames skipped, "
            f"{self.outbox.dropped} output frames dropped{where}"
        )

    async def _step(self) -> None:
        """Frames through the pipeline, one call to the model thread per frame: the next frame
        is submitted with the oldest one's collect, so Python builds a frame's graph while the
        previous one computes whenever frames wait (up to `AHEAD` in flight)."""
        thread, pipeline, frames = self.thread, self.pipeline, self.frames
        uncounted = 0.0  # seconds of submits not yet in a step's time
        while True:
            if frames.waiting and pipeline.pending < AHEAD:
                frame = frames.pop()
                if self.recorder is not None:
                    self.recorder.user.write(frame)
                    self.recorder.mic.write(frame)  # (the client cancelled its echo)
                collect = pipeline.pending + 1 >= AHEAD or not frames.waiting
                call = (self._submit_collect, frame) if collect else (pipeline.submit, frame)
            elif pipeline.pending:
                call = (pipeline.collect,)
            else:
                self._input.clear()
                await self._input.wait()
                continue
            t = time.perf_counter()
            result = await thread.call(*call)
            uncounted += time.perf_counter() - t
            if result is not None:
                self.times.add(uncounted)
                uncounted = 0.0
                self._emit(result)

    def _submit_collect(self, frame) -> FrameResult:
        """On the model thread: submit `frame`, then collect the oldest frame in flight."""
        self.pipeline.submit(frame)
        return self.pipeline.collect()

    def _emit(self, result: FrameResult) -> None:
        now = time.perf_counter()
        data = self.encoder.encode(result.audio)
        sent = not data or self.outbox.put(AUDIO + data, audio=True)
        if result.piece is not None:
            self.outbox.put(TEXT + result.piece.encode())
        if self.recorder is not None:
            self.recorder.moshi.write(result.audio)
            if sent:  # what the client got (silence where it was dropped)
                self.recorder.add_played([(result.step, result.audio)])
            self.transcript.add(result, now - self.started)
        if self.settings.stats and now - self.last_stats >= STATS_INTERVAL:
            self.last_stats = now
            self.outbox.put(METADATA + json.dumps(self.stats()).encode())

    def stats(self) -> dict:
        recent = list(self.times.recent)[-13:]
        return {
            "lag_ms": round(self.frames.waiting * FRAME_SECONDS * 1000),
            "skipped": self.frames.skipped,
            "step_ms": round(1000 * sum(recent) / max(1, len(recent)), 1),
            "dropped": self.outbox.dropped,
            "steps": self.times.count,
        }

    def _summary(self) -> dict:
        pipeline = self.pipeline
        return {
            **self.chat.session.info,
            "seed": pipeline.seed,
            "sampling": pipeline.sampling.to_dict(),
            "client": self.peer,
            "format": self.settings.format,
            "duration_s": round(time.perf_counter() - self.started, 3),
            "steps": self.times.count,
            "step_time": self.times.to_dict(),
            "skipped_frames": self.frames.skipped,
            "dropped_frames": self.outbox.dropped,
            "text": self.transcript.text if self.transcript is not None else None,
        }


__all__ = ["CHAT_PATH", "ChatSettings", "add_routes", "handle_chat", "settings_from_query"]
