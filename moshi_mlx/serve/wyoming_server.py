"""Home Assistant's Wyoming protocol (`--wyoming-port`): speech to text and text to speech as the
`wyoming` package's events, on the server's STT and TTS services (the HTTP routes' model thread).

- `describe` -> `info`: an asr program (the STT model, its languages) and a tts program (the TTS
  model, its voices).
- `transcribe` (optional), `audio-start`, `audio-chunk`..., `audio-stop` -> `transcript`: the
  audio, at whatever rate, width and channels the client says, is made 24 kHz mono as
  `transcribe` reads a file (channels averaged, soxr's `Resampler`) and transcribed as a file
  is (`SttService.transcribe`: batched with the files waiting), so the text is `transcribe`'s.
- `synthesize` (text, optional voice name) -> `audio-start`, one `audio-chunk` per 80 ms frame
  as it is generated (16-bit mono at 24 kHz), `audio-stop`: `speak`'s audio.
- `synthesize-start` (voice), `synthesize-chunk`s, `synthesize-stop` (Home Assistant's
  streaming, behind its LLM) -> the same, the speech starting as the words come (`TtsService.
  follow`, the TTS WebSocket's loop), then `synthesize-stopped`; the `synthesize` a streaming
  client also sends (for older servers) is ignored.
- `ping` -> `pong`.
A bad event (unknown, malformed, out of order) gets an `error` event and the connection goes on;
a request that fails (no audio, an unknown voice, busy) gets an `error` and the close (its client
waits for that answer alone: Home Assistant's would wait for ever); bytes that are not Wyoming
framing, or an event over the size limits, close that connection (`wyoming_events`).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import traceback
from pathlib import Path

import soundfile
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from mimi_mlx.constants import SAMPLE_RATE
from mimi_mlx.io.audio import AudioError

from .codecs import AudioFormatError, Pcm16Encoder, PcmIn
from .query import QueryError
from .services import Services
from .stt_service import Busy
from .tts_service import MAX_TEXT, TextIn
from .wyoming_events import MAX_HEADER, BadEvent, BadFraming, info, parse, read_event, voice_name

MAX_AUDIO_SECONDS = 300.0  # audio one transcription may hold
MAX_CLIENTS = 64  # connections at once (beyond: told busy and closed)
STREAM_IDLE_SECONDS = 30.0  # a streamed synthesis without text that long ends (frees the model)
SEND_BUFFER = 64 << 10  # bytes the kernel holds for a client (about 1 s of speech)
SEND_SECONDS = 10.0  # a client that reads nothing that long is closed (its send buffer full)
# requests whose client waits for the answer (a transcript, audio): failed, they are told and
# the connection closes, as clients that wait for that answer alone (Home Assistant's) end then
AWAITED = ("audio-stop", "synthesize")
LINGER_SECONDS = 1.0  # a closed client's input is read and dropped this long (no reset)


class WyomingSession:
    """One client connection: its events read and answered in order."""

    def __init__(self, services: Services, reader, writer):
        self.services, self.reader, self.writer = services, reader, writer
        self.audio: PcmIn | None = None
        self.language: str | None = None
        self.text: TextIn | None = None  # a streamed synthesis's text (synthesize-start..stop)
        self.speaking: asyncio.Task | None = None  # ... spoken as it comes

    async def run(self, refuse: str | None = None) -> None:
        """Serve the client until it leaves (`refuse`: tell it why not, and close)."""
        self.services.sessions.add(self)
        try:
            if self.services.closing:
                refuse = "the server is shutting down"
            if refuse is not None:
                await self._refuse(refuse, "busy")
                return
            while (event := await read_event(self.reader)) is not None:
                try:
                    await self.handle(event)
                    continue
                except BadEvent as e:
                    error = Error(text=str(e), code="bad-request")
                except Busy as e:
                    error = Error(text=f"busy: {e}; try again soon", code="busy")
                except ConnectionError:
                    raise  # the client left or does not read
                except Exception as e:  # a fault of ours: told, logged, and the server goes on
                    traceback.print_exc()
                    failed = f"the server failed on this {event.type} ({type(e).__name__}: {e})"
                    error = Error(text=failed, code="internal")
                if event.type in AWAITED:  # the client waits for its answer: told, then closed
                    await self._refuse(error.text, error.code)
                    return
                await self.send(error)
        except BadFraming as e:
            await self._refuse(f"{e}: closing", "bad-framing")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left
        finally:
            if self.speaking is not None:
                self.speaking.cancel()  # (the model is freed after its current frames)
            self.services.sessions.discard(self)
            self.writer.close()

    async def _refuse(self, message: str, code: str) -> None:
        """Tell the client why, end our side and drop what it still sends (for a moment):
        closing with unread input would reset the connection, and it could lose the error."""
        try:
            await self.send(Error(text=message, code=code))
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await asyncio.wait_for(self._discard(), LINGER_SECONDS)
        except (asyncio.TimeoutError, ConnectionError):
            pass

    async def _discard(self) -> None:
        while await self.reader.read(1 << 16):
            pass

    async def close(self, message: str) -> None:
        """The server stops: tell the client and close."""
        try:
            await self.send(Error(text=message, code="shutdown"))
        except ConnectionError:
            pass
        self.writer.close()

    async def send(self, item) -> None:
        """Write an event; ConnectionError if the client left or stopped reading (then closed:
        a client that does not read holds no model and no memory)."""
        if self.writer.is_closing():
            raise ConnectionResetError("the client left")
        try:
            await asyncio.wait_for(async_write_event(item.event(), self.writer), SEND_SECONDS)
        except asyncio.TimeoutError:
            print(f"wyoming: closed a client that read nothing for {SEND_SECONDS:g} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            self.writer.transport.abort()
            raise ConnectionResetError("the client does not read") from None

    async def handle(self, event: Event) -> None:
        request = parse(event)
        if isinstance(request, Describe):
            await self.send(info(self.services))
        elif isinstance(request, Ping):
            await self.send(Pong(text=request.text))
        elif isinstance(request, Transcribe):
            self._stt()
            self.language = request.language
        elif isinstance(request, AudioStart):
            self._stt()
            self.audio = None
            try:
                self.audio = PcmIn(request.rate, request.width, request.channels)
            except AudioFormatError as e:
                raise BadEvent(str(e)) from None
        elif isinstance(request, AudioChunk):
            self._audio_chunk(request)
        elif isinstance(request, AudioStop):
            await self._transcribe()
        elif isinstance(request, Synthesize):
            if self.text is None:  # (in a stream: the same text, for older servers)
                await self._synthesize(request)
        elif isinstance(request, SynthesizeStart):
            self._start_stream(request)
        elif isinstance(request, SynthesizeChunk):
            if self.text is None or not isinstance(request.text, str):
                raise BadEvent("synthesize-chunk: text, between synthesize-start and -stop")
            self.text.push_delta(request.text)
        elif isinstance(request, SynthesizeStop):
            await self._stop_stream()

    def _stt(self):
        if self.services.stt is None:
            raise BadEvent("no speech-to-text model is served here (serve one with --stt)")
        return self.services.stt

    def _audio_chunk(self, chunk: AudioChunk) -> None:
        if self.audio is None:
            raise BadEvent("an audio-chunk before audio-start")
        if (chunk.rate, chunk.width, chunk.channels) != self.audio.format:
            self.audio = None
            raise BadEvent("an audio-chunk's rate, width and channels differ from audio-start's")
        self.audio.push(chunk.audio)
        if self.audio.samples > MAX_AUDIO_SECONDS * SAMPLE_RATE:
            self.audio = None
            raise BadEvent(f"over {MAX_AUDIO_SECONDS:.0f} s of audio: send shorter requests")

    async def _transcribe(self) -> None:
        audio, self.audio = self.audio, None
        if audio is None:
            raise BadEvent("an audio-stop without audio-start: send audio-start, chunks, stop")
        pcm = audio.finish()
        if not len(pcm):
            raise BadEvent("no audio between audio-start and audio-stop")
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            await asyncio.to_thread(soundfile.write, f.name, pcm, SAMPLE_RATE, subtype="FLOAT")
            try:
                result = await self._stt().transcribe(Path(f.name))
            except AudioError as e:
                raise BadEvent(str(e)) from None
        await self.send(Transcript(text=result.text, language=self.language))

    def _tts(self):
        if self.services.tts is None:
            raise BadEvent("no text-to-speech model is served here (serve one with --tts)")
        return self.services.tts

    async def _synthesize(self, request: Synthesize) -> None:
        tts = self._tts()
        text = request.text
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            raise BadEvent(f"synthesize needs `text`: at most {MAX_TEXT} characters, not empty")
        name = voice_name(request.voice)
        try:
            settings = tts.settings({})
            async with tts.slot():
                voice = await tts.voice(name)
                await self._speak(tts.speak(text, voice, settings))
        except QueryError as e:
            raise BadEvent(str(e)) from None

    def _start_stream(self, start: SynthesizeStart) -> None:
        """Speak the chunks as they come, until synthesize-stop."""
        if self.text is not None:
            raise BadEvent("a synthesize-start in a stream: end it first with synthesize-stop")
        tts = self._tts()
        self.text = TextIn(STREAM_IDLE_SECONDS)
        name = voice_name(start.voice)
        self.speaking = asyncio.create_task(self._speak_stream(tts, self.text, name))

    async def _speak_stream(self, tts, text: TextIn, name: str | None) -> None:
        try:
            settings = tts.settings({})
            async with tts.slot():
                voice = await tts.voice(name)
                stream = await tts.open_stream(voice, settings)
                await self._speak(tts.follow(stream, text))
        except QueryError as e:
            await self.send(Error(text=str(e), code="bad-request"))
        except Busy as e:
            await self.send(Error(text=f"busy: {e}; try again soon", code="busy"))
        except ConnectionError:
            pass  # the client left

    async def _stop_stream(self) -> None:
        if self.text is None:
            raise BadEvent("a synthesize-stop without synthesize-start")
        self.text.end()
        try:
            await self.speaking
        finally:
            self.text = self.speaking = None
        await self.send(SynthesizeStopped())

    async def _speak(self, frames) -> None:
        """`audio-start`, an `audio-chunk` per frame as it comes, `audio-stop`."""
        fmt = dict(rate=SAMPLE_RATE, width=2, channels=1)
        await self.send(AudioStart(**fmt, timestamp=0))
        pcm16, sent = Pcm16Encoder(), 0
        async for pcm, _ in frames:
            if len(pcm):
                chunk = AudioChunk(**fmt, audio=pcm16.encode(pcm), timestamp=round(sent * 1000))
                await self.send(chunk)
                sent += len(pcm) / SAMPLE_RATE
        await self.send(AudioStop(timestamp=round(sent * 1000)))


async def start(services: Services, sock: socket.socket) -> asyncio.Server:
    """Serve Wyoming on the bound `sock` (in the running loop) until the server is closed."""

    clients = 0

    async def connected(reader, writer) -> None:
        nonlocal clients
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        session = WyomingSession(services, reader, writer)
        if clients >= MAX_CLIENTS:
            await session.run(f"busy: {clients} clients are connected; try again soon")
            return
        clients += 1
        try:
            await session.run()
        finally:
            clients -= 1

    return await asyncio.start_server(connected, sock=sock, limit=MAX_HEADER)
