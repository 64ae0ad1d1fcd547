"""Echo cancellation in the live chat, on PulseAudio's virtual devices.

The test builds the echo path: what the chat plays on the virtual speaker comes back into the
virtual microphone through a simulated room (`echo_room.LiveRoom`: bulk delay, decaying random
room response, gain over the user's level, optional drift, a noise floor), mixed with espeak
user speech. The chat is the real `moshi-mlx chat` with the tiny checkpoint, its Moshi gated to
speak, fall silent and speak again (`echo_chat.py`), recording its session.

Measured on what Moshi heard (`user.wav`) against the raw microphone (`mic.wav`), on the
microphone's timeline the room kept:
- echo reduction over the frames where only Moshi is heard, from 2 s after it first spoke;
- the user's speech while Moshi is silent: level and band-energy distance to the clean speech;
- double talk (the user over Moshi): reported, not asserted.
The same setup with `--echo-cancel off` must show the echo.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from echo_room import (
    RATE,
    LiveRoom,
    Room,
    active,
    best_lag,
    erle_db,
    frame_power,
    level_db,
    spectral_distance,
    speech,
)
from moshi_app import REPO, read, tiny_checkpoint
from pulse_audio import pulse

__all__ = ["pulse", "tiny_checkpoint"]  # fixtures used here

SCHEDULE = "0-7,13-20"  # seconds when Moshi speaks
MOSHI_DB = -26.0
F = 480  # the measures' 20 ms frames


@dataclass
class Measured:
    erle: float  # echo only, after 2 s
    erle_first: float  # echo only, first 2 s
    alone_level: float  # the user alone vs the clean speech (dB)
    alone_distance: float
    alone_distance_mic: float  # the same distance for the raw microphone
    dt_level: float
    dt_distance: float
    dt_distance_mic: float
    summary: dict
    stderr: str


def _session(pulse, ckpt: Path, folder: Path, room: Room, mode: str) -> Measured:
    user_alone = speech("Hello Moshi, how are you today?", "en-gb+m1")
    user_over = speech("Wait, tell me more about that.", "en-gb+m1")
    live = LiveRoom(pulse, room)
    try:
        args = ["--checkpoint", ckpt, "--seed", 1, "--stats", "--max-lag", 1000]
        args += ["--echo-cancel", mode, "--record", folder, "--duration", 21, "-q"]
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "echo_chat.py"), SCHEDULE, str(MOSHI_DB)]
            + ["--", *map(str, args)],
            cwd=REPO,
            env=pulse.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            said = 0
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                if said == 0 and live.loud < -1.5 and live.position > 5 * RATE:
                    live.say(user_alone)  # Moshi fell silent 1.5 s ago
                    said = 1
                elif said == 1 and live.loud > 1.5:
                    live.say(user_over)  # Moshi speaks again
                    said = 2
                time.sleep(0.02)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        live.stop()
    assert proc.returncode == 0, err
    assert said == 2, f"the user did not get to speak twice ({err})"
    return _measure(live, folder, err)


def _measure(live: LiveRoom, folder: Path, stderr: str) -> Measured:
    mic, user = read(folder / "mic.wav"), read(folder / "user.wav")
    played_mic = live.track("mic")
    # where the chat's microphone recording starts on the room's timeline (bit-exact copy)
    probe = mic[RATE : 2 * RATE]
    corr = np.correlate(played_mic[: 30 * RATE], probe[:4800], mode="valid")
    start = int(np.argmax(np.abs(corr))) - RATE
    assert np.abs(played_mic[start + RATE : start + 2 * RATE] - probe).max() < 1e-4
    n = min(len(mic), len(played_mic) - start)
    mic, user = mic[:n], user[:n]
    echo, clean = live.track("echo")[start : start + n], live.track("user")[start : start + n]
    # AEC3 delays its output by about 10 ms: measure on its own timeline
    lag = best_lag(mic, user, RATE // 20)
    user = np.concatenate([user[lag:], np.zeros(lag, np.float32)])
    t = np.arange(n // F) * F / RATE
    echo_on = active(echo, 30, F)
    first = t[np.argmax(echo_on)]
    quiet_user = frame_power(clean, F) == 0
    only_echo = echo_on & quiet_user
    talking = active(clean, 30, F)
    alone = talking & (frame_power(echo, F) < 1e-9)
    double = talking & echo_on
    summary = json.loads((folder / "session.json").read_text())
    return Measured(
        erle=erle_db(mic, user, only_echo & (t >= first + 2), F),
        erle_first=erle_db(mic, user, only_echo & (t < first + 2), F),
        alone_level=level_db(user, clean, alone, F),
        alone_distance=spectral_distance(user, clean, alone),
        alone_distance_mic=spectral_distance(mic, clean, alone),
        dt_level=level_db(user, clean, double, F),
        dt_distance=spectral_distance(user, clean, double),
        dt_distance_mic=spectral_distance(mic, clean, double),
        summary=summary,
        stderr=stderr,
    )


ROOM = Room(delay=0.12, gain_db=3.0, seed=3)


@pytest.fixture(scope="module")
def cancelled(pulse, tiny_checkpoint, tmp_path_factory) -> Measured:
    return _session(pulse, tiny_checkpoint, tmp_path_factory.mktemp("aec") / "on", ROOM, "on")


def test_echo_is_removed_where_only_moshi_speaks(cancelled):
    m = cancelled
    print(m)
    assert m.erle >= 30
