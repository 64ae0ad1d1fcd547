"""`moshi-mlx chat`: the live loop between the microphone, the pipeline and the speaker.

One thread (the caller's) owns the pipeline and every MLX object; the audio callbacks only move
NumPy blocks (see `audio_io`). Per 80 ms input frame: Mimi encode -> Moshi step -> Mimi decode,
and Moshi's frame goes to the speaker's jitter buffer. When the model falls behind real time and
more than `max_lag_frames` input frames wait, the oldest are skipped (and reported) so latency
and queues stay bounded. The session has no step limit; Ctrl-C ends it cleanly (a second Ctrl-C
aborts at once), and so does SIGTERM; `--record DIR` saves the session (see `recording`).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_mlx.constants import FRAME_SECONDS

from ..formats.transcript import Transcript
from ..jobs.pipeline import Pipeline
from .audio_io import AudioIO
from .recording import Recorder, finish_recording

NO_INPUT_TIMEOUT = 5.0  # seconds without a single input block before giving up
LAG_REPORT_INTERVAL = 2.0  # seconds between two "skipped frames" notices
POLL = 0.002  # seconds to sleep while no input frame is complete


@dataclass
class ChatOptions:
    """How a live session runs.

    Attributes:
        record: folder for the recording (None: no recording).
        stats: print step time, real-time factor, queue depths and skipped frames every second.
        duration: stop after this many seconds (None: until Ctrl-C).
        max_lag_frames: input frames allowed to wait before the oldest are skipped.
        show_text: print Moshi's words as they come.
    """

    record: Path | None = None
    stats: bool = False
    duration: float | None = None
    max_lag_frames: int = 3
    show_text: bool = True


class SessionError(RuntimeError):
    """The live session could not go on (a device stopped or went silent)."""


class _Console:
    """The transcript on stdout, notices and statistics on stderr, never inside a line of text.

    Word by word on a terminal; in whole lines (ended by a pause or at `WIDTH` characters) when
    stdout is piped or statistics come every second, so they fall between lines, not words.
    """

    WIDTH = 80
    PAUSE_STEPS = 13  # about a second without a word ends the line

    def __init__(self, show_text: bool, whole_lines: bool):
        self.show_text, self.whole_lines = show_text, whole_lines
        self.line = ""
        self.last_step = 0

    def piece(self, text: str, step: int) -> None:
        if not self.show_text:
            return
        self.tick(step)
        if self.line and len(self.line) + len(text) > self.WIDTH and text[:1].isspace():
            self.end_line()
        text = text if self.line else text.lstrip()
        self.line += text
        self.last_step = step
        if not self.whole_lines:
            sys.stdout.write(text)
            sys.stdout.flush()

    def tick(self, step: int) -> None:
        """Called every step: a pause ends the line."""
        if self.line and step - self.last_step > self.PAUSE_STEPS:
            self.end_line()

    def end_line(self) -> None:
        if self.line:
            sys.stdout.write((self.line if self.whole_lines else "") + "\n")
            sys.stdout.flush()
            self.line = ""

    def notice(self, text: str) -> None:
        shown = self.line and not self.whole_lines  # on its own line, then the words so far
        if shown:
            sys.stdout.write("\n")
            sys.stdout.flush()
        print(text, file=sys.stderr, flush=True)
        if shown:
            sys.stdout.write(self.line)
            sys.stdout.flush()


class _StopOnSigint:
    """First Ctrl-C (or SIGTERM) asks the loop to stop (it finishes cleanly, the recording kept
    and the summary printed); a second one aborts."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> _StopOnSigint:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


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


