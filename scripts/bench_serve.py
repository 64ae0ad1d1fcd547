"""Benchmark `moshi-mlx serve`: what the server adds to the in-process jobs, measured side by side.

    python scripts/bench.py serve                     # tiny random checkpoints (any machine)
    python scripts/bench.py serve --chat moshiko --stt stt-1b-en_fr --tts tts-1.6b-en_fr
    python scripts/bench.py serve --parts chat --frames 400 --rounds 5

The server runs as `moshi-mlx serve` in its own process; this process is its client and holds
the same checkpoints for the in-process rows (real checkpoints are then in memory twice: run the
parts one at a time with `--parts`). Rounds alternate between the two sides; medians are shown.

- chat: one 80 ms frame at a time over `/api/chat` (the next frame is sent when the last one's
  audio has come back: Ogg Opus both ways, the socket, the model thread) against
  `Pipeline.step` here on the same frames. What the server adds is the round trip less the
  in-process step less this client's own Opus work; the server's own Opus work (decoding the
  client's pages, encoding Moshi's frames) is measured apart and shown inside it.
- tts: time to first audio: the whole text sent as `Text` messages and `Eos` on
  `/api/tts_streaming` until the first `Audio`, against `SpeechStream` here (push, end, the
  first frame decoded); the voice is loaded beforehand on both sides.
- stt: N streams at once on `/api/asr-streaming` (each sends the whole audio as fast as the
  server takes it, then a `Marker`; done when every Marker is back: all words sent) against one
  `transcribe_files` batch of N copies of the same file: seconds of audio per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

PARTS = ("chat", "tts", "stt")
WARMUP = 2  # untimed rounds first, on each side (the first calls compile)
TEXT = (
    "The quick brown fox jumps over the lazy dog while the sun sets slowly behind the hills "
    "and the birds sing their evening songs."
)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--chat", help="speech-to-speech model: a folder, repo or known name")
    parser.add_argument("--stt", help="speech-to-text model (default: tiny)")
    parser.add_argument("--tts", help="text-to-speech model (default: tiny)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: chat,tts,stt")
    parser.add_argument("--frames", type=int, default=150, help="chat frames per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (alternating)")
    parser.add_argument("--streams", default="1,4,16", help="concurrent STT streams")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of audio per stream")
    parser.add_argument(
        "--workdir",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "moshi-bench", "serve"),
        help="where the tiny checkpoints and the audio are written (and reused)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {', '.join(sorted(unknown))} (use {', '.join(PARTS)})")
    workdir = Path(args.workdir)
    sources = _sources(args, parts, workdir)
    speech = _speech(workdir / "speech.wav", args.seconds)
    print(f"machine: {_cpu()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    with _server(sources, workdir) as base:
        if "chat" in parts:
            _bench_chat(base, sources["chat"], speech, args)
        if "tts" in parts:
            _bench_tts(base, sources["tts"], args)
        if "stt" in parts:
            _bench_stt(base, sources["stt"], workdir / "speech.wav", args)
    return 0


# -- the models and the server -------------------------------------------------------------------
def _sources(args: argparse.Namespace, parts: list[str], workdir: Path) -> dict[str, str]:
    """Each part's checkpoint: the one named, else a tiny random one written once."""
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    sources = {}
    for part, kind in (("chat", "moshi"), ("stt", "stt"), ("tts", "tts")):
        if part not in parts:
            continue
        named = getattr(args, part)
        if named is None:
            folder = workdir / f"tiny-{kind}"
            if not (folder / "config.json").is_file():
                make_tiny_checkpoint(folder, seed=0, kind=kind)
            named = str(folder)
        sources[part] = named
    return sources


def _resolved(part: str, named: str) -> str:
    """The checkpoint `moshi-mlx serve` loads for `named` (a folder, hub repo or known name)."""
    from moshi_mlx.commands.serve import _speech_source

    kind = {"chat": "moshi", "stt": "stt", "tts": "tts"}[part]
    return _speech_source(named, kind, f"--{part}")


def _serve_args(sources: dict[str, str]) -> list[str]:
    args = []
    if "chat" in sources:
        named = sources["chat"]
        flag = (
            "--checkpoint"
            if Path(named).exists()
            else "--model"
            if "/" not in named
            else "--hf-repo"
        )
        args += [flag, named]
    for part in ("stt", "tts"):
        if part in sources:
            args += [f"--{part}", sources[part]]
    return args


