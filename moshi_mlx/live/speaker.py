"""The speaker alone, for text-to-speech: 24 kHz frames in, played through the chat's jitter
buffer and output stream (`audio_io.OutputPlayer`), never skipped.

Unlike the chat, the producer is never behind a live partner: audio that comes faster than real
time waits in the buffer (the producer is held back beyond `max_buffered_seconds`, so memory stays
bounded), and none of it is skipped. Playback starts once `prefill_frames` are buffered (or at the
end, for a shorter text).
"""

from __future__ import annotations

import time

import numpy as np

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

from .audio_io import FADE_SECONDS, OUTPUT_START_TIMEOUT, OutputPlayer, _resampler
from .devices import DeviceChoice, load_sounddevice
from .jitter import JitterBuffer

NEVER_SKIP = 2**62  # a jitter-buffer capacity that is never reached


class Speaker:
    """Play 24 kHz audio frames on an output device as they come.

    Use as a context manager: the stream starts on enter; `finish()` waits until everything
    pushed has been played.

    Args:
        device: from `choose_device(..., "output")`.
        prefill_frames: 80 ms frames buffered before playback starts.
        max_buffered_seconds: `play` waits while this much audio is waiting.
    """

    def __init__(
        self, device: DeviceChoice, prefill_frames: int = 4, max_buffered_seconds: float = 10.0
    ):
        sd = load_sounddevice()
        self.device = device
        block = device.blocksize
        fade = round(FADE_SECONDS * device.rate)
        self.buffer = JitterBuffer(prefill_frames * block, NEVER_SKIP, fade)
        self.player = OutputPlayer(sd, device, self.buffer)
        self.max_buffered = int(max_buffered_seconds * device.rate)
        self._resampler = _resampler(SAMPLE_RATE, device.rate)
        self.first_push: float | None = None  # time.perf_counter() of the first audio

    def __enter__(self) -> Speaker:
        self.player.stream.start()
        self.player.running.wait(timeout=OUTPUT_START_TIMEOUT)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def play(self, frame: np.ndarray) -> None:
        """Queue (FRAME_SIZE,) samples at 24 kHz; waits while the buffer is full."""
        audio = np.asarray(frame, np.float32)
        if self._resampler is not None:
            audio = self._resampler.resample_chunk(audio)
        while self.buffer.buffered > self.max_buffered:
            time.sleep(0.02)
        if self.first_push is None:
            self.first_push = time.perf_counter()
        self.buffer.push(audio)

    @property
    def started(self) -> bool:
        """The speaker has begun playing the audio."""
        return self.buffer.ever_started

    def finish(self, timeout: float | None = None) -> None:
        """Play what is buffered to the end (starting now if it never reached the prefill)."""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
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
        stream = self.player.stream
        try:
            stream.stop()
        except Exception:
            try:
                stream.abort()
            except Exception:
                pass
        stream.close()
