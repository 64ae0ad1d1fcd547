"""`moshi-mlx chat`: the live loop between the microphone, the pipeline and the speaker.

One thread (the caller's) owns the pipeline and every MLX object; the audio callbacks only move
NumPy blocks (`streams`). Per 80 ms input frame: Mimi encode -> Moshi step -> Mimi decode,
and Moshi's frame goes to the speaker's jitter buffer. When the model falls behind real time and
more than `max_lag_frames` input frames wait, the oldest are skipped (and reported) so latency
and queues stay bounded. The session has no step limit; Ctrl-C ends it cleanly (a second Ctrl-C
aborts at once), and so does SIGTERM; `--record DIR` saves the session (see `recording`).
The console (`console`), the signals (`signals`) and the numbers (`summary`) have their modules.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from mimi_mlx.constants import FRAME_SECONDS

from ..formats.transcript import Transcript
from ..jobs.pipeline import Pipeline
from .audio_io import AudioIO
from .console import Console
from .recording import Recorder, finish_recording
from .signals import StopOnSignals
from .summary import StepTimes, session_summary, stats_line, summary_text

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
        with StopOnSignals() as stop, audio:
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
        self.console = Console(options.show_text, whole_lines)
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
        waiting = self.audio.pull()  # (runs the echo canceller)
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
        self.pipeline.submit(frame.heard)
        self._submit_times.append(time.perf_counter() - t)
        if self.recorder is not None:
            self.recorder.user.write(frame.heard)
            self.recorder.mic.write(frame.mic)

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
            self.console.notice(stats_line(self.times, self.audio))
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
        summary = session_summary(self.audio, self.times, elapsed, self.transcript)
        if self.recorder is not None:
            self.recorder.add_played(self.audio.drain_played())  # up to the streams' very end
            summary["recording"] = finish_recording(self.recorder, self.transcript, summary)
        self.pipeline.reset()  # nothing carries over to the next session
        if error is None:
            self.console.notice(summary_text(summary))
        return summary


def _check_devices(audio: AudioIO, elapsed: float) -> None:
    if audio.microphone.capture.pace.count == 0 and elapsed > NO_INPUT_TIMEOUT:
        raise SessionError(
            f"no audio from the input device {audio.input_device.name!r} in {NO_INPUT_TIMEOUT:g} s"
        )
    for stream, device in (
        (audio.microphone.capture.stream, audio.input_device),
        (audio.speaker.player.stream, audio.output_device),
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
