"""`GET /api/tts_streaming` (WebSocket) and `POST /api/tts`: Kyutai's moshi-server TTS (`tts.rs`).

Streaming: query `voice` (as `speak --voice`), `format` (`PcmMessagePack`: msgpack `Audio
{pcm}`; `OggOpusMessagePack`: msgpack `OggOpus {data}`; `OggOpus`: raw Ogg pages; `Pcm`: raw
float32), `cfg_alpha`, `seed`, `temperature`. In: msgpack `Text {text}` as the words come,
`Voice {embeddings, shape}` (a voice embedding, before the first text), `Eos` or a single
`b"\\0"` byte; a WebSocket text frame is words too (as `tts.rs` reads them). Out: `Ready`, the
audio, `Text {text, start_s, stop_s}` word timings (the msgpack formats), then the close. The
speech starts as soon as the text allows (`SpeechStream`), before the text has ended.

POST: JSON `{text, voice, cfg_alpha, seed, temperature}`, the whole speech back as a WAV file.
"""

from __future__ import annotations

import asyncio
import io

import msgpack
import numpy as np
import soundfile
from aiohttp import WSMsgType, web

from mimi_mlx.constants import FRAME_SECONDS, SAMPLE_RATE

from .codecs import OpusEncoder
from .query import QueryError
from .services import SERVICES, Services, Unavailable, accept, not_served
from .stt_service import RETRY_AFTER, Busy
from .tts_service import MAX_TEXT, TextIn

TTS_PATH = "/api/tts"
FORMATS = ("PcmMessagePack", "OggOpusMessagePack", "OggOpus", "Pcm")
MAX_MESSAGE = 1 << 20


def add_routes(app: web.Application, services: Services) -> None:
    app.router.add_get(f"{TTS_PATH}_streaming", handle_tts_streaming)
    app.router.add_post(TTS_PATH, handle_tts)


def pack(kind: str, **fields) -> bytes:
    return msgpack.packb({"type": kind, **fields}, use_single_float=True)


class AudioOut:
    """The stream's audio and word timings as `format` sends them."""

    def __init__(self, fmt: str):
        if fmt not in FORMATS:
            raise QueryError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.opus = OpusEncoder() if "Opus" in fmt else None
        self.word = None  # the last word, sent once its end is known
        self.frames = 0

    def audio(self, pcm: np.ndarray) -> list[bytes]:
        self.frames += 1
        if self.fmt == "Pcm":
            return [pcm.astype("<f4").tobytes()]
        if self.fmt == "PcmMessagePack":
            return [pack("Audio", pcm=pcm.tolist())]
        data = self.opus.encode(pcm)
        if not data:
            return []
        return [data] if self.fmt == "OggOpus" else [pack("OggOpus", data=data)]

    def words(self, words: list, final: bool = False) -> list[bytes]:
        out = []
        for w in [*words, None] if final else words:
            if self.word is not None and self.fmt.endswith("MessagePack"):
                stop = w.start if w is not None else self.frames * FRAME_SECONDS
                out.append(pack("Text", text=self.word.text, start_s=self.word.start, stop_s=stop))
            self.word = w
        return out


async def handle_tts_streaming(request: web.Request) -> web.WebSocketResponse:
    services = request.app[SERVICES]
    ws = await accept(request, MAX_MESSAGE)
    try:
        tts = services.serving("tts")
        out = AudioOut(request.query.get("format", "PcmMessagePack"))
        settings = tts.settings(request.query)
        async with tts.slot():
            await ws.send_bytes(pack("Ready"))
            await _stream(ws, tts, out, settings, request.query.get("voice"))
    except (Unavailable, QueryError, Busy) as e:
        if not ws.closed:
            await ws.send_bytes(pack("Error", message=str(e)))
    await ws.close()
    return ws


class _Inbox(TextIn):
    """What the client sent, read while the speech is generated."""

    def __init__(self):
        super().__init__()
        self.voice: np.ndarray | None = None

    async def read(self, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.push(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.handle(msg.data)
            else:
                break
            if self.ended or self.error:
                break
        self.end()

    def handle(self, data: bytes) -> None:
        if data == b"\0":
            self.end()
            return
        try:
            message = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException) as e:
            self.fail(f"not a msgpack message ({e})")
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "Text" and isinstance(message.get("text"), str):
            self.push(message["text"])
        elif kind == "Eos":
            self.end()
        elif kind == "Voice":
            try:
                emb = np.asarray(message["embeddings"], np.float32)
                self.voice = emb.reshape([int(s) for s in message["shape"]])
                self.wake.set()
            except (KeyError, TypeError, ValueError) as e:
                self.fail(f"Voice needs `embeddings` (floats) and their `shape` ({e})")
        else:
            self.fail("messages are msgpack maps: Text {text}, Voice {embeddings, shape}, Eos")


async def _stream(ws, tts, out: AudioOut, settings, voice_name) -> None:
    inbox = _Inbox()
    reader = asyncio.create_task(inbox.read(ws))
    try:
        while not inbox.texts and not inbox.ended and not inbox.error:  # a Voice may come first
            inbox.wake.clear()
            await inbox.wake.wait()
        if inbox.voice is not None:
            voice = inbox.voice
            if voice.ndim != 3 or voice.shape[:2] != (1, tts.tts.voice_dim):
                raise QueryError(f"a voice is (1, {tts.tts.voice_dim}, T), got {voice.shape}")
        else:
            voice = await tts.voice(voice_name)
        stream = await tts.open_stream(voice, settings)
        async for pcm, words in tts.follow(stream, inbox):
            for message in out.words(words) + (out.audio(pcm) if pcm.size else []):
                await ws.send_bytes(message)
        for message in out.words([], final=True):
            await ws.send_bytes(message)
    finally:
        reader.cancel()


async def handle_tts(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    tts = services.tts
    if tts is None:
        raise web.HTTPNotFound(text=not_served("tts"))
    try:
        body = await request.json()
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            raise QueryError(f"give `text`: a non-empty string of at most {MAX_TEXT} characters")
        settings = tts.settings(body)
        async with tts.slot():
            voice = await tts.voice(body.get("voice"))
            pcm = [p async for p, _ in tts.speak(text, voice, settings)]
    except Busy as e:
        raise web.HTTPServiceUnavailable(
            text=str(e), headers={"Retry-After": str(RETRY_AFTER)}
        ) from None
    except (QueryError, ValueError) as e:
        raise web.HTTPBadRequest(text=str(e)) from None
    return web.Response(body=wav_bytes(np.concatenate(pcm)), content_type="audio/wav")


def wav_bytes(pcm: np.ndarray, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, pcm, SAMPLE_RATE, format="WAV", subtype=subtype)
    return buf.getvalue()
