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
- `ping` -> `pong`.
A bad event (unknown, malformed, no audio, unknown voice, busy) gets an `error` event and the
connection goes on; bytes that are not Wyoming framing, or an event over the size limits, close
that connection. The framing is read here (not with `wyoming.event.async_read_event`) to bound
the lengths a client declares before reading them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from pathlib import Path

import soundfile
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info, TtsProgram, TtsVoice
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

from ..model.known import MODELS
from .codecs import AudioFormatError, Pcm16Encoder, PcmIn
from .services import Services
from .stt_service import Busy
from .tts_service import MAX_TEXT, QueryError, TextIn

MAX_HEADER = 64 << 10  # bytes of an event's JSON line
MAX_DATA = 1 << 20  # bytes of an event's extra JSON data, and of its payload (an audio chunk)
MAX_AUDIO_SECONDS = 300.0  # audio one transcription may hold
DEFAULT_LANGUAGES = ("en",)  # a model the table does not know: Kyutai's models all speak English
KYUTAI = Attribution(name="Kyutai", url="https://kyutai.org")
PROGRAM = "moshi-mlx"


class BadFraming(ValueError):
    """Bytes that are not a Wyoming event within the limits: the connection is closed."""


class BadEvent(ValueError):
    """An event this server cannot serve: told to the client in an `error` event."""


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event (a JSON line, its extra data, its payload); None at the end."""
    try:
        line = await reader.readline()
    except ValueError:  # (asyncio's LimitOverrunError, as readline raises it)
        raise BadFraming(f"an event's header line is over {MAX_HEADER} bytes") from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except ValueError:
        raise BadFraming("not a Wyoming event (a line of JSON with a `type`)") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise BadFraming("not a Wyoming event (a line of JSON with a `type`)")
    data = header.get("data") or {}
    lengths = [header.get("data_length") or 0, header.get("payload_length") or 0]
    if not isinstance(data, dict) or not all(isinstance(n, int) for n in lengths):
        raise BadFraming("an event's `data` is a map and its lengths are integers")
    if not all(0 <= n <= MAX_DATA for n in lengths):
        raise BadFraming(f"an event's data and payload are each at most {MAX_DATA} bytes")
    try:
        if lengths[0]:
            extra = json.loads(await reader.readexactly(lengths[0]))
            if not isinstance(extra, dict):
                raise BadFraming("an event's data is a JSON map")
            data.update(extra)
        payload = await reader.readexactly(lengths[1]) if lengths[1] else None
    except asyncio.IncompleteReadError:
        return None
    except UnicodeDecodeError as e:
        raise BadFraming(f"an event's data is not JSON ({e})") from None
    except json.JSONDecodeError as e:
        raise BadFraming(f"an event's data is not JSON ({e})") from None
    return Event(type=header["type"], data=data, payload=payload)


def languages(name: str) -> list[str]:
    """The languages of a served model: the known model's (by name or hub repo), else English."""
    for model in MODELS.values():
        if name == model.name or name in (r.rsplit("/", 1)[-1] for r in model.repos.values()):
            return list(model.languages or DEFAULT_LANGUAGES)
    return list(DEFAULT_LANGUAGES)


def info(services: Services) -> Info:
    """What `describe` answers: the STT and TTS models served here."""

    def about(name: str, description: str) -> dict:
        return dict(
            name=name, attribution=KYUTAI, installed=True, description=description, version=None
        )

    asr, tts = [], []
    if (stt := services.stt) is not None:
        model = AsrModel(**about(stt.name, "Kyutai speech to text"), languages=languages(stt.name))
        program = about(PROGRAM, f"Kyutai's speech to text on MLX ({stt.name})")
        asr.append(AsrProgram(**program, models=[model]))
    if (speech := services.tts) is not None:
        langs = languages(speech.name)
        names = speech.voice_names() or [speech.default_voice]
        voices = [TtsVoice(**about(v, f"{speech.name}: {v}"), languages=langs) for v in names]
        program = about(PROGRAM, f"Kyutai's text to speech on MLX ({speech.name})")
        tts.append(TtsProgram(**program, voices=voices, supports_synthesize_streaming=True))
    return Info(asr=asr, tts=tts)


