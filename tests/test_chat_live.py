"""The live loop end to end on real PortAudio devices without hardware.

A private PulseAudio daemon gives a virtual microphone (speech is played into it) and a virtual
speaker (recorded from its monitor); `moshi-mlx chat` runs in its own process with the tiny
random checkpoint, is stopped with Ctrl-C (SIGINT) and records its session. The offline mode
then replays the recorded user stream with the same seed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soxr
from moshi_app import (
    FRAME,
    REPO,
    align,
    block_snrs,
    cli,
    make_speech,
    read,
    speech_wav,
    tiny_checkpoint,
)
from pulse_audio import pulse, read_raw

__all__ = ["pulse", "speech_wav", "tiny_checkpoint"]  # fixtures used here

SEED = 1234


class _Lines:
    """Collects a process's stream line by line on a thread; `wait_for` a line with some text."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} within {timeout} s; got {''.join(self.lines)}")

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)


@dataclass
class Session:
    folder: Path
    speaker: np.ndarray  # what the virtual speaker received, 24 kHz
    returncode: int
    stdout: str
    stderr: str
    summary: dict


def _chat(
    pulse, folder: Path, speech: Path, args: list[str], speaker_raw: Path, stop=signal.SIGINT
) -> Session:
    recorder = pulse.record_speaker(speaker_raw)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moshi_mlx", "chat", *map(str, args), "--record", str(folder)],
            cwd=REPO,
            env=pulse.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = _Lines(proc.stdout), _Lines(proc.stderr)
        try:
            err.wait_for("[stats]", timeout=60)  # the input device delivers frames
            pulse.play_into_mic(speech).wait(timeout=30)
            time.sleep(1.0)
            proc.send_signal(stop)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        time.sleep(0.5)  # the speaker's last blocks
    finally:
        recorder.terminate()
        recorder.wait(timeout=10)
    stderr = err.text()
    summary = json.loads((folder / "session.json").read_text())
    return Session(folder, read_raw(speaker_raw), proc.returncode, out.text(), stderr, summary)


@pytest.fixture(scope="module")
def live(pulse, tiny_checkpoint, speech_wav, tmp_path_factory) -> Session:
    tmp = tmp_path_factory.mktemp("live")
    args = ["--checkpoint", tiny_checkpoint, "--seed", SEED, "--stats", "--max-lag", 1000]
    args += ["--echo-cancel", "off"]  # the raw microphone, compared bit for bit below
    return _chat(pulse, tmp / "rec", speech_wav, args, tmp / "speaker.raw")


def test_ctrl_c_ends_cleanly_with_a_summary_and_the_recording(live):
    assert live.returncode == 0, live.stderr
    assert "Traceback" not in live.stderr
    assert "listening on" in live.stderr and "session:" in live.stderr
    assert "[stats] step" in live.stderr and "real-time factor" in live.stderr
    for name in ("user.wav", "moshi.wav", "played.wav", "transcript.txt", "transcript.json"):
        assert (live.folder / name).is_file(), name
    transcript = json.loads((live.folder / "transcript.json").read_text())
    assert transcript["seed"] == SEED and transcript["steps"] == live.summary["steps"]
    assert "".join(live.stdout.split()) == "".join(transcript["text"].split())  # the live text
    assert live.summary["steps"] > 50  # about 5 s of conversation


