"""The microphone as a stream of 80 ms frames at 24 kHz.

The capture (`streams.InputCapture`: a callback that only copies blocks into a bounded queue and
counts what it drops), with its resampling and framing on the caller's thread. Dictation listens
with a `Microphone` alone; the chat's `AudioIO` pairs one with a `Speaker`.
"""

from __future__ import annotations

import numpy as np

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE
from mimi_mlx.io.audio import Resampler

from .devices import DeviceChoice, load_sounddevice
from .streams import InputCapture, stop_stream


class FrameQueue:
    """24 kHz samples in, whole frames (FRAME_SIZE,) out, oldest first."""

    def __init__(self):
        self._pending = np.zeros(0, np.float32)  # samples not yet read as a frame
        self.dropped = 0  # frames skipped by `drop_oldest`

    def add(self, blocks: list[np.ndarray]) -> None:
        if blocks:
            self._pending = np.concatenate([self._pending, *blocks])

    def __len__(self) -> int:
        """Whole frames waiting."""
        return len(self._pending) // FRAME_SIZE

    def read(self) -> np.ndarray | None:
        """The oldest whole frame, or None if none is complete yet."""
        if len(self._pending) < FRAME_SIZE:
            return None
        frame, self._pending = self._pending[:FRAME_SIZE], self._pending[FRAME_SIZE:]
        return frame

    def drop_oldest(self, keep: int) -> int:
        """Skip the oldest whole frames, keeping the newest `keep`; returns how many."""
        n = max(0, len(self) - keep)
        self._pending = self._pending[n * FRAME_SIZE :]
        self.dropped += n
        return n


class Microphone:
    """An input device as 80 ms frames; a context manager (the stream runs inside it).

    Args:
        device: from `choose_device(..., "input")`.
        latency: PortAudio's suggested latency ("low", "high" or seconds).
    """

    def __init__(self, device: DeviceChoice, latency: str | float = "low"):
        self.device = device
        self.capture = InputCapture(load_sounddevice(), device, latency=latency)
        self.resampler = Resampler(device.rate, SAMPLE_RATE)
        self.frames = FrameQueue()

    def __enter__(self) -> Microphone:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.capture.stream.start()

    def close(self) -> None:
        stop_stream(self.capture.stream)

    @property
    def active(self) -> bool:
        return bool(self.capture.stream.active)

    def take_blocks(self) -> list[tuple[float, np.ndarray]]:
        """The blocks captured since the last call, oldest first, each with its ADC time."""
        capture, blocks = self.capture, []
        while capture.blocks:
            blocks.append((capture.times.popleft(), capture.blocks.popleft()))
        return blocks

    def pull(self) -> int:
        """Resample and frame what the callback captured; returns the whole frames waiting."""
        self.frames.add([self.resampler.resample_chunk(b) for _, b in self.take_blocks()])
        return len(self.frames)

    def frames_waiting(self) -> int:
        """Whole frames ready to be read (after taking what was captured)."""
        return self.pull()

    def read_frame(self) -> np.ndarray | None:
        """The oldest whole frame (FRAME_SIZE,), or None if none is complete yet."""
        self.pull()
        return self.frames.read()

    def drop_frames(self, keep: int = 1) -> int:
        """Skip the oldest waiting frames, keeping the newest `keep`; returns how many."""
        self.pull()
        return self.frames.drop_oldest(keep)

    def stats(self) -> dict:
        """The capture's counters (queue depths in blocks, skipped frames)."""
        capture = self.capture
        return {
            "device": self.device.name,
            "rate": self.device.rate,
            **capture.pace.to_dict(),
            "queue_blocks": len(capture.blocks),
            "max_queue_blocks": capture.max_depth,
            "queue_capacity_blocks": capture.capacity,
            "overflow_blocks": capture.dropped,
            "status_errors": capture.status_errors,
            "skipped_frames": self.frames.dropped,
        }
