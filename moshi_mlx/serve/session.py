"""A speech-to-speech session over a WebSocket (the chat, the assistant): what both routes do
alike, from the client's arrival to the close.

The chat protocol's framing: binary messages, the first byte their kind. The server sends
`b"\\x00"` once the session is ready; audio is `b"\\x01"` + its bytes both ways (Ogg Opus, or raw
little-endian int16 at 24 kHz with `format=pcm16`); an error is `b"\\x05"` + a message, then the
close. A route has one session slot: a second client is told at once why not (busy, not served,
shutting down, a bad query). A session runs three tasks: receive (the client's audio cut into
frames with the chat's lag rule, `InputFrames`), step (the route's own conversation, on the model
thread) and send (the bounded `Outbox`); the first to end ends the session, which gives its models
back and closes, telling the client why.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from contextlib import AsyncExitStack

from aiohttp import WSMsgType, web

from mimi_mlx.io.cli_support import one_line

from .codecs import CODECS, AudioFormatError, InputFrames
from .query import QueryError
from .services import SERVICES, Services, Unavailable, accept

# the message kinds (the first byte), as Kyutai's servers number them
HANDSHAKE, AUDIO, TEXT, METADATA, ERROR = b"\x00", b"\x01", b"\x02", b"\x04", b"\x05"
MAX_MESSAGE = 1 << 20  # bytes of one client message (pcm16: about 20 s of audio)
OUTBOX = 32  # audio messages waiting for a slow client (about 2.5 s) before they are dropped
MAX_DROPPED = 125  # audio messages dropped in a row (about 10 s) before the client is closed
FLUSH_TIMEOUT = 2.0  # seconds a closing session gets to send what waits in its outbox


async def run_session(request: web.Request, session_class: type[Session]) -> web.WebSocketResponse:
    """One client of a single-slot route: refused at once with the reason (not served, shutting
    down, a bad query, busy), else `session_class(...).run()` while it holds the slot."""
    services = request.app[SERVICES]
    ws = await accept(request, MAX_MESSAGE)
    kind = session_class.kind
    try:
        service = services.serving(kind)
        settings = session_class.settings_of(service, request.query)
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


class Session:
    """One client's conversation: receive, step and send, as three tasks.

    A route's session gives `kind`, `whose`, `settings_of` and the steps of its own: `_open`
    (the session's models), `_started` (once it is open), `_step` (the conversation), `_release`
    (the models back, on the model thread), `_finish` (what the closing log line says).
    """

    kind = ""  # the service's kind (`Services.serving`), also the logs' name
    whose = ""  # whose audio the client gets ("Moshi's"): what a client that does not read is told
    count = 0  # sessions of the kind since the server started (each kind counts its own)

    def __init__(self, ws: web.WebSocketResponse, services: Services, settings, peer: str):
        cls = type(self)
        cls.count += 1
        self.id = cls.count
        self.ws, self.services, self.settings, self.peer = ws, services, settings, peer
        self.thread = services.thread
        decoder, encoder = CODECS[settings.format]
        self.decoder, self.encoder = decoder(), encoder()
        self.frames = InputFrames(services.options.max_lag_frames)
        self.outbox = Outbox(self.whose)
        self._input = asyncio.Event()  # the client's audio came
        self.reason: str | None = None  # why the server ends the session (told to the client)
        self._tasks: list[asyncio.Task] = []
        self._done = asyncio.Event()

    @staticmethod
    def settings_of(service, query):
        """A session's settings from its URL's query (QueryError names a bad parameter)."""
        raise NotImplementedError

    async def run(self) -> None:
        async with AsyncExitStack() as held:  # what `_open` holds for the session's life
            refusal = await self._open(held)
            if refusal is None and self.reason is not None:  # the server began to shut down
                await self._release()
                refusal = self.reason
            if refusal is not None:
                await refuse(self.ws, refusal)
                self._done.set()
                return
            try:
                log(f"{self.kind} {self.id}: {self.peer} connected ({self._started()})")
                await self.ws.send_bytes(HANDSHAKE)
                work = (self._receive(), self._step(), self.outbox.send(self.ws))
                self._tasks = [asyncio.ensure_future(w) for w in work]
                done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        self._fail(task.exception())
            finally:
                await self._end()

    async def close(self, message: str) -> None:
        """End the session from the server's side (told `message`); returns once it ended."""
        self.reason = self.reason or message
        for task in self._tasks:
            task.cancel()
        await self._done.wait()

    # -- the route's own -------------------------------------------------------------------------
    async def _open(self, held: AsyncExitStack) -> str | None:
        """Make the session's models ready (what they hold until the end goes into `held`);
        returns None, or why the session could not start (the client is told)."""
        raise NotImplementedError

    def _started(self) -> str:
        """The session is open (before the handshake): what the `connected` log line says."""
        return self.settings.format

    async def _step(self) -> None:
        """The conversation: the frames from `self.frames` (`self._input` is set when one came)
        through the models, what they say into `self.outbox`."""
        raise NotImplementedError

    async def _release(self) -> None:
        """Give the session's models back (after its tasks ended, or when it never started)."""

    def _finish(self) -> str:
        """The session ended (its models released, the client still there): what the closing
        log line says after `closed`."""
        return ""

    def _text(self, data: str) -> None:
        """A text message from the client (the chat's framing has none: told so)."""
        self.outbox.put(ERROR + b"expected binary messages (a kind byte, then its payload)")

    def _audio(self, payload: bytes) -> None:
        """The client's audio (the bytes after the kind)."""
        pcm = self.decoder.decode(payload)
        if pcm.size:
            self.frames.push(pcm)
            self._input.set()

    # -- the common part -------------------------------------------------------------------------
    async def _receive(self) -> None:
        async for message in self.ws:
            if message.type == WSMsgType.BINARY:
                if message.data[:1] == AUDIO:
                    self._audio(message.data[1:])
                # other kinds (control, ping, ...) are ignored, as Kyutai's server does
            elif message.type == WSMsgType.TEXT:
                self._text(message.data)
            elif message.type == WSMsgType.ERROR:
                raise AudioFormatError(f"bad message: {one_line(self.ws.exception())}")

    def _fail(self, error: BaseException) -> None:
        if isinstance(error, AudioFormatError | QueryError | SlowClient):
            self.reason = self.reason or str(error)
        elif not isinstance(error, ConnectionError):  # (a client gone while we sent)
            self.reason = self.reason or f"the server failed: {one_line(error)}"

    async def _end(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._release()  # (the model thread is done with the models once it comes: FIFO)
        said = self._finish()
        if not self.ws.closed:
            await self.outbox.flush(self.ws)
            await refuse(self.ws, self.reason) if self.reason else await self.ws.close()
        why = f" ({self.reason})" if self.reason else ""
        log(f"{self.kind} {self.id}: closed{why} {said}".rstrip())
        self._done.set()


class Outbox:
    """The messages waiting for the client, bounded: audio beyond `OUTBOX` waiting is dropped
    (counted), and `MAX_DROPPED` dropped in a row mean the client stopped reading (`SlowClient`);
    the other messages (text, events) always wait their turn."""

    def __init__(self, whose: str):
        self.whose = whose
        self._messages: deque[tuple[bytes | str, bool]] = deque()  # (message, is audio)
        self.audio_waiting = 0
        self.dropped = 0  # audio messages dropped (a slow client)
        self.dropped_in_a_row = 0
        self._ready = asyncio.Event()  # a message waits
        self._sent = asyncio.Event()  # all that was put is sent
        self._sent.set()

    def put(self, message: bytes | str, audio: bool = False) -> bool:
        """Queue a message (bytes, or a text message); audio beyond `OUTBOX` waiting is dropped
        (False)."""
        if audio:
            if self.audio_waiting >= OUTBOX:
                self.dropped += 1
                self.dropped_in_a_row += 1
                if self.dropped_in_a_row >= MAX_DROPPED:
                    raise SlowClient(
                        f"the client has not read {self.whose} audio for {MAX_DROPPED} frames"
                    )
                return False
            self.dropped_in_a_row = 0
            self.audio_waiting += 1
        self._messages.append((message, audio))
        self._ready.set()
        self._sent.clear()
        return True

    async def send(self, ws: web.WebSocketResponse) -> None:
        """Send the messages as they come (a session's send task, until it is cancelled)."""
        while True:
            while not self._messages:
                self._sent.set()
                self._ready.clear()
                await self._ready.wait()
            message, audio = self._messages.popleft()
            if audio:
                self.audio_waiting -= 1
            await _send(ws, message)

    async def sent(self) -> None:
        """Wait until all that was put is sent."""
        await self._sent.wait()

    async def flush(self, ws: web.WebSocketResponse, timeout: float = FLUSH_TIMEOUT) -> None:
        """Send what still waits (a closing session's last words), briefly."""

        async def send_all() -> None:
            while self._messages:
                await _send(ws, self._messages.popleft()[0])

        try:
            await asyncio.wait_for(send_all(), timeout)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass  # a client that does not read, or is gone


async def _send(ws: web.WebSocketResponse, message: bytes | str) -> None:
    if isinstance(message, str):
        await ws.send_str(message)
    else:
        await ws.send_bytes(message)


class SlowClient(RuntimeError):
    """The client stopped reading what the server sends."""


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