def run_chat(
    pipeline: Pipeline, audio: AudioIO, options: ChatOptions, info: dict | None = None
) -> dict:
    """Run a live session until Ctrl-C (or `options.duration`); returns its summary.

    Args:
        pipeline: the per-frame pipeline, built on this thread; a fresh session starts here.
        audio: the devices (not started yet); closed on return.
        options: see `ChatOptions`.
        info: facts saved with the recording (checkpoint, ...).

    Raises:
        SessionError: a device stopped delivering audio.
    """
    session = _Session(pipeline, audio, options, info)
    error: BaseException | None = None
    try:
        with _StopOnSigint() as stop, audio:
            session.console.notice(_ready_line(pipeline, audio))
            while not stop.requested and not session.over():
                session.poll()
            while pipeline.pending:  # what the model already heard is answered and recorded
                session.collect()
    except BaseException as e:
        error = e
        raise
    finally:
        summary = session.finish(error)
    return summary


class _Session:
    """The state of one live session and the steps of its loop (all on the caller's thread).

    Up to `AHEAD` frames are submitted before the oldest is collected: when input is waiting,
    building the next frame's graph overlaps the current frame's computation.
    """

    AHEAD = 2

    def __init__(self, pipeline: Pipeline, audio: AudioIO, options: ChatOptions, info):
        self.pipeline, self.audio, self.options = pipeline, audio, options
        whole_lines = options.stats or not sys.stdout.isatty()
        self.console = _Console(options.show_text, whole_lines)
        pipeline.reset()
        pipeline.prefill_prompt()  # prompts (PersonaPlex) before the devices start
        self.transcript = Transcript(
            pipeline.audio_lag,
            {**(info or {}), "seed": pipeline.seed, "sampling": pipeline.sampling.to_dict()},
        )
        self.recorder = None
        if options.record is not None:
            self.recorder = Recorder(Path(options.record), audio.output_device.rate)
        self.times = StepTimes()
        self.started = time.perf_counter()
        self.last_stats = self.last_check = self.last_lag_report = self.started
        self.lag_pending = 0  # frames skipped since the last notice
        self._submit_times: deque[float] = deque()  # seconds spent submitting pending frames
        self.echo_resets_seen = 0

    def over(self) -> bool:
        duration = self.options.duration
        return duration is not None and time.perf_counter() - self.started >= duration

    def poll(self) -> None:
        """One turn of the loop: submit a waiting frame, or collect a result, or wait."""
        now = time.perf_counter()
        if now - self.last_check >= 1.0:
            _check_devices(self.audio, now - self.started)
            self.last_check = now
        if self.recorder is not None:
            self.recorder.add_played(self.audio.drain_played())
        waiting = self.audio.frames_waiting()
        if waiting > self.options.max_lag_frames:
            self.lag_pending += self.audio.drop_frames(keep=1)
        if self.lag_pending and now - self.last_lag_report >= LAG_REPORT_INTERVAL:
            self._report_lag(now)
        if self.audio.echo is not None and len(self.audio.echo.resets) > self.echo_resets_seen:
            if not self.echo_resets_seen:  # once; the summary counts them all
                self.console.notice(
                    f"echo canceller reset: {self.audio.echo.resets[0]} (a device change or a "
                    "stall); it adapts again within a second or two"
                )
            self.echo_resets_seen = len(self.audio.echo.resets)
        if waiting and self.pipeline.pending < self.AHEAD:
            self.submit()
        elif self.pipeline.pending:
            self.collect()
        else:
            time.sleep(POLL)

    def submit(self) -> None:
        frame = self.audio.read_frame()
        t = time.perf_counter()
        self.pipeline.submit(frame)
        self._submit_times.append(time.perf_counter() - t)
        if self.recorder is not None:
            self.recorder.user.write(frame)
            self.recorder.mic.write(self.audio.last_mic)

    def collect(self) -> None:
        t = time.perf_counter()
        result = self.pipeline.collect()
        done = time.perf_counter()
        self.times.add(done - t + self._submit_times.popleft())
        self.audio.play(result.audio)
        self.transcript.add(result, done - self.started)
        if result.piece is not None:
            self.console.piece(result.piece, result.step)
        else:
            self.console.tick(result.step)
        if self.recorder is not None:
            self.recorder.moshi.write(result.audio)
        if self.options.stats and done - self.last_stats >= 1.0:
            self.console.notice(_stats_line(self.times, self.audio))
            self.last_stats = done

    def _report_lag(self, now: float) -> None:
        self.console.notice(
            f"lagging: skipped {self.lag_pending} input frame(s) "
            f"({self.lag_pending * FRAME_SECONDS * 1000:.0f} ms): the model runs slower than "
            f"real time (step {self.times.to_dict()['p95_ms']:.0f} ms, p95)"
        )
        self.lag_pending, self.last_lag_report = 0, now

    def finish(self, error: BaseException | None) -> dict:
        """Close the recording, reset the pipeline, print the summary; returns the summary."""
        elapsed = time.perf_counter() - self.started
        self.console.end_line()
        summary = _summary(self.audio, self.times, elapsed, self.transcript)
        if self.recorder is not None:
            self.recorder.add_played(self.audio.drain_played())  # up to the streams' very end
            summary["recording"] = finish_recording(self.recorder, self.transcript, summary)
        self.pipeline.reset()  # nothing carries over to the next session
        if error is None:
            self.console.notice(_summary_text(summary))
        return summary


