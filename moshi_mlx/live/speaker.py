"""The speaker: 24 kHz frames in, played through a jitter buffer and an output stream
(`streams.OutputPlayer`).

For text-to-speech the producer is never behind a live partner: audio that comes faster than real
time waits in the buffer (the producer is held back beyond `max_buffered_seconds`, so memory stays
bounded), and none of it is skipped. Playback starts once `prefill_frames` are buffered (or at the
end, for a shorter text). The chat's `AudioIO` uses one with a bounded buffer instead: it never
waits, and the buffer skips back to the prefill when it overflows (latency stays bounded).
"""

from __future__ import annotations

import time

import numpy as np

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE
from mimi_mlx.io.audio import Resampler

from .devices import DeviceChoice, load_sounddevice
from .jitter import JitterBuffer
from .streams import FADE_SECONDS, OUTPUT_START_TIMEOUT, OutputPlayer, stop_stream

NEVER_SKIP = 2**62  # a jitter-buffer capacity that is never reached


class Speaker:
    """Play 24 kHz audio frames on an output device as they come.

    Use as a context manager: the stream starts on enter; `finish()` waits until everything
    pushed has been played.

    Args:
        device: from `choose_device(..., "output")`.
        prefill_frames: 80 ms frames buffered before playback starts.
        max_buffered_seconds: `play` waits while this much audio is waiting (None: never waits).
        capacity_frames: frames the jitter buffer holds at most, then it skips back to
            `prefill_frames` (None: never skips).
        log_played: keep what the speaker played for `drain_played`.
        keep_played: also keep each block played with its DAC time, for `take_played` (the
            echo canceller's reference).
        latency: PortAudio's suggested latency ("low", "high" or seconds).
    """

    def __init__(
        self,
        device: DeviceChoice,
        prefill_frames: int = 4,
        max_buffered_seconds: float | None = 10.0,
        capacity_frames: int | None = None,
        log_played: bool = False,
        keep_played: bool = False,
        latency: str | float = "low",
    ):
        sd = load_sounddevice()
        self.device = device
        block = device.blocksize
        capacity = NEVER_SKIP if capacity_frames is None else capacity_frames * block
        fade = round(FADE_SECONDS * device.rate)
        self.buffer = JitterBuffer(prefill_frames * block, capacity, fade, log_played)
        self.player = OutputPlayer(sd, device, self.buffer, latency, keep_played)
        self.max_buffered = None
        if max_buffered_seconds is not None:
            self.max_buffered = int(max_buffered_seconds * device.rate)
        self.resampler = Resampler(SAMPLE_RATE, device.rate)

    def __enter__(self) -> Speaker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Start the stream and wait (a few seconds at most) until the device plays."""
        self.player.stream.start()
        self.player.running.wait(timeout=OUTPUT_START_TIMEOUT)

    def play(self, frame: np.ndarray) -> None:
        """Queue (FRAME_SIZE,) samples at 24 kHz; waits while the buffer is full."""
        audio = self.resampler.resample_chunk(frame)
        if self.max_buffered is not None:
            while self.buffer.buffered > self.max_buffered:
                time.sleep(0.02)
        self.buffer.push(audio)

    @property
    def started(self) -> bool:
        """The speaker has begun playing the audio."""
        return self.buffer.ever_started

    def finish(self, timeout: float | None = None) -> None:
        """Play what is buffered to the end (starting now if it never reached the prefill)."""
        tail = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        if len(tail):
            self.buffer.push(tail)
        self.buffer.prefill = min(self.buffer.prefill, max(1, self.buffer.buffered))
        seconds = self.buffer.buffered / self.device.rate
        deadline = time.monotonic() + (timeout if timeout is not None else seconds + 5.0)
        while self.buffer.buffered > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        # what the callbacks handed over is still in the host's buffers: let it play
        time.sleep(max(2 * FRAME_SIZE / SAMPLE_RATE, 2 * self.player.stream.latency) + 0.2)

    def close(self) -> None:
        """Stop the stream, letting it play what it was given, and close it."""
        stop_stream(self.player.stream)

    def drain_played(self) -> list[tuple[int, np.ndarray]]:
        """Blocks the speaker played since the last call (with `log_played`)."""
        return self.buffer.drain_played()

    def take_played(self) -> list[tuple[float, np.ndarray]]:
        """(DAC time, block) of each block played since the last call (with `keep_played`)."""
        played, out = self.player.played, []
        while played:
            out.append(played.popleft())
        return out

    def stats(self) -> dict:
        """The stream's and the jitter buffer's counters (in 80 ms frames and milliseconds)."""
        block, rate, buffer = self.device.blocksize, self.device.rate, self.buffer
        return {
            "device": self.device.name,
            "rate": rate,
            **self.player.pace.to_dict(),
            "buffered_frames": round(buffer.buffered / block, 2),
            "max_buffered_frames": round(buffer.max_buffered / block, 2),
            "capacity_frames": round(buffer.capacity / block, 2),
            "underruns": buffer.underruns,
            "silence_ms": round(1000 * buffer.silent_samples / rate),
            "latency_trims": buffer.trims,
            "trimmed_ms": round(1000 * buffer.skip_requested / rate),
            "status_errors": self.player.status_errors,
        }