@contextmanager
def _server(sources: dict[str, str], workdir: Path):
    """`moshi-mlx serve` on a free port; yields its address (host:port)."""
    log_path = workdir / "serve.log"
    cmd = [sys.executable, "-m", "moshi_mlx", "serve", "--port", "0", *_serve_args(sources)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while not (
                found := re.search(r"serving on https?://([\d.]+:\d+)/", log_path.read_text())
            ):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield found.group(1)
        finally:
            proc.terminate()
            proc.wait(60)


def _speech(path: Path, seconds: float) -> np.ndarray:
    """Speech-like audio at 24 kHz (a gliding tone in syllables and pauses), written once."""
    import soundfile as sf

    if not path.is_file() or abs(sf.info(str(path)).duration - seconds) > 0.01:
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * 24000)) / 24000
        audio = 0.2 * np.sin(2 * np.pi * (180 + 120 * np.sin(2 * np.pi * 3 * t)) * t)
        audio *= (np.sin(2 * np.pi * 1.5 * t) > -0.3).astype(float)  # syllables and pauses
        sf.write(str(path), audio.astype(np.float32), 24000, subtype="FLOAT")
    audio, _ = sf.read(str(path), dtype="float32")
    return audio


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


# -- chat: the cost of a frame over the socket ---------------------------------------------------
def _bench_chat(base: str, named: str, speech: np.ndarray, args: argparse.Namespace) -> None:
    from mimi_mlx.constants import FRAME_SIZE
    from moshi_mlx import load_checkpoint
    from moshi_mlx.jobs.pipeline import Pipeline
    from moshi_mlx.serve.codecs import OpusDecoder, OpusEncoder

    n = args.frames
    frames = [
        np.resize(speech, n * FRAME_SIZE)[i * FRAME_SIZE : (i + 1) * FRAME_SIZE] for i in range(n)
    ]
    ckpt = load_checkpoint(_resolved("chat", named))
    pipeline = Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer)
    pipeline.warmup()
    local, remote, client_opus = [], [], []
    for _ in range(args.rounds):
        pipeline.reset()
        for frame in frames:
            t = time.perf_counter()
            result = pipeline.step(frame)
            local.append(time.perf_counter() - t)
        rtt, opus = asyncio.run(_chat_socket(base, frames))
        remote += rtt
        client_opus += opus
    # the server's own Opus work on the same frames: the client's pages in, Moshi's frames out
    pages = _opus_pages(frames)
    decoder, encoder, server_opus = OpusDecoder(), OpusEncoder(), []
    for page, frame in zip(pages, frames, strict=True):
        t = time.perf_counter()
        decoder.decode(page)
        encoder.encode(frame)
        server_opus.append(time.perf_counter() - t)
    step, trip, own = _ms(local), _ms(remote), _ms(client_opus)
    added = trip - step - own
    print(f"\nchat ({named}): {args.rounds} rounds of {n} frames, one frame in flight")
    print(f"  in-process Pipeline.step        {step:7.2f} ms a frame")
    print(f"  over the socket (round trip)    {trip:7.2f} ms a frame")
    print(f"  of which this client's Opus     {own:7.2f} ms (encode its frame, decode the answer)")
    print(f"  added by the server             {added:7.2f} ms a frame (goal: under 5 ms)")
    print(f"    of which the server's Opus    {_ms(server_opus):7.2f} ms (decode in, encode out)")
    print(f"    socket and scheduling         {added - _ms(server_opus):7.2f} ms")
    del result


def _opus_pages(frames: list[np.ndarray]) -> list[bytes]:
    import sphn

    writer = sphn.OpusStreamWriter(24000)
    return [writer.append_pcm(f) for f in frames]


