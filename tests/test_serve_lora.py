"""`moshi-mlx serve --lora FILE`: a fine-tune served over Kyutai's chat protocol (a protocol client
as Kyutai's) says what `moshi-mlx run` with the fine-tune folder says on what it heard."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from moshi_app import speech_wav
from test_serve_chat import _free_port, _talk

from mimi_mlx.constants import SAMPLE_RATE
from moshi_mlx.testing.tiny_lora import make_tiny_lora_checkpoint

__all__ = ["speech_wav"]  # fixtures used here


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory):
    """(the fine-tune folder naming its adapter, the bare base, moshi-finetune's adapter)."""
    root = tmp_path_factory.mktemp("serve_lora")
    folder = make_tiny_lora_checkpoint(root / "ft", seed=2)
    base = shutil.copytree(folder, root / "base")
    config = json.loads((base / "config.json").read_text())
    bare = {k: v for k, v in config.items() if not k.startswith("lora")}
    (base / "config.json").write_text(json.dumps(bare))
    return folder, base, folder / "consolidated" / "lora.safetensors"


def test_served_fine_tune_says_what_run_says(fine_tune, speech_wav, tmp_path):
    folder, base, adapter = fine_tune
    port = _free_port()
    log_path = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "moshi_mlx", "serve", "--checkpoint", str(base),
           "--lora", str(adapter), "--port", str(port), "--temperature", "0",
           "--record", str(tmp_path / "rec"), "--api-key", "secret"]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "serving on" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
            pcm, _ = sf.read(speech_wav, dtype="float32")
            text, audio = asyncio.run(_talk(f"127.0.0.1:{port}", pcm[: 3 * SAMPLE_RATE]))
            (session,) = sorted((tmp_path / "rec").iterdir())
            deadline = time.monotonic() + 20  # the session ends after the client has gone
            while not (session / "session.json").is_file() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            proc.terminate()
            assert proc.wait(30) == 0, log_path.read_text()
    info = json.loads((session / "session.json").read_text())
    assert info["lora"] == str(adapter.resolve())
    out = tmp_path / "replay.wav"
    done = subprocess.run(
        [sys.executable, "-m", "moshi_mlx", "run", str(session / "user.wav"), str(out),
         "--checkpoint", str(folder), "--temperature", "0", "--float"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    replayed = json.loads(out.with_suffix(".json").read_text())["text"]
    assert text.strip() == replayed.strip() and replayed.strip()
    sent, _ = sf.read(session / "moshi.wav", dtype="float32")  # before Opus
    again, _ = sf.read(out, dtype="float32")
    n = min(len(sent), len(again))
    assert n >= SAMPLE_RATE and audio.size > SAMPLE_RATE
    np.testing.assert_allclose(sent[:n], again[:n], atol=1e-5)