class WyomingSession:
    """One client connection: its events read and answered in order."""

    def __init__(self, services: Services, reader, writer):
        self.services, self.reader, self.writer = services, reader, writer
        self.audio: PcmIn | None = None
        self.language: str | None = None
        self.text: TextIn | None = None  # a streamed synthesis's text (synthesize-start..stop)
        self.speaking: asyncio.Task | None = None  # ... spoken as it comes

    async def run(self) -> None:
        self.services.sessions.add(self)
        try:
            if self.services.closing:
                raise BadFraming("the server is shutting down")
            while (event := await read_event(self.reader)) is not None:
                try:
                    await self.handle(event)
                except BadEvent as e:
                    await self.send(Error(text=str(e), code="bad-request"))
                except Busy as e:
                    await self.send(Error(text=f"busy: {e}; try again soon", code="busy"))
        except BadFraming as e:
            await self.send(Error(text=f"{e}: closing", code="bad-framing"))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left
        finally:
            if self.speaking is not None:
                self.speaking.cancel()  # (the model is freed after its current frames)
            self.services.sessions.discard(self)
            self.writer.close()

    async def close(self, message: str) -> None:
        """The server stops: tell the client and close."""
        try:
            await self.send(Error(text=message, code="shutdown"))
        except ConnectionError:
            pass
        self.writer.close()

    async def send(self, item) -> None:
        if not self.writer.is_closing():
            await async_write_event(item.event(), self.writer)

    async def handle(self, event: Event) -> None:
        kind = event.type
        try:
            if Describe.is_type(kind):
                await self.send(info(self.services))
            elif Ping.is_type(kind):
                await self.send(Pong(text=Ping.from_event(event).text))
            elif Transcribe.is_type(kind):
                self._stt()
                self.language = Transcribe.from_event(event).language
            elif AudioStart.is_type(kind):
                start = AudioStart.from_event(event)
                self._stt()
                self.audio = PcmIn(start.rate, start.width, start.channels)
            elif AudioChunk.is_type(kind):
                self._audio_chunk(AudioChunk.from_event(event))
            elif AudioStop.is_type(kind):
                await self._transcribe()
            elif Synthesize.is_type(kind):
                if self.text is None:  # (in a stream: the same text, for older servers)
                    await self._synthesize(Synthesize.from_event(event))
            elif SynthesizeStart.is_type(kind):
                self._start_stream(SynthesizeStart.from_event(event))
            elif SynthesizeChunk.is_type(kind):
                text = SynthesizeChunk.from_event(event).text
                if self.text is None or not isinstance(text, str):
                    raise BadEvent("synthesize-chunk: text, between synthesize-start and -stop")
                self.text.push(text)
            elif SynthesizeStop.is_type(kind):
                await self._stop_stream()
            else:
                raise BadEvent(
                    f"unknown event {kind!r}: this server takes describe, transcribe, "
                    "audio-start, audio-chunk, audio-stop, synthesize (and its -start, -chunk, "
                    "-stop) and ping"
                )
        except (KeyError, TypeError, AttributeError) as e:
            self.audio = None if kind.startswith("audio") else self.audio
            raise BadEvent(f"a malformed {kind} event ({type(e).__name__}: {e})") from None
        except (BadEvent, AudioFormatError) as e:
            self.audio = None if kind.startswith("audio") else self.audio
            raise BadEvent(str(e)) from None

    def _stt(self):
        if self.services.stt is None:
            raise BadEvent("no speech-to-text model is served here (serve one with --stt)")
        return self.services.stt

    def _audio_chunk(self, chunk: AudioChunk) -> None:
        if self.audio is None:
            raise BadEvent("an audio-chunk before audio-start")
        if (chunk.rate, chunk.width, chunk.channels) != self.audio.format:
            raise BadEvent("an audio-chunk's rate, width and channels differ from audio-start's")
        self.audio.push(chunk.audio)
        if self.audio.samples > MAX_AUDIO_SECONDS * SAMPLE_RATE:
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
        name = request.voice.name if request.voice is not None else None
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
        self.text = TextIn()
        name = start.voice.name if start.voice is not None else None
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

    async def connected(reader, writer) -> None:
        await WyomingSession(services, reader, writer).run()

    return await asyncio.start_server(connected, sock=sock, limit=MAX_HEADER)
