"""A live chat's numbers: step times, the `--stats` line, the summary and its text."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from mimi_mlx.constants import FRAME_SECONDS

from ..formats.transcript import Transcript
from .audio_io import AudioIO


class StepTimes:
    """Step durations: totals for the summary, the last second for `--stats`."""

    def __init__(self):
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.recent: deque[float] = deque(maxlen=2000)  # for percentiles, bounded

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)
        self.recent.append(seconds)

    def to_dict(self) -> dict:
        recent = np.array(self.recent) if self.recent else np.zeros(1)
        mean = self.total / self.count if self.count else 0.0
        return {
            "steps": self.count,
            "mean_ms": round(1000 * mean, 2),
            "p95_ms": round(1000 * float(np.percentile(recent, 95)), 2),
            "max_ms": round(1000 * self.max, 2),
            "real_time_factor": round(mean / FRAME_SECONDS, 3),
        }


def stats_line(times: StepTimes, audio: AudioIO) -> str:
    recent = list(times.recent)[-13:]
    step = 1000 * sum(recent) / max(1, len(recent))
    s = audio.stats()
    return (
        f"[stats] step {step:.1f} ms (RTF {step / 1000 / FRAME_SECONDS:.2f}) | "
        f"input queue {s['input']['queue_blocks']} blocks | "
        f"output buffer {s['output']['buffered_frames']:.1f} frames | "
        f"skipped {s['input']['skipped_frames']} frames | "
        f"underruns {s['output']['underruns']}"
    ) + ("" if s["echo_cancel"] is None else f" | {echo_text(s['echo_cancel'])}")


def echo_text(echo: dict) -> str:
    delay = "?" if echo["delay_ms"] is None else f"{echo['delay_ms']:.0f} ms"
    reduction = "?" if echo["reduction_db"] is None else f"{echo['reduction_db']:.0f} dB"
    return f"echo delay {delay}, reduced by {reduction}"


def session_summary(
    audio: AudioIO, times: StepTimes, elapsed: float, transcript: Transcript
) -> dict:
    """The session's facts and counters (`frames_waiting_at_exit`: after a last `pull`)."""
    return {
        **transcript.info,
        "duration_s": round(elapsed, 3),
        "steps": times.count,
        "step_time": times.to_dict(),
        "frames_waiting_at_exit": audio.pull(),
        **audio.stats(),
        "text": transcript.text,
    }


def summary_text(s: dict) -> str:
    t, i, o = s["step_time"], s["input"], s["output"]
    lines = [
        f"session: {s['duration_s']:.1f} s, {s['steps']} steps, seed {s['seed']}",
        f"step time: mean {t['mean_ms']:.1f} ms, p95 {t['p95_ms']:.1f} ms, max {t['max_ms']:.1f}"
        f" ms (real-time factor {t['real_time_factor']:.2f})",
        f"input: {i['callbacks']} blocks, one every {i['mean_interval_ms']:.1f} ms; "
        f"{i['skipped_frames']} frames skipped to catch up, {i['overflow_blocks']} lost to a "
        "full queue",
        f"output: {o['underruns']} underruns ({o['silence_ms']} ms of silence), "
        f"{o['latency_trims']} latency cuts ({o['trimmed_ms']} ms skipped), "
        f"max buffer {o['max_buffered_frames']:.1f} frames",
    ]
    echo = s.get("echo_cancel")
    if echo is not None:
        lines.append(
            f"echo cancellation: {echo_text(echo)}; {echo['resets']} resets, "
            f"{echo['cpu_ms_per_frame']:.1f} ms per frame"
        )
    if "recording" in s:
        lines.append(f"recorded in {Path(s['recording']['user.wav']).parent}")
    return "\n".join(lines)
