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
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from aiohttp import WSMsgType, web

from mimi_mlx.constants import FRAME_SECONDS, SAMPLE_RATE
from mimi_mlx.io.cli_support import one_line

from ..formats.transcript import Transcript
from ..jobs.pipeline import FrameResult
from ..live.recording import Recorder, finish_recording
from ..live.summary import StepTimes
from .chat_service import ChatSettings, settings_from_query
from .codecs import CODECS, AudioFormatError, InputFrames
from .query import QueryError
from .services import SERVICES, Services, Unavailable, accept

CHAT_PATH = "/api/chat"
HANDSHAKE, AUDIO, TEXT, METADATA, ERROR = b"\x00", b"\x01", b"\x02", b"\x04", b"\x05"
MAX_MESSAGE = 1 << 20  # bytes of one client message (pcm16: about 20 s of audio)
OUTBOX = 32  # audio messages waiting for a slow client (about 2.5 s) before they are dropped
MAX_DROPPED = 125  # audio messages dropped in a row (about 10 s) before the client is closed
AHEAD = 2  # frames submitted before the oldest is collected (as `chat`)
STATS_INTERVAL = 1.0  # seconds between two statistics messages
FLUSH_TIMEOUT = 2.0  # seconds a closing session gets to send what Moshi already said


def add_routes(app: web.Application, services: Services) -> None:
    app.router.add_get(CHAT_PATH, handle_chat)


async def handle_chat(request: web.Request) -> web.WebSocketResponse:
    return await run_session(
        request, "chat", lambda chat, query: settings_from_query(query, chat.defaults), ChatSession
    )


async def run_session(
    request: web.Request, kind: str, settings_of: Callable, session_class: type
) -> web.WebSocketResponse:
    """One client of a route with a single session slot and the chat's framing (the chat, the
    assistant): refused at once with the reason (not served, shutting down, a bad query, busy),
    else `session_class(ws, services, settings, peer).run()` while it holds the slot."""
    services = request.app[SERVICES]
    ws = await accept(request, MAX_MESSAGE)
    try:
        service = services.serving(kind)
        settings = settings_of(service, request.query)
        if not service.acquire():
            raise Unavailable(f"busy: another {kind} session is running; try again later")
    except (Unavailable, QueryError) as e:
        await refuse(ws, str(e))
        return ws
    session = session_class(ws, services, settings, request.remote or "?")
    services.sessions.add(session)
    try:
        await session.run()
    finally:
        services.sessions.discard(session)
        service.release()
    return ws


async def refuse(ws: web.WebSocketResponse, message: str) -> None:
    """Tell the client why (`b"\\x05"` + message), then close."""
    try:
        await ws.send_bytes(ERROR + message.encode())
    except (ConnectionError, RuntimeError):
        pass  # already gone
    await ws.close()


