"""`moshi-mlx serve` speaking Kyutai's chat protocol, tested over a real socket with a protocol
client as Kyutai's (aiohttp + sphn's Ogg Opus): the server runs as a subprocess with the tiny
checkpoint; what it says equals `moshi-mlx run` on what it heard (its --record)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest
import soundfile as sf
import sphn
from moshi_app import speech_wav, tiny_checkpoint

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

__all__ = ["speech_wav", "tiny_checkpoint"]  # fixtures used here

TEXT, AUDIO, ERROR = 2, 1, 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_checkpoint):
    """A running `moshi-mlx serve` (tiny Moshi, greedy, --record, --api-key)."""
    folder = tmp_path_factory.mktemp("serve")
    port = _free_port()
    log = open(folder / "serve.log", "w")
    cmd = [sys.executable, "-m", "moshi_mlx", "serve", "--checkpoint", str(tiny_checkpoint),
           "--port", str(port), "--temperature", "0", "--record", str(folder / "rec"),
           "--api-key", "secret"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "serving on" not in (folder / "serve.log").read_text():
        assert proc.poll() is None, (folder / "serve.log").read_text()
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)
    yield f"127.0.0.1:{port}", folder
    proc.terminate()
    assert proc.wait(30) == 0, (folder / "serve.log").read_text()
    log.close()


async def _talk(base: str, pcm: np.ndarray, key: str = "secret") -> tuple[str, np.ndarray]:
    """Kyutai's client, in short: handshake, Opus frames in, text and Opus out."""
    writer, reader = sphn.OpusStreamWriter(SAMPLE_RATE), sphn.OpusStreamReader(SAMPLE_RATE)
    text, audio = [], []
    url = f"ws://{base}/api/chat?auth_id={key}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        first = await ws.receive_bytes(timeout=60)
        assert first == b"\x00"

        async def receive():
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.BINARY:
                    break
                kind, payload = msg.data[0], msg.data[1:]
                if kind == TEXT:
                    text.append(payload.decode())
                elif kind == AUDIO:
                    audio.append(reader.append_bytes(payload))
                elif kind == ERROR:
                    raise AssertionError(payload.decode())

        task = asyncio.create_task(receive())
        for start in range(0, len(pcm), FRAME_SIZE):
            page = writer.append_pcm(pcm[start : start + FRAME_SIZE])
            if page:
                await ws.send_bytes(b"\x01" + page)
            await asyncio.sleep(0.02)
        await asyncio.sleep(3.0)  # let the last frames come back
        await ws.close()
        await asyncio.wait_for(task, 10)
    out = np.concatenate([a for a in audio if a.size]) if audio else np.zeros(0, np.float32)
    return "".join(text), out


def test_the_chat_says_what_run_says_on_what_it_heard(
    server, speech_wav, tiny_checkpoint, tmp_path
):
    base, folder = server
    pcm, rate = sf.read(speech_wav, dtype="float32")
    assert rate == SAMPLE_RATE
    pcm = pcm[: 4 * SAMPLE_RATE]
    text, audio = asyncio.run(_talk(base, pcm))
    assert audio.size > SAMPLE_RATE and np.abs(audio).max() > 0
    sessions = sorted((folder / "rec").iterdir())
    assert sessions, "no recording"
    deadline = time.monotonic() + 20  # the session ends after the client has gone
    while not (sessions[-1] / "session.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    heard = sessions[-1] / "user.wav"
    assert heard.is_file()
    out = tmp_path / "replay.wav"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "moshi_mlx",
            "run",
            str(heard),
            str(out),
            "--checkpoint",
            str(tiny_checkpoint),
            "--temperature",
            "0",
            "--float",
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    replayed = json.loads((tmp_path / "replay.json").read_text())["text"]
    assert text.strip() == replayed.strip() and replayed.strip()  # (a first "▁" is a space)
    sent, _ = sf.read(sessions[-1] / "moshi.wav", dtype="float32")  # before Opus
    again, _ = sf.read(out, dtype="float32")
    n = min(len(sent), len(again))
    assert n >= SAMPLE_RATE  # (under load the lag rule skips frames: fewer come back)
    np.testing.assert_allclose(sent[:n], again[:n], atol=1e-5)


def test_a_second_chat_is_told_busy_at_once_and_a_wrong_key_is_refused(server, speech_wav):
    base, _ = server

    async def both():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://{base}/api/chat?auth_id=secret") as first:
                assert await first.receive_bytes(timeout=60) == b"\x00"
                started = time.monotonic()
                async with http.ws_connect(f"ws://{base}/api/chat?auth_id=secret") as second:
                    msg = await second.receive(timeout=10)
                    assert msg.type == aiohttp.WSMsgType.BINARY and msg.data[:1] == b"\x05"
                    assert "busy" in msg.data[1:].decode()
                assert time.monotonic() - started < 5
            async with http.get(f"http://{base}/api/info") as r:
                assert r.status == 401
            async with http.get(f"http://{base}/api/info?auth_id=secret") as r:
                assert r.status == 200 and (await r.json())["chat"] is not None

    asyncio.run(both())
