"""The chat's devices: a `Microphone` and a `Speaker` as 80 ms frames at 24 kHz, and optionally
the echo canceller between them.

The callbacks only move NumPy blocks (`streams`); everything else runs on the caller's thread,
explicitly: `pull()` takes what the callbacks captured and played (and, with `echo_cancel`, pairs
the microphone with the speaker's output and cancels the echo: `echo_path`), `read_frame()` then
returns the oldest frame, both as heard (echo cancelled) and as the microphone caught it, with
what the speaker played at that time (the canceller's reference).

Separate input and output streams (not one duplex stream), mono, 24 kHz and 1920-sample blocks
when the device supports it; otherwise the device's own rate, resampled with soxr.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .devices import DeviceChoice
from .echo import Canceller
from .echo_path import EchoPath
from .microphone import FrameQueue, Microphone
from .speaker import Speaker


class InputFrame(NamedTuple):
    """One 80 ms input frame (FRAME_SIZE,) at 24 kHz."""

    heard: np.ndarray  # what the model hears: the microphone without the speaker's echo
    mic: np.ndarray  # the microphone as it was caught (`heard` itself without echo cancelling)
    reference: np.ndarray | None = None  # the speaker's output then (None: no echo cancelling)


class AudioIO:
    """The microphone and the speaker as streams of 80 ms frames at 24 kHz.

    Use as a context manager (streams start on enter, stop on exit). Everything but the
    callbacks runs on the caller's thread.

    Args:
        input_device, output_device: from `choose_device`.
        prefill_frames: output frames buffered before playback starts (jitter buffer).
        capacity_frames: output frames the jitter buffer holds at most (then it skips back to
            `prefill_frames`).
        log_played: keep what the speaker played for `drain_played`.
        latency: PortAudio's suggested latency for both streams ("low", "high" or seconds).
        echo_cancel: take the speaker's echo out of the microphone (`echo_path`).
    """

    def __init__(
        self,
        input_device: DeviceChoice,
        output_device: DeviceChoice,
        prefill_frames: int = 2,
        capacity_frames: int = 4,
        log_played: bool = False,
        latency: str | float = "low",
        echo_cancel: bool = False,
    ):
        self.input_device, self.output_device = input_device, output_device
        self.microphone = Microphone(input_device, latency)
        try:
            self.speaker = Speaker(
                output_device,
                prefill_frames,
                max_buffered_seconds=None,  # the chat never waits: the buffer skips instead
                capacity_frames=capacity_frames,
                log_played=log_played,
                keep_played=echo_cancel,
                latency=latency,
            )
        except BaseException:
            self.microphone.capture.stream.close()
            raise
        self.echo: EchoPath | None = None
        self._raw: FrameQueue | None = None  # with the echo canceller: the frames before it
        self._reference: FrameQueue | None = None  # and its reference
        if echo_cancel:
            self.echo = EchoPath(Canceller(), input_device.rate, output_device.rate)
            self._raw, self._reference = FrameQueue(), FrameQueue()

    def __enter__(self) -> AudioIO:
        # The speaker first: some devices take a second to start, and Moshi's answers to a
        # microphone that started earlier would pile up and be skipped as lag.
        self.speaker.start()
        self.microphone.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop both streams, letting the speaker play what it was given, and close them."""
        self.microphone.close()
        self.speaker.close()  # the output's buffered audio plays out: played.wav stays true

    def pull(self) -> int:
        """Take what the callbacks captured (and played, for the echo canceller, which runs
        here); returns the whole input frames waiting."""
        if self.echo is None:
            return self.microphone.pull()
        for dac_time, block in self.speaker.take_played():
            self.echo.add_played(dac_time, block)
        for adc_time, block in self.microphone.take_blocks():
            self.echo.add_mic(adc_time, block)
        frames = self.echo.frames()
        self._raw.add([f.mic for f in frames])
        self._reference.add([f.reference for f in frames])
        self.microphone.frames.add([f.heard for f in frames])
        return len(self.microphone.frames)

    def read_frame(self) -> InputFrame | None:
        """The oldest whole input frame `pull` took, or None if none is complete yet."""
        heard = self.microphone.frames.read()
        if heard is None:
            return None
        if self._raw is None:
            return InputFrame(heard, heard)
        return InputFrame(heard, self._raw.read(), self._reference.read())

    @property
    def echo_delay(self) -> float | None:
        """Seconds the speaker's echo comes after the reference (None: not found, or no
        echo cancelling)."""
        return None if self.echo is None else self.echo.canceller.echo_delay

    def drop_frames(self, keep: int = 1) -> int:
        """Skip the oldest waiting input frames, keeping the newest `keep`; returns how many."""
        if self._raw is not None:
            self._raw.drop_oldest(keep)
            self._reference.drop_oldest(keep)
        return self.microphone.frames.drop_oldest(keep)

    def play(self, frame: np.ndarray) -> None:
        """Queue a 24 kHz frame for the speaker (never waits: a full buffer skips)."""
        self.speaker.play(frame)

    def drain_played(self) -> list[tuple[int, np.ndarray]]:
        """Blocks the speaker played since the last call (with `log_played`)."""
        return self.speaker.drain_played()

    def stats(self) -> dict:
        """Counters of both streams (queue depths in 80 ms frames)."""
        return {
            "input": self.microphone.stats(),
            "output": self.speaker.stats(),
            "input_block": self.input_device.blocksize,
            "echo_cancel": self.echo.stats() if self.echo is not None else None,
        }
