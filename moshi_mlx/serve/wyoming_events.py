"""The Wyoming wire for `wyoming_server`: events read within size limits, the requests parsed
(a bad one is `BadEvent`, told to the client; bad framing is `BadFraming`, the connection
closes), and what `describe` answers. The framing is read here, not with
`wyoming.event.async_read_event`, to bound the lengths a client declares before reading them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.ping import Ping
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from ..jobs.known import MODELS
from .services import Services

MAX_HEADER = 64 << 10  # bytes of an event's JSON line
MAX_DATA = 1 << 20  # bytes of an event's extra JSON data, and of its payload (an audio chunk)
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


REQUESTS = (Describe, Ping, Transcribe, AudioStart, AudioChunk, AudioStop, Synthesize,
            SynthesizeStart, SynthesizeChunk, SynthesizeStop)  # fmt: skip


def parse(event: Event):
    """The request an event is (one of `REQUESTS`); BadEvent for another or a malformed one."""
    for kind in REQUESTS:
        if kind.is_type(event.type):
            try:
                request = kind.from_event(event)
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
                raise BadEvent(f"a malformed {event.type} event ({why})") from None
            if isinstance(request, AudioChunk) and not isinstance(request.audio, bytes):
                raise BadEvent("an audio-chunk's audio is its payload")
            return request
    raise BadEvent(
        f"unknown event {event.type!r}: this server takes describe, transcribe, audio-start, "
        "audio-chunk, audio-stop, synthesize (and its -start, -chunk, -stop) and ping"
    )


def voice_name(voice: SynthesizeVoice | None) -> str | None:
    """A requested voice's name (None: the default); a file path is refused (the protocol has
    no key: its clients name voices, they do not read the server's files)."""
    name = voice.name if voice is not None else None
    if name is not None and not isinstance(name, str):
        raise BadEvent("a voice's name is a string (describe lists them)")
    if name is not None:
        path = Path(name)
        outside = path.is_absolute() or ".." in path.parts or name.startswith("~")
        if outside or path.suffix == ".safetensors":
            raise BadEvent(f"voice {name!r}: give a voice's name (describe lists them), not a file")
    return name
