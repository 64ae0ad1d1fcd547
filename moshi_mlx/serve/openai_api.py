"""OpenAI's speech API: `POST /v1/audio/transcriptions`, `POST /v1/audio/speech`, `GET /v1/models`.

Transcriptions give `moshi-mlx transcribe`'s result (`render`): `json` `{"text"}`, `text`,
`srt`, `vtt`, `verbose_json` (duration, words and/or segments by `timestamp_granularities[]`).
Speech is `speak`'s, streamed as generated (`wav` with an open-ended header, `pcm` int16; `flac`
once complete). `model` is a served id or, one model of that kind being served, any name
(`whisper-1`, `tts-1`); `voice` is what `speak --voice` takes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from aiohttp import web

from mimi_mlx.constants import SAMPLE_RATE
from mimi_mlx.io.audio import AudioError

from ..formats.subtitles import cues, render
from .codecs import Pcm16Encoder
from .query import QueryError
from .services import SERVICES, Services, not_served
from .stt_service import RETRY_AFTER, Busy
from .tts_ws import wav_bytes

FORMATS = {"json", "text", "srt", "vtt", "verbose_json"}
SPEECH_FORMATS = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
MAX_FILE = 25 << 20  # OpenAI's limit


def add_routes(app: web.Application, services: Services) -> None:
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/v1/models", models)


def error(status: int, message: str, **headers) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error"}}
    return web.json_response(body, status=status, headers=headers)


async def models(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    names = [x.name for x in (s.stt, s.tts) if x is not None]
    data = [{"id": n, "object": "model", "owned_by": "kyutai"} for n in names]
    return web.json_response({"object": "list", "data": data})


async def transcriptions(request: web.Request) -> web.Response:
    stt = request.app[SERVICES].stt
    if stt is None:
        return error(404, not_served("stt"))
    fields, audio = {}, None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "file":
                audio = tempfile.NamedTemporaryFile(suffix=Path(part.filename or "").suffix)
                size = 0
                while chunk := await part.read_chunk():
                    size += len(chunk)
                    if size > MAX_FILE:
                        return error(413, f"the file is over {MAX_FILE >> 20} MB")
                    audio.write(chunk)
                audio.flush()
            else:
                fields.setdefault(part.name, []).append(await part.text())
    except (ValueError, AssertionError) as e:
        return error(400, f"send multipart/form-data with a `file` ({e})")
    if audio is None:
        return error(400, "give the audio as the multipart field `file`")
    fmt = (fields.get("response_format") or ["json"])[0]
    if fmt not in FORMATS:
        return error(400, f"response_format must be one of {', '.join(sorted(FORMATS))}")
    try:
        with audio:
            result = await stt.transcribe(Path(audio.name))
    except AudioError as e:
        return error(400, str(e))
    except Busy as e:
        return error(503, str(e), **{"Retry-After": str(RETRY_AFTER)})
    if fmt == "json":
        return web.json_response({"text": result.text})
    if fmt == "verbose_json":
        grains = fields.get("timestamp_granularities[]") or ["segment"]
        body = {"task": "transcribe", "duration": result.duration, "text": result.text}
        if "word" in grains:
            body["words"] = [{"word": w.text, "start": w.start, "end": w.end} for w in result.words]
        if "segment" in grains:
            body["segments"] = [
                {"id": i, "start": a, "end": b, "text": t}
                for i, (a, b, t) in enumerate(cues(result.words))
            ]
        return web.json_response(body)
    text = render(result, "txt" if fmt == "text" else fmt)
    return web.Response(text=text, content_type="text/plain")


async def speech(request: web.Request) -> web.StreamResponse:
    tts = request.app[SERVICES].tts
    if tts is None:
        return error(404, not_served("tts"))
    try:
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("input"), str):
            raise QueryError("give JSON with `input`: the text to speak")
        fmt = body.get("response_format", "wav")
        if fmt not in SPEECH_FORMATS:
            raise QueryError(f"response_format must be one of {', '.join(SPEECH_FORMATS)}")
        settings = tts.settings({k: v for k, v in body.items() if k in ("temperature", "seed")})
    except (QueryError, ValueError) as e:
        return error(400, str(e))
    try:
        async with tts.slot():
            try:
                voice = await tts.voice(body.get("voice"))
            except QueryError as e:
                return error(400, str(e))
            response = web.StreamResponse(headers={"Content-Type": SPEECH_FORMATS[fmt]})
            await response.prepare(request)
            if fmt == "wav":
                await response.write(open_wav_header())
            pcm16, whole = Pcm16Encoder(), []
            async for pcm, _ in tts.speak(body["input"], voice, settings):
                if fmt == "flac":
                    whole.append(pcm)
                else:
                    await response.write(pcm16.encode(pcm))
            if fmt == "flac":
                await response.write(flac_bytes(np.concatenate(whole)))
            await response.write_eof()
            return response
    except Busy as e:
        return error(503, str(e), **{"Retry-After": str(RETRY_AFTER)})


def open_wav_header() -> bytes:
    """A 16-bit mono WAV header whose sizes say "until the end of the stream"."""
    header = bytearray(wav_bytes(np.zeros(0, np.float32))[:44])
    header[4:8] = header[40:44] = (0xFFFFFFFF).to_bytes(4, "little")
    return bytes(header)


def flac_bytes(pcm: np.ndarray) -> bytes:
    import io

    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, pcm, SAMPLE_RATE, format="FLAC")
    return buf.getvalue()
