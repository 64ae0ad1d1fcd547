"""A real server on a free port for the speech routes' tests: the app of `moshi-mlx serve`
(`build_app`) with the tiny STT and TTS checkpoints, its event loop and model thread in
background threads of the test process; clients connect over the socket."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
from aiohttp import web

from moshi_mlx import load_checkpoint
from moshi_mlx.jobs.tts import TextToSpeech
from moshi_mlx.serve import wyoming_server
from moshi_mlx.serve.app import build_app
from moshi_mlx.serve.services import ServeOptions, Services
from moshi_mlx.serve.stt_service import SttService
from moshi_mlx.serve.tts_service import TtsService
from moshi_mlx.serve.worker import ModelThread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def speech_server(
    stt: Path | None, tts: Path | None, tts_defaults=None, wyoming_port: int | None = None, **limits
):
    """Serve the checkpoints (and Wyoming on `wyoming_port`, as `serve --wyoming-port`); yields
    the base URL `http://127.0.0.1:PORT`."""
    port = free_port()
    thread = ModelThread()
    thread.start()
    services = Services(thread, ServeOptions(port=port))
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()
    errors: list[BaseException] = []

    async def main():
        if stt is not None:
            ckpt = await thread.call(load_checkpoint, stt)
            services.stt = SttService(ckpt, "tiny-stt", thread, **limits)
        if tts is not None:
            model = await thread.call(lambda: TextToSpeech(load_checkpoint(tts)))
            services.tts = TtsService(model, "tiny-tts", thread, defaults=tts_defaults)
        runner = web.AppRunner(build_app(services))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        wyoming = None
        if wyoming_port is not None:
            sock = socket.create_server(("127.0.0.1", wyoming_port))
            wyoming = await wyoming_server.start(services, sock)
        ready.set()
        await stop.wait()
        if wyoming is not None:
            wyoming.close()
        await runner.cleanup()

    def run():
        try:
            loop.run_until_complete(main())
        except BaseException as e:  # noqa: BLE001 (told to the test)
            errors.append(e)
            ready.set()

    server = threading.Thread(target=run, daemon=True)
    server.start()
    ready.wait(120)
    if errors:
        raise errors[0]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        server.join(10)
        thread.stop()


def speak(
    checkpoint: Path, out: Path, text: str, voice: str = "tiny", float32: bool = True
) -> np.ndarray:
    """`moshi-mlx speak TEXT` at temperature 0 (written to `out`): float samples at 24 kHz, or
    without `float32` the 16-bit file's int16 samples."""
    r = subprocess.run(
        ["moshi-mlx", "speak", text, str(out), "--checkpoint", str(checkpoint),
         "--voice", voice, "--temperature", "0", "-q", *(["--float"] if float32 else [])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return sf.read(str(out), dtype="float32" if float32 else "int16")[0]