async def _chat_socket(base: str, frames: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per frame: the round trip (send its page, its audio back) and this client's Opus time."""
    import aiohttp
    import sphn

    writer, reader = sphn.OpusStreamWriter(24000), sphn.OpusStreamReader(24000)
    trips, opus = [], []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://{base}/api/chat") as ws:
        if await ws.receive_bytes(timeout=120) != b"\x00":
            raise SystemExit("the chat did not start")
        for frame in frames:
            start = time.perf_counter()
            page = writer.append_pcm(frame)
            coded = time.perf_counter() - start
            await ws.send_bytes(b"\x01" + page)
            while True:
                data = await ws.receive_bytes(timeout=60)
                if data[:1] == b"\x05":
                    raise SystemExit(f"the server says: {data[1:].decode()}")
                if data[:1] == b"\x01":
                    t = time.perf_counter()
                    reader.append_bytes(data[1:])
                    coded += time.perf_counter() - t
                    break
            trips.append(time.perf_counter() - start)
            opus.append(coded)
    return trips, opus


# -- tts: time to first audio --------------------------------------------------------------------
def _bench_tts(base: str, named: str, args: argparse.Namespace) -> None:
    from moshi_mlx import load_checkpoint
    from moshi_mlx.jobs.tts import TextToSpeech, TtsSettings, load_voice
    from moshi_mlx.jobs.tts_stream import SpeechStream
    from moshi_mlx.serve.tts_service import DEFAULT_VOICE

    tts = TextToSpeech(load_checkpoint(_resolved("tts", named)))
    names = (
        sorted(p.name for p in (tts.folder / "voices").glob(f"*{tts.voice_suffix}"))
        if tts.folder
        else []
    )
    voice_name = names[0][: -len(tts.voice_suffix)] if names else DEFAULT_VOICE
    voice = load_voice(voice_name, tts)
    settings = TtsSettings()
    words = TEXT.split()
    local, remote = [], []
    for _ in range(WARMUP + args.rounds):
        start = time.perf_counter()
        stream = SpeechStream(tts, [voice], settings)
        for w in words:
            stream.push(w)
        stream.end()
        first = next(stream.frames(1))
        stream.decode(first)
        local.append(time.perf_counter() - start)
        remote.append(asyncio.run(_tts_socket(base, words, voice_name)))
    local, remote = local[WARMUP:], remote[WARMUP:]
    print(f"\ntts ({named}): time to first audio, {len(words)} words, {args.rounds} rounds")
    print(f"  in-process SpeechStream         {_ms(local):7.1f} ms")
    print(f"  over /api/tts_streaming         {_ms(remote):7.1f} ms")
    print(f"  added by the server             {_ms(remote) - _ms(local):7.1f} ms")


async def _tts_socket(base: str, words: list[str], voice: str) -> float:
    """Seconds from the first `Text` sent to the first `Audio` received (then read to the end)."""
    import aiohttp
    import msgpack

    first = None
    url = f"ws://{base}/api/tts_streaming?format=PcmMessagePack&voice={voice}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        message = msgpack.unpackb(await ws.receive_bytes(timeout=120))
        if message.get("type") != "Ready":
            raise SystemExit(f"the TTS did not start: {message}")
        start = time.perf_counter()
        for w in words:
            await ws.send_bytes(msgpack.packb({"type": "Text", "text": w}))
        await ws.send_bytes(msgpack.packb({"type": "Eos"}))
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            message = msgpack.unpackb(msg.data)
            if message["type"] == "Error":
                raise SystemExit(f"the server says: {message['message']}")
            if message["type"] == "Audio" and first is None:
                first = time.perf_counter() - start
    if first is None:
        raise SystemExit("the TTS sent no audio")
    return first


# -- stt: throughput of concurrent streams -------------------------------------------------------
def _bench_stt(base: str, named: str, path: Path, args: argparse.Namespace) -> None:
    import soundfile as sf

    from moshi_mlx import load_checkpoint
    from moshi_mlx.jobs.stt import SttSettings
    from moshi_mlx.jobs.transcribe import transcribe_files

    ckpt = load_checkpoint(_resolved("stt", named))
    pcm, _ = sf.read(str(path), dtype="float32")
    seconds = len(pcm) / 24000
    tail = int(SttSettings.of(ckpt.lm).audio_delay_seconds * 24000) + 2 * 1920  # (2 frames more)
    counts = [int(c) for c in args.streams.split(",") if c]
    transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [path], batch_size=1)  # warm-up
    asyncio.run(_stt_streams(base, pcm, 1, tail))
    print(f"\nstt ({named}): {seconds:.1f} s of audio per stream, seconds of audio per second")
    print(f"  {'streams':>7}  {'over the socket':>15}  {'transcribe batch':>16}  ratio")
    for n in counts:
        local, remote = [], []
        for _ in range(max(1, args.rounds - 1)):
            start = time.perf_counter()
            transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [path] * n, batch_size=n)
            local.append(time.perf_counter() - start)
            remote.append(asyncio.run(_stt_streams(base, pcm, n, tail)))
        a, b = n * seconds / statistics.median(remote), n * seconds / statistics.median(local)
        print(f"  {n:7d}  {a:13.1f} x  {b:14.1f} x  {a / b:5.2f}")


async def _stt_streams(base: str, pcm: np.ndarray, n: int, tail: int) -> float:
    """Seconds for `n` streams at once, from the first connection to the last Marker back."""
    import aiohttp

    start = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(_stt_stream(http, base, pcm, tail) for _ in range(n)))
    return time.perf_counter() - start


async def _stt_stream(http, base: str, pcm: np.ndarray, tail: int) -> None:
    """One stream as Kyutai's file client sends it: the audio, a Marker, then `tail` samples of
    silence (the Marker comes back once the text delay has passed it)."""
    import msgpack

    chunk = 24000  # samples per Audio message

    async def send(samples: np.ndarray) -> None:
        for i in range(0, len(samples), chunk):
            message = {"type": "Audio", "pcm": samples[i : i + chunk].tolist()}
            await ws.send_bytes(msgpack.packb(message, use_single_float=True))

    async with http.ws_connect(f"ws://{base}/api/asr-streaming", max_msg_size=0) as ws:
        await send(pcm)
        await ws.send_bytes(msgpack.packb({"type": "Marker", "id": 1}))
        await send(np.zeros(tail, np.float32))
        async for msg in ws:
            message = msgpack.unpackb(msg.data)
            if message["type"] == "Error":
                raise SystemExit(f"the server says: {message['message']}")
            if message["type"] == "Marker":
                return
    raise SystemExit("the stream ended before its Marker came back")
