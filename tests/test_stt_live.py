"""`moshi-mlx transcribe` on the microphone, on PulseAudio's virtual devices (no hardware).

Speech is played into the virtual microphone while the command runs in its own process with the
tiny STT checkpoint; Ctrl-C (SIGINT) ends it. The words it printed and saved must be the file
mode's on the same audio (what it heard, saved with --save-audio), token for token.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from moshi_app import REPO, cli, read, speech_wav
from pulse_audio import pulse
from test_chat_live import _Lines

__all__ = ["pulse", "speech_wav"]  # fixtures used here


@pytest.fixture(scope="module")
def stt(tmp_path_factory):
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_stt") / "ckpt", kind="stt")


def test_live_words_are_the_file_modes_on_the_same_audio(pulse, stt, speech_wav, tmp_path):
    heard, live_json = tmp_path / "heard.wav", tmp_path / "live.json"
    args = ["--checkpoint", stt, "--vad", "--save-audio", heard, "-o", live_json]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moshi_mlx", "transcribe", *map(str, args), "--max-lag", "2000"],
        cwd=REPO,
        env=pulse.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = _Lines(proc.stdout), _Lines(proc.stderr)
    try:
        err.wait_for("listening on", timeout=60)
        time.sleep(0.5)
        pulse.play_into_mic(speech_wav).wait(timeout=30)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.text()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "session:" in stderr and "0 frames skipped" in stderr
    live = json.loads(live_json.read_text())
    audio = read(heard)
    assert len(audio) % 1920 == 0 and len(audio) / 24000 == pytest.approx(live["duration"])
    assert np.abs(audio).max() > 0.05  # the speech reached the microphone

    file_json = tmp_path / "file.json"
    r = cli("transcribe", heard, "--checkpoint", stt, "--vad", "-o", file_json)
    assert r.returncode == 0, r.stderr
    again = json.loads(file_json.read_text())
    assert live["tokens"] == again["tokens"]
    assert live["words"] == again["words"] and live["words"]
    assert live["end_of_turn"] == again["end_of_turn"] and live["end_of_turn"]
    # piped: plain lines (no carriage returns), the words in order
    printed = out.text()
    assert "\r" not in printed
    words = [w for line in printed.splitlines() for w in line.split() if w != "[end"]
    assert " ".join(words).replace("of turn]", "").split() == [w["word"] for w in live["words"]]