class ChatSession:
    """One client's conversation: three tasks (receive, step, send) around the pipeline."""

    count = 0  # sessions started since the server started

    def __init__(self, ws: web.WebSocketResponse, services: Services, settings, peer: str):
        ChatSession.count += 1
        self.id = ChatSession.count
        self.ws, self.services, self.settings, self.peer = ws, services, settings, peer
        self.chat = services.chat
        decoder, encoder = CODECS[settings.format]
        self.decoder, self.encoder = decoder(), encoder()
        self.frames = InputFrames(services.options.max_lag_frames)
        self.times = StepTimes()
        self.outbox: deque[bytes] = deque()
        self.audio_waiting = 0  # audio messages in the outbox
        self.dropped = 0  # audio messages dropped (slow client)
        self.dropped_in_a_row = 0
        self._input, self._output = asyncio.Event(), asyncio.Event()
        self.pipeline = None
        self.recorder: Recorder | None = None
        self.transcript: Transcript | None = None
        self.reason: str | None = None  # why the server ends the session (told to the client)
        self._tasks: list[asyncio.Task] = []
        self._done = asyncio.Event()
        self.started = self.last_stats = time.perf_counter()

    async def run(self) -> None:
        try:
            self.pipeline = await self.services.thread.call(self.chat.build_pipeline, self.settings)
        except QueryError as e:
            await refuse(self.ws, str(e))
            self._done.set()
            return
        except Exception as e:
            await refuse(self.ws, f"the session could not start: {one_line(e)}")
            self._done.set()
            return
        if self.reason is not None:  # the server began to shut down meanwhile
            await self.services.thread.call(self.pipeline.reset)
            await refuse(self.ws, self.reason)
            self._done.set()
            return
        try:
            self._start()
            await self.ws.send_bytes(HANDSHAKE)
            self._tasks = [
                asyncio.ensure_future(task()) for task in (self._receive, self._step, self._send)
            ]
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    self._fail(task.exception())
        finally:
            await self._end()

    async def close(self, message: str) -> None:
        """End the session from the server's side (told `message`); returns once it ended."""
        if self.reason is None:
            self.reason = message
        for task in self._tasks:
            task.cancel()
        await self._done.wait()

    def _start(self) -> None:
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
        log(f"chat {self.id}: {self.peer} connected (seed {pipeline.seed}, {self.settings.format})")

    def _fail(self, error: BaseException) -> None:
        if isinstance(error, AudioFormatError | SlowClient):
            self.reason = self.reason or str(error)
        elif not isinstance(error, ConnectionError):  # (a client gone while we sent)
            self.reason = self.reason or f"the server failed: {one_line(error)}"

    async def _end(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # the model thread is done with the pipeline once this call comes (FIFO)
        await asyncio.shield(self.services.thread.call(self.pipeline.reset))
        summary = self._summary()
        if self.recorder is not None:
            summary["recording"] = finish_recording(self.recorder, self.transcript, summary)
        if not self.ws.closed:
            await self._flush()
            await refuse(self.ws, self.reason) if self.reason else await self.ws.close()
        where = f"; recorded in {self.recorder.folder}" if self.recorder is not None else ""
        why = f" ({self.reason})" if self.reason else ""
        log(
            f"chat {self.id}: closed{why} after {summary['duration_s']:.1f} s, "
            f"{summary['steps']} steps, {self.frames.skipped} input frames skipped, "
            f"{self.dropped} output frames dropped{where}"
        )
        self._done.set()

    async def _receive(self) -> None:
        async for message in self.ws:
            if message.type == WSMsgType.BINARY:
                data = message.data
                if data[:1] == AUDIO:
                    pcm = self.decoder.decode(data[1:])
                    if pcm.size:
                        self.frames.push(pcm)
                        self._input.set()
                # other kinds (control, ping, ...) are ignored, as Kyutai's server does
            elif message.type == WSMsgType.TEXT:
                self._put(ERROR + b"expected binary messages (a kind byte, then its payload)")
            elif message.type == WSMsgType.ERROR:
                raise AudioFormatError(f"bad message: {one_line(self.ws.exception())}")

    async def _step(self) -> None:
        """Frames through the pipeline, one call to the model thread per frame: the next frame
        is submitted with the oldest one's collect, so Python builds a frame's graph while the
        previous one computes whenever frames wait (up to `AHEAD` in flight)."""
        thread, pipeline, frames = self.services.thread, self.pipeline, self.frames
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
        sent = not data or self._put(AUDIO + data, audio=True)
        if result.piece is not None:
            self._put(TEXT + result.piece.encode())
        if self.recorder is not None:
            self.recorder.moshi.write(result.audio)
            if sent:  # what the client got (silence where it was dropped)
                self.recorder.add_played([(result.step, result.audio)])
            self.transcript.add(result, now - self.started)
        if self.settings.stats and now - self.last_stats >= STATS_INTERVAL:
            self.last_stats = now
            self._put(METADATA + json.dumps(self.stats()).encode())

    def stats(self) -> dict:
        recent = list(self.times.recent)[-13:]
        return {
            "lag_ms": round(self.frames.waiting * FRAME_SECONDS * 1000),
            "skipped": self.frames.skipped,
            "step_ms": round(1000 * sum(recent) / max(1, len(recent)), 1),
            "dropped": self.dropped,
            "steps": self.times.count,
        }

    def _put(self, message: bytes, audio: bool = False) -> bool:
        """Queue a message for the client; audio beyond `OUTBOX` waiting is dropped (False)."""
        if audio:
            if self.audio_waiting >= OUTBOX:
                self.dropped += 1
                self.dropped_in_a_row += 1
                if self.dropped_in_a_row >= MAX_DROPPED:
                    raise SlowClient(
                        f"the client has not read Moshi's audio for {MAX_DROPPED} frames"
                    )
                return False
            self.dropped_in_a_row = 0
            self.audio_waiting += 1
        self.outbox.append(message)
        self._output.set()
        return True

    async def _send(self) -> None:
        while True:
            while not self.outbox:
                self._output.clear()
                await self._output.wait()
            message = self.outbox.popleft()
            if message[:1] == AUDIO:
                self.audio_waiting -= 1
            await self.ws.send_bytes(message)

    async def _flush(self) -> None:
        """Send what waits in the outbox (the text and audio the recording holds), briefly."""

        async def send_all() -> None:
            while self.outbox:
                await self.ws.send_bytes(self.outbox.popleft())

        try:
            await asyncio.wait_for(send_all(), FLUSH_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass  # a client that does not read, or is gone

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
            "dropped_frames": self.dropped,
            "text": self.transcript.text if self.transcript is not None else None,
        }


class SlowClient(RuntimeError):
    """The client stopped reading what the server sends."""


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


__all__ = ["CHAT_PATH", "ChatSettings", "add_routes", "handle_chat", "settings_from_query"]