def test_offline_replay_of_the_recorded_user_stream_reproduces_the_session(
    live, tiny_checkpoint, tmp_path
):
    out = tmp_path / "replay.wav"
    r = cli(
        "run", live.folder / "user.wav", out, "--checkpoint", tiny_checkpoint,
        "--seed", SEED, "--float", "-q",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    live_text = json.loads((live.folder / "transcript.json").read_text())
    replay = json.loads(out.with_suffix(".json").read_text())
    assert replay["tokens"] == live_text["tokens"]
    assert replay["pieces"] == [
        {k: v for k, v in p.items() if k != "wall"} for p in live_text["pieces"]
    ]
    moshi, again = read(live.folder / "moshi.wav"), read(out)
    assert len(again) == len(moshi) == live.summary["steps"] * FRAME
    np.testing.assert_array_equal(again, moshi)
    assert np.abs(moshi).max() > 0.01  # Moshi did say something
    # Without --float, `run` writes 16-bit samples: the same text, the audio to 16-bit rounding
    # (the recording is float32), so not bit for bit (as the README says).
    pcm16 = tmp_path / "replay16.wav"
    r = cli("run", live.folder / "user.wav", pcm16, "--checkpoint", tiny_checkpoint,
            "--seed", SEED, "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(pcm16.with_suffix(".json").read_text())["tokens"] == live_text["tokens"]
    again16 = read(pcm16)
    error = np.abs(again16 - np.clip(moshi, -1, 1)).max()
    print(f"replay without --float: max difference {error:.2e} (16-bit step {1 / 32768:.2e})")
    assert 0 < error <= 1 / 32768


def test_sigterm_ends_the_session_like_ctrl_c(pulse, tiny_checkpoint, tmp_path):
    """A closed terminal, `timeout` or a service manager: the recording is kept, the summary
    printed, the exit status 0, as with Ctrl-C."""
    speech = make_speech(tmp_path / "hello.wav", "Hello Moshi.")
    args = ["--checkpoint", tiny_checkpoint, "--seed", SEED, "--stats", "--max-lag", 1000]
    s = _chat(pulse, tmp_path / "rec", speech, args, tmp_path / "speaker.raw", signal.SIGTERM)
    assert s.returncode == 0, s.stderr
    assert "session:" in s.stderr and "recorded in" in s.stderr and "Traceback" not in s.stderr
    for name in ("user.wav", "moshi.wav", "played.wav", "transcript.txt", "transcript.json"):
        assert (s.folder / name).is_file(), name
    assert s.summary["steps"] > 10 and not list(s.folder.glob(".*"))  # no partial file


def test_the_speaker_played_what_the_session_says_it_played(live):
    played = read(live.folder / "played.wav")
    # the speaker's recording may start late (an idle source wakes up slowly): compare from
    # Moshi's first sound to the end
    voiced = played[np.flatnonzero(played)[0] :]
    assert len(voiced) > 3 * 24000, "under 3 s of Moshi's audio played"
    offset = align(voiced, live.speaker)
    snrs = block_snrs(voiced, live.speaker[offset:])
    print(f"speaker vs played: {len(snrs)} frames, SNR per frame {np.round(snrs, 1)}")
    # PulseAudio's loopback is bit-exact; the recorder may miss the last blocks it was sent
    assert len(snrs) >= len(voiced) // FRAME - 4
    assert (snrs[:-4] > 30).all()


def test_the_user_stream_is_what_the_microphone_heard(live, speech_wav):
    user, speech = read(live.folder / "user.wav"), read(speech_wav)
    offset = align(speech, user)
    snrs = block_snrs(speech, user[offset:])
    print(f"microphone vs speech: SNR per frame {np.round(snrs, 1)}")
    assert len(snrs) == len(speech) // FRAME
    assert (snrs[1:] > 30).all()  # (paplay may ramp the very start of its stream)


def test_callbacks_kept_real_time_pace_and_no_frame_was_lost(live):
    s = live.summary
    i, o = s["input"], s["output"]
    print(json.dumps({"input": i, "output": o, "step_time": s["step_time"]}, indent=1))
    for pace in (i, o):  # one 80 ms block per callback; a loaded machine may delay a few
        assert abs(pace["median_interval_ms"] - 80) < 0.5
        assert abs(pace["mean_interval_ms"] - 80) < 2.5
        assert pace["stalls"] <= 2 and pace["max_gap_ms"] < 1000
    assert i["status_errors"] == 0 and o["status_errors"] == 0
    # every captured frame went through the model, in order
    assert i["skipped_frames"] == 0 and i["overflow_blocks"] == 0
    assert i["callbacks"] == s["steps"] + s["frames_waiting_at_exit"]
    assert len(read(live.folder / "user.wav")) == s["steps"] * FRAME
    # every frame Moshi made reached the speaker
    assert o["latency_trims"] == 0 and s["played_blocks_lost"] == 0
    assert o["underruns"] <= 2  # (a loaded machine may stall a step now and then)
    moshi, played = read(live.folder / "moshi.wav"), read(live.folder / "played.wav")
    if o["underruns"] == 0:  # then the speaker got Moshi's frames back to back
        start = np.flatnonzero(np.abs(played) > 0)[0] - FRAME  # frame 0 is silence
        end = len(moshi) - int(o["buffered_frames"] * FRAME)
        np.testing.assert_array_equal(played[start : start + end], moshi[:end])
    assert s["step_time"]["real_time_factor"] < 1


def test_a_model_slower_than_real_time_skips_frames_says_so_and_stays_bounded(
    pulse, tiny_checkpoint, tmp_path
):
    folder = tmp_path / "slow"
    r = subprocess.run(
        [sys.executable, str(REPO / "tests" / "slow_chat.py"), str(tiny_checkpoint), str(folder)]
        + ["6", "0.12", str(SEED)],
        cwd=REPO,
        env=pulse.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    i, o = s["input"], s["output"]
    print(json.dumps(s, indent=1))
    assert s["step_time"]["real_time_factor"] > 1.3  # 120 ms of sleep per 80 ms frame
    assert i["skipped_frames"] > 0.2 * s["steps"]  # it caught up by skipping input
    assert "lagging: skipped" in r.stderr and "input frame(s)" in r.stderr
    assert i["max_queue_blocks"] <= 5 and i["overflow_blocks"] == 0  # bounded queues
    assert o["max_buffered_frames"] <= o["capacity_frames"]
    assert o["underruns"] > 0 and o["silence_ms"] > 0  # silence, not a growing delay
    assert i["callbacks"] == s["steps"] + i["skipped_frames"] + s["frames_waiting_at_exit"]
    assert_fades_around_silences(read(folder / "played.wav"))
    # what the model heard is what it recorded: the replay still matches
    out = tmp_path / "replay.wav"
    r = cli("run", folder / "user.wav", out, "--checkpoint", tiny_checkpoint, "--seed", SEED)
    assert r.returncode == 0, r.stderr
    assert (
        json.loads(out.with_suffix(".json").read_text())["tokens"]
        == json.loads((folder / "transcript.json").read_text())["tokens"]
    )


def assert_fades_around_silences(played: np.ndarray, fade: int = 120) -> None:
    """Each underrun ramps the last sample linearly to zero (no click) and fades audio back in."""
    silent = np.concatenate([[False], played == 0, [False]])
    starts = np.flatnonzero(~silent[:-1] & silent[1:])
    ends = np.flatnonzero(silent[:-1] & ~silent[1:])
    runs = [(a, b) for a, b in zip(starts, ends, strict=True) if b - a >= FRAME // 2]
    first_voiced = np.flatnonzero(played)[0]
    underruns = [(a, b) for a, b in runs if a > first_voiced and b < len(played)]
    assert underruns, "no silence in the middle of the session"
    for a, b in underruns:
        last = played[a - fade]  # the ramp's last value, zero, opens the silent run
        ramp = last * np.linspace(1.0, 0.0, fade + 1, dtype=np.float32)[1:]
        np.testing.assert_allclose(played[a - fade + 1 : a + 1], ramp, atol=1e-6)
        assert abs(played[b]) <= np.abs(played).max() / fade  # the fade-in starts near zero


def test_a_device_rate_other_than_24_khz_is_resampled(pulse, tiny_checkpoint, tmp_path):
    speech = make_speech(tmp_path / "hello.wav", "Hello Moshi.")
    args = ["--checkpoint", tiny_checkpoint, "--seed", SEED, "--stats", "--max-lag", 1000]
    args += ["--device-rate", 48000]  # (echo cancellation on: its resampled path runs too)
    live = _chat(pulse, tmp_path / "rec", speech, args, tmp_path / "speaker.raw")
    assert live.returncode == 0, live.stderr
    assert "48000 Hz, resampled" in live.stderr
    i, o = live.summary["input"], live.summary["output"]
    assert i["rate"] == o["rate"] == 48000 and i["skipped_frames"] == 0
    played = read(live.folder / "played.wav")  # at 48 kHz
    assert len(played) > 48000
    played24 = soxr.resample(played, 48000, 24000).astype(np.float32)
    voiced = played24[np.flatnonzero(np.abs(played24) > 1e-4)[0] :]
    offset = align(voiced, live.speaker)
    n = len(live.speaker[offset : offset + len(voiced)]) - 2 * FRAME  # the recorder's last blocks
    corr = np.corrcoef(voiced[:n], live.speaker[offset : offset + n])[0, 1]
    mic, said = read(live.folder / "mic.wav"), read(speech)
    k = align(said, mic)
    corr_mic = np.corrcoef(said, mic[k : k + len(said)])[0, 1]
    user = read(live.folder / "user.wav")  # after echo cancellation (no echo here)
    k = align(said, user)
    corr_user = np.corrcoef(said, user[k : k + len(said)])[0, 1]
    print(
        f"48 kHz devices: speaker correlation {corr:.4f}, microphone {corr_mic:.4f}, "
        f"after echo cancellation {corr_user:.4f}"
    )
    # PulseAudio's own resampler (48 kHz <-> 24 kHz sinks) is not soxr: loose thresholds
    assert corr > 0.9 and corr_mic > 0.95