def _check_devices(audio: AudioIO, elapsed: float) -> None:
    if audio.capture.pace.count == 0 and elapsed > NO_INPUT_TIMEOUT:
        raise SessionError(
            f"no audio from the input device {audio.input_device.name!r} in {NO_INPUT_TIMEOUT:g} s"
        )
    for stream, device in (
        (audio.capture.stream, audio.input_device),
        (audio.player.stream, audio.output_device),
    ):
        if not stream.active:
            raise SessionError(f"the {device.kind} device {device.name!r} stopped")


def _ready_line(pipeline: Pipeline, audio: AudioIO) -> str:
    def device(d) -> str:
        return f"{d.name!r}" + (f" at {d.rate} Hz, resampled" if d.resampled else "")

    return (
        f"listening on {device(audio.input_device)}, speaking on {device(audio.output_device)} "
        f"(seed {pipeline.seed}); Ctrl-C to stop"
    )


def _stats_line(times: StepTimes, audio: AudioIO) -> str:
    recent = list(times.recent)[-13:]
    step = 1000 * sum(recent) / max(1, len(recent))
    s = audio.stats()
    return (
        f"[stats] step {step:.1f} ms (RTF {step / 1000 / FRAME_SECONDS:.2f}) | "
        f"input queue {s['input']['queue_blocks']} blocks | "
        f"output buffer {s['output']['buffered_frames']:.1f} frames | "
        f"skipped {s['input']['skipped_frames']} frames | "
        f"underruns {s['output']['underruns']}"
    ) + ("" if s["echo_cancel"] is None else f" | {_echo_text(s['echo_cancel'])}")


def _echo_text(echo: dict) -> str:
    delay = "?" if echo["delay_ms"] is None else f"{echo['delay_ms']:.0f} ms"
    reduction = "?" if echo["reduction_db"] is None else f"{echo['reduction_db']:.0f} dB"
    return f"echo delay {delay}, reduced by {reduction}"


def _summary(audio: AudioIO, times: StepTimes, elapsed: float, transcript: Transcript) -> dict:
    return {
        **transcript.info,
        "duration_s": round(elapsed, 3),
        "steps": times.count,
        "step_time": times.to_dict(),
        "frames_waiting_at_exit": audio.frames_waiting(),
        **audio.stats(),
        "text": transcript.text,
    }


def _summary_text(s: dict) -> str:
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
            f"echo cancellation: {_echo_text(echo)}; {echo['resets']} resets, "
            f"{echo['cpu_ms_per_frame']:.1f} ms per frame"
        )
    if "recording" in s:
        lines.append(f"recorded in {Path(s['recording']['user.wav']).parent}")
    return "\n".join(lines)
