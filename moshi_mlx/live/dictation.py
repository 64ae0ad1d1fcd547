"""`moshi-mlx transcribe` with no file: words from the microphone as they are recognised.

One thread (the caller's) owns the `SttStream` and every MLX object; the microphone's callback
only queues NumPy blocks. The same lag rule as the chat: when more than `max_lag_frames` frames
wait (the model is slower than real time), the oldest are skipped and reported, so the delay
stays bounded. Ctrl-C ends the session: the stream's tail of silence is fed so the last words
come out (a second Ctrl-C aborts).

On a terminal the current line is rewritten in place as words (and the word being written)
come; a new line starts after a pause, an end of turn (`--vad`) or a full line. When stdout is
not a terminal, each finished line is printed once.
"""

from __future__ import annotations

import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from mimi_mlx.constants import FRAME_SECONDS, SAMPLE_RATE
from mimi_mlx.io.audio import AudioWriter

from ..formats.words import LAST_WORD_SECONDS
from ..jobs.stt import SttStep, SttStream
from ..jobs.transcribe import Transcription
from .chat import LAG_REPORT_INTERVAL, NO_INPUT_TIMEOUT, POLL, SessionError
from .microphone import Microphone
from .signals import StopOnSignals

PAUSE_SECONDS = 1.5  # silence after a word's end that ends a line
LINE_WIDTH = 80  # when stdout is not a terminal
END_OF_TURN = "[end of turn]"


@dataclass
class DictationOptions:
    """How a live session runs.

    Attributes:
        duration: stop after this many seconds (None: until Ctrl-C).
        max_lag_frames: input frames allowed to wait before the oldest are skipped.
        save_audio: write what the model heard (24 kHz) to this file.
    """

    duration: float | None = None
    max_lag_frames: int = 3
    save_audio: Path | None = None
    tty: bool | None = None  # None: stdout.isatty()
    stats: dict = field(default_factory=dict)


class _Lines:
    """Words on stdout: one line rewritten in place on a terminal, whole lines otherwise."""

    def __init__(self, tty: bool):
        self.tty = tty
        self.words: list[str] = []  # the current line's finished words
        self.shown = 0  # characters of the in-place line

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size((LINE_WIDTH, 24)).columns - 1)

    def add(self, word: str) -> None:
        if len(" ".join(self.words + [word])) > self._width() and self.words:
            self.end_line()
        self.words.append(word)

    def show(self, partial: str) -> None:
        """Rewrite the current line on a terminal (with the word being written)."""
        if not self.tty:
            return
        text = " ".join(self.words + ([partial] if partial else []))[-self._width() :]
        sys.stdout.write("\r" + text + " " * max(0, self.shown - len(text)) + "\r" + text)
        sys.stdout.flush()
        self.shown = len(text)

    def end_line(self, marker: str = "") -> None:
        if not self.words and not marker:
            return
        text = " ".join(self.words + ([marker] if marker else []))
        if self.tty:
            sys.stdout.write("\r" + text + " " * max(0, self.shown - len(text)) + "\n")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()
        self.words, self.shown = [], 0

    def notice(self, text: str) -> None:
        if self.tty and self.shown:
            sys.stdout.write("\n")
            self.shown = 0
        print(text, file=sys.stderr, flush=True)


def run_dictation(stream: SttStream, mic: Microphone, options: DictationOptions) -> Transcription:
    """Transcribe the microphone until Ctrl-C (or `options.duration`).

    Returns:
        The session's transcript (words with times in seconds since the start, every token).

    Raises:
        SessionError: the microphone stopped or sent nothing.
    """
    stream.reset()
    tty = sys.stdout.isatty() if options.tty is None else options.tty
    lines = _Lines(tty)
    result = Transcription(Path("<microphone>"), 0.0, end_of_turn=[] if stream.vad else None)
    state = {"last_word_end": None, "heard": 0.0}
    fed = 0

    def take(steps: list[list[SttStep]]) -> None:
        for (step,) in steps:
            result.tokens.append(step.token)
            state["heard"] = step.heard
            for w in step.words:
                result.words.append(w)
                lines.add(w.text)
                state["last_word_end"] = w.end
            if step.turn_ended:
                delay = stream.settings.audio_delay_seconds
                result.end_of_turn.append(max(0.0, step.heard - delay))
                lines.end_line(END_OF_TURN)
            elif _paused(state, stream) and lines.words:
                lines.end_line()
            lines.show(stream.partial())

    writer = AudioWriter(options.save_audio, SAMPLE_RATE, True) if options.save_audio else None
    skipped = 0
    started = time.perf_counter()
    last_report = last_check = started
    try:
        with StopOnSignals() as stop, mic, writer if writer else nullcontext():
            lines.notice(f"listening on {mic.device.name!r}; Ctrl-C to stop")
            while not stop.requested:
                now = time.perf_counter()
                if options.duration is not None and now - started >= options.duration:
                    break
                if now - last_check >= 1.0:
                    _check(mic, now - started)
                    last_check = now
                if mic.frames_waiting() > options.max_lag_frames:
                    skipped += mic.drop_frames(keep=1)
                if skipped and now - last_report >= LAG_REPORT_INTERVAL:
                    lines.notice(
                        f"lagging: skipped {skipped} frame(s) ({skipped * FRAME_SECONDS:.2f} s "
                        "of audio): the model runs slower than real time"
                    )
                    skipped, last_report = 0, now
                frame = mic.read_frame()
                if frame is None:
                    time.sleep(POLL)
                    continue
                if writer is not None:
                    writer.write(frame)
                fed += len(frame)
                take(stream.feed(frame))
            steps, closed = stream.finish()
            take(steps)
            for w in closed[0]:
                result.words.append(w)
                lines.add(w.text)
            lines.end_line()
    finally:
        stream.reset()
    result.duration = fed / SAMPLE_RATE
    result.text = stream.tokenizer.decode(result.tokens).strip()
    options.stats.update(mic.stats())
    return result


def _paused(state: dict, stream: SttStream) -> bool:
    """No word for a while after the last one ended (in the model's delayed time)."""
    end = state["last_word_end"]
    if end is None or stream.partial():
        return False
    heard = state["heard"] - stream.settings.audio_delay_seconds
    return heard - end >= max(PAUSE_SECONDS, LAST_WORD_SECONDS)


def _check(mic: Microphone, elapsed: float) -> None:
    if mic.capture.pace.count == 0 and elapsed > NO_INPUT_TIMEOUT:
        raise SessionError(
            f"no audio from the input device {mic.device.name!r} in {NO_INPUT_TIMEOUT:g} s"
        )
    if not mic.active:
        raise SessionError(f"the input device {mic.device.name!r} stopped")
