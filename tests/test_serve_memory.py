"""A long chat over the socket in flat memory: `moshi-mlx serve` (a subprocess) with the tiny
checkpoint, a protocol client as Kyutai's streaming Ogg Opus as fast as the server answers (not
in real time), the server's resident memory read from /proc while it runs.

An hour is 45 000 frames of 80 ms; the test streams an hour's frames or as many as fit in
`BUDGET_S` (the tiny model steps in a few ms on an idle machine, tens of ms on a loaded one). The
checkpoint's contexts are shortened (Moshi's `context` in config.json, as Kyutai's configs carry
it, and Mimi's transformers' in the tiny checkpoint's mimi_config.json), so their ring caches
wrap several times within the run: what stays bounded in an hour is bounded once the rings are
full.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import sphn
from moshi_app import FRAME, RATE, tiny_checkpoint
from test_serve_chat import _free_port

__all__ = ["tiny_checkpoint"]  # fixtures used here

HOUR_FRAMES = 45_000  # one hour of 80 ms frames
# seconds of streaming at most (MOSHI_MLX_MEMORY_SECONDS=1200 streams the whole hour here)
BUDGET_S = float(os.environ.get("MOSHI_MLX_MEMORY_SECONDS", 170))
CONTEXT = 100  # steps of the language model's ring cache (Moshi's: 3000)
MIMI_CONTEXT = 50  # positions of Mimi's transformers' rings, at 25 Hz (Mimi's: 250)
WARMUP_FRAMES = 2 * CONTEXT  # the rings are full, every graph shape compiled
MIN_WRAPS = 4  # contexts streamed after the warm-up, at least
IN_FLIGHT = 2  # frames sent and not yet answered (the server's lag rule allows 3)
SAMPLE_EVERY = 50  # frames between two readings of the server's memory
MAX_GROWTH_MB = 20.0


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


@pytest.fixture(scope="module")
def short_context(tiny_checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("short_context") / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "context": CONTEXT}))
    mimi = json.loads((folder / "mimi_config.json").read_text())
    mimi["transformer"]["context"] = MIMI_CONTEXT
    (folder / "mimi_config.json").write_text(json.dumps(mimi))
    return folder


async def _stream(base: str, pid: int) -> tuple[int, list[tuple[int, float]]]:
    """Stream noise-like audio until an hour's frames are sent or the budget is spent; returns
    the frames sent and (frame, RSS MB) readings."""
    pcm = (0.1 * np.random.default_rng(0).standard_normal(50 * FRAME)).astype(np.float32)
    writer = sphn.OpusStreamWriter(RATE)
    answered, readings = 0, []
    answer = asyncio.Event()
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://{base}/api/chat") as ws:
        assert await ws.receive_bytes(timeout=60) == b"\x00"

        async def receive():
            nonlocal answered
            async for msg in ws:
                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                assert msg.data[:1] != b"\x05", msg.data[1:].decode()
                if msg.data[:1] == b"\x01":  # one Ogg page per frame
                    answered += 1
                    answer.set()

        task = asyncio.create_task(receive())
        deadline = time.monotonic() + BUDGET_S
        sent = 0
        while sent < HOUR_FRAMES and time.monotonic() < deadline:
            while sent - answered > IN_FLIGHT:
                answer.clear()
                await asyncio.wait_for(answer.wait(), 30)
            start = (sent % 50) * FRAME
            page = writer.append_pcm(pcm[start : start + FRAME])
            if page:
                await ws.send_bytes(b"\x01" + page)
            sent += 1
            if sent % SAMPLE_EVERY == 0:
                readings.append((sent, rss_mb(pid)))
        await ws.close()
        await asyncio.wait_for(task, 30)
    return sent, readings


def test_a_long_chat_over_the_socket_stays_in_flat_memory(short_context, tmp_path):
    port = _free_port()
    log_path = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "moshi_mlx", "serve", "--checkpoint", str(short_context),
           "--port", str(port)]  # fmt: skip
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "serving on" not in log_path.read_text():
                assert server.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
            started = time.monotonic()
            sent, readings = asyncio.run(_stream(f"127.0.0.1:{port}", server.pid))
            seconds = time.monotonic() - started
            deadline = time.monotonic() + 20
            while "chat 1: closed" not in log_path.read_text():
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        finally:
            server.terminate()
            server.wait(30)
    text = log_path.read_text()
    closed = re.search(r"chat 1: closed after .*, (\d+) steps, (\d+) input frames skipped", text)
    steps, skipped = int(closed.group(1)), int(closed.group(2))
    after = [(n, mb) for n, mb in readings if n >= WARMUP_FRAMES]
    frames, mbs = np.array([n for n, _ in after]), np.array([mb for _, mb in after])
    growth = float(mbs.max() - mbs[0])
    hourly = float(np.polyfit(frames, mbs, 1)[0] * HOUR_FRAMES)  # the trend, over an hour
    print(
        f"{sent} frames ({sent * 0.08 / 60:.1f} min of audio) in {seconds:.0f} s "
        f"({1000 * seconds / sent:.1f} ms a frame), {sent // CONTEXT} contexts of {CONTEXT}; "
        f"server RSS {readings[0][1]:.1f} MB at frame {readings[0][0]}, {mbs[0]:.1f} MB after "
        f"the warm-up, at most {mbs.max():.1f} MB, {mbs[-1]:.1f} MB at the end (trend over an "
        f"hour {hourly:+.1f} MB)"
    )
    print("RSS (frame, MB):", [(n, round(mb, 2)) for n, mb in readings[::20]])
    assert skipped == 0 and sent - IN_FLIGHT - 1 <= steps <= sent, text
    assert sent >= WARMUP_FRAMES + MIN_WRAPS * CONTEXT, f"only {sent} frames in {BUDGET_S} s"
    assert growth < MAX_GROWTH_MB
    assert abs(hourly) < MAX_GROWTH_MB
