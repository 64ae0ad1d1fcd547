"""`GET /api/asr-streaming`: Kyutai's moshi-server speech-to-text protocol (`asr.rs`).

Binary msgpack maps tagged by `type`. In: `Audio {pcm: [f32 at 24 kHz]}`, `OggOpus {data}`,
`Marker {id}`, `Init` (ignored). Out: `Ready` once the stream is stepped, `Word {text,
start_time}` and `EndWord {stop_time}` (sent together, when the word is complete), `Step
{step_idx, prs, buffered_pcm}` every 80 ms step (`prs`: the extra heads' end-of-turn
probabilities, empty without heads), `Marker {id}` once the audio sent before it has been
transcribed (the text delay included), `Error {message}` for a bad message (the stream goes on).
The stream is a row of the service's batch (`SttService`): its words are `transcribe`'s on the
same audio.
"""

from __future__ import annotations

import asyncio
from collections import deque

import msgpack
import numpy as np
from aiohttp import WSMsgType, web

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

from ..jobs.stt import VAD_CLASS, SttStep
from .codecs import AudioFormatError, OpusDecoder
from .services import SERVICES, Services, Unavailable, accept
from .stt_live import LiveStream
from .stt_service import Busy

ASR_PATH = "/api/asr-streaming"
MAX_MESSAGE = 4 << 20  # bytes of one message (an Audio message of about 8 s)
MAX_WAITING_SECONDS = 60.0  # audio a stream may have waiting to be transcribed


def add_routes(app: web.Application, services: Services) -> None:
    app.router.add_get(ASR_PATH, handle_asr)


def pack(kind: str, **fields) -> bytes:
    return msgpack.packb({"type": kind, **fields}, use_single_float=True)


class BadMessage(ValueError):
    """A client message that is not one of the protocol's."""


def read_audio(message: dict, opus: OpusDecoder) -> np.ndarray | None:
    """The samples of an `Audio` or `OggOpus` message, None for another kind."""
    kind = message.get("type")
    if kind == "Audio":
        pcm = message.get("pcm")
        # (NumPy reads the list at C speed: a string, None or a nested list gives another kind)
        samples = np.asarray(pcm) if isinstance(pcm, list | tuple) else None
        if samples is None or samples.ndim != 1 or samples.dtype.kind not in "biuf":
            raise BadMessage("Audio needs `pcm`: a list of float samples at 24 kHz")
        return samples.astype(np.float32)
    if kind == "OggOpus":
        data = message.get("data")
        if not isinstance(data, bytes):
            raise BadMessage("OggOpus needs `data`: the bytes of Ogg Opus pages")
        return opus.decode(data)
    return None


class AsrSession:
    """One client: its messages into its `LiveStream`, its steps out as messages."""

    def __init__(self, ws: web.WebSocketResponse, stream: LiveStream, prefix: int, delay: int):
        self.ws, self.stream = ws, stream
        self.prefix, self.delay = prefix, delay  # samples before the audio, text delay
        self.received = 0  # samples of the client's audio
        self.markers: deque[tuple[int, object]] = deque()  # (input samples needed, id)
        self.opus = OpusDecoder()

    async def receive(self) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY:
                if msg.type == WSMsgType.TEXT:
                    await self.error("messages are binary msgpack maps with a `type`")
                    continue
                break
            try:
                self.handle(msg.data)
            except (BadMessage, AudioFormatError) as e:
                await self.error(str(e))
            except (ValueError, msgpack.UnpackException) as e:
                await self.error(f"not a msgpack message ({e})")
            waiting = len(self.stream.audio) / SAMPLE_RATE
            if waiting > MAX_WAITING_SECONDS:
                await self.error(f"{waiting:.0f} s of audio wait to be transcribed: closing")
                break

    def handle(self, data: bytes) -> None:
        message = msgpack.unpackb(data, raw=False)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise BadMessage("a message is a msgpack map with a `type`")
        pcm = read_audio(message, self.opus)
        if pcm is not None:
            self.received += len(pcm)
            self.stream.push(pcm)
        elif message["type"] == "Marker":
            need = self.prefix + self.received + self.delay
            self.markers.append((need, message.get("id")))
        elif message["type"] != "Init":
            raise BadMessage(f"unknown message type {message['type']!r}")

    async def send_steps(self) -> None:
        await self.stream.joined.wait()
        await self.ws.send_bytes(pack("Ready"))
        while (step := await self.stream.steps.get()) is not None:
            for message in self.messages(step):
                await self.ws.send_bytes(message)

    def messages(self, step: SttStep) -> list[bytes]:
        out = []
        for w in step.words:
            out += [pack("Word", text=w.text, start_time=w.start), pack("EndWord", stop_time=w.end)]
        prs = [] if step.heads is None else [float(p) for p in step.heads[:, VAD_CLASS]]
        buffered = len(self.stream.audio)
        out.append(pack("Step", step_idx=step.index, prs=prs, buffered_pcm=buffered))
        stepped = (step.index + 1) * FRAME_SIZE
        while self.markers and self.markers[0][0] <= stepped:
            out.append(pack("Marker", id=self.markers.popleft()[1]))
        return out

    async def error(self, message: str) -> None:
        if not self.ws.closed:
            await self.ws.send_bytes(pack("Error", message=message))


async def handle_asr(request: web.Request) -> web.WebSocketResponse:
    services = request.app[SERVICES]
    ws = await accept(request, MAX_MESSAGE)
    try:
        stt = services.serving("stt")
        stream = stt.open_stream()
    except (Unavailable, Busy) as e:
        await ws.send_bytes(pack("Error", message=str(e)))
        await ws.close()
        return ws
    settings = stt.settings
    delay = int(settings.audio_delay_seconds * SAMPLE_RATE)
    session = AsrSession(ws, stream, settings.prefix_samples, delay)
    sender = asyncio.create_task(session.send_steps())
    try:
        await session.receive()
    finally:
        stream.leave()
        sender.cancel()
        await ws.close()
    return ws
