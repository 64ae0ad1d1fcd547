"""The microphone alone as a stream of 80 ms frames at 24 kHz (for jobs that only listen).

The same capture as the chat's (`audio_io.InputCapture`: a callback that only copies blocks into
a bounded queue and counts what it drops), with its resampling and framing on the caller's
thread, and no speaker.
"""

from __future__ import annotations

import numpy as np

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

from .audio_io import InputCapture, _resampler
from .devices import DeviceChoice, load_sounddevice


class Microphone:
    """An input device as 80 ms frames; a context manager (the stream runs inside it).

    Args:
        device: from `choose_device(..., "input")`.
        latency: PortAudio's suggested latency ("low", "high" or seconds).
    """

    def __init__(self, device: DeviceChoice, latency: str | float = "low"):
        self.device = device
        self.capture = InputCapture(load_sounddevice(), device, latency=latency)
        self._resampler = _resampler(device.rate, SAMPLE_RATE)
        self._pending = np.zeros(0, np.float32)  # 24 kHz samples not yet cut into a frame
        self.dropped_frames = 0  # frames skipped by `drop_frames`

    def __enter__(self) -> Microphone:
        self.capture.stream.start()
        return self

    def __exit__(self, *exc) -> None:
        stream = self.capture.stream
        try:
            stream.stop()
        except Exception:
            stream.abort()
        stream.close()

    @property
    def active(self) -> bool:
        return bool(self.capture.stream.active)

    def _pull(self) -> None:
        blocks = []
        while self.capture.blocks:
            block = self.capture.blocks.popleft()
            if self._resampler is not None:
                block = self._resampler.resample_chunk(block)
            blocks.append(block)
        if blocks:
            self._pending = np.concatenate([self._pending, *blocks])

    def frames_waiting(self) -> int:
        """Whole frames ready to be read."""
        self._pull()
        return len(self._pending) // FRAME_SIZE

    def read_frame(self) -> np.ndarray | None:
        """The oldest whole frame (FRAME_SIZE,), or None if none is complete yet."""
        self._pull()
        if len(self._pending) < FRAME_SIZE:
            return None
        frame, self._pending = self._pending[:FRAME_SIZE], self._pending[FRAME_SIZE:]
        return frame

    def drop_frames(self, keep: int = 1) -> int:
        """Skip the oldest waiting frames, keeping the newest `keep`; returns how many."""
        self._pull()
        n = max(0, len(self._pending) // FRAME_SIZE - keep)
        self._pending = self._pending[n * FRAME_SIZE :]
        self.dropped_frames += n
        return n

    def stats(self) -> dict:
        """The capture's counters (as the chat's `AudioIO.stats()["input"]`)."""
        return {
            "device": self.device.name,
            "rate": self.device.rate,
            **self.capture.pace.to_dict(),
            "max_queue_blocks": self.capture.max_depth,
            "overflow_blocks": self.capture.dropped,
            "skipped_frames": self.dropped_frames,
        }
