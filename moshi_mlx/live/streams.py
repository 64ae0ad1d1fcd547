"""PortAudio streams whose callbacks only move NumPy blocks: an input capture, an output player.

The callbacks never block: they move blocks through bounded, lock-free queues
(`collections.deque` appends and pops are atomic). The input callback copies its block (mixed
to mono) and counts the blocks it had to drop when its queue was full; the output callback plays
from a jitter buffer, which ramps to silence when it runs dry (no click) and fades the next audio
in. Everything else (resampling, cutting 80 ms frames, statistics) runs on the caller's thread:
`microphone`, `speaker`, `audio_io`.

With the echo canceller, both callbacks also note PortAudio's timestamps (`inputBufferAdcTime`,
`outputBufferDacTime`) and the output callback keeps a copy of each block it played.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from .devices import DeviceChoice
from .jitter import JitterBuffer

FADE_SECONDS = 0.005  # ramp to and from silence around an underrun
INPUT_QUEUE_BLOCKS = 50  # 4 s of audio waiting for the model at most
OUTPUT_START_TIMEOUT = 3.0  # seconds to wait for the speaker's first callback


class CallbackPace:
    """When a stream's callbacks came: count, mean and median interval, longest gap, and stalls
    (a callback more than 2.5 periods after the one before: hosts often deliver two blocks at
    once, which is not a stall).

    Args:
        period: the expected interval (the block's duration), in seconds.
    """

    RING = 1024  # the last callback times kept (preallocated: the callback never allocates)

    def __init__(self, period: float):
        self.period = period
        self.stalls = 0
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.max_gap = 0.0
        self._times = np.zeros(self.RING)

    def tick(self) -> None:
        now = time.perf_counter()
        if self.count:
            gap = now - self.last
            self.max_gap = max(self.max_gap, gap)
            if gap > 2.5 * self.period:
                self.stalls += 1
        else:
            self.first = now
        self.last = now
        self._times[self.count % self.RING] = now
        self.count += 1

    @property
    def mean_interval(self) -> float:
        return (self.last - self.first) / (self.count - 1) if self.count > 1 else 0.0

    @property
    def median_interval(self) -> float:
        """Median of the last `RING` intervals (robust to a late start or one stall)."""
        n = min(self.count, self.RING)
        if n < 2:
            return 0.0
        times = np.roll(self._times, -(self.count % self.RING))[-n:]
        return float(np.median(np.diff(times)))

    def to_dict(self) -> dict:
        return {
            "callbacks": self.count,
            "mean_interval_ms": round(1000 * self.mean_interval, 3),
            "median_interval_ms": round(1000 * self.median_interval, 3),
            "max_gap_ms": round(1000 * self.max_gap, 3),
            "stalls": self.stalls,
        }


class InputCapture:
    """An input stream whose callback queues copies of its blocks (bounded)."""

    def __init__(self, sd, device: DeviceChoice, capacity: int = INPUT_QUEUE_BLOCKS, latency="low"):
        self.device = device
        self.capacity = capacity
        self.blocks: deque[np.ndarray] = deque()
        self.times: deque[float] = deque()  # each block's inputBufferAdcTime (same order)
        self.dropped = 0  # blocks dropped because the queue was full
        self.max_depth = 0
        self.status_errors = 0  # callbacks PortAudio flagged (overflow)
        self.pace = CallbackPace(device.blocksize / device.rate)
        self.stream = sd.InputStream(**_settings(device, latency), callback=self._callback)

    def _callback(self, indata, frames, time_info, status) -> None:
        self.pace.tick()
        if status:
            self.status_errors += 1
        if len(self.blocks) >= self.capacity:
            self.dropped += 1
            return
        self.times.append(time_info.inputBufferAdcTime or time_info.currentTime)
        if indata.shape[1] == 1:
            self.blocks.append(indata[:, 0].copy())
        else:
            self.blocks.append(indata.mean(axis=1, dtype=np.float32))
        self.max_depth = max(self.max_depth, len(self.blocks))


class OutputPlayer:
    """An output stream whose callback plays from a `JitterBuffer`.

    Args:
        sd: the sounddevice module.
        device: the output device.
        buffer: the jitter buffer, at the device's rate.
        latency: PortAudio's suggested latency ("low", "high" or seconds).
        keep_played: also queue (outputBufferDacTime, copy of the block) in `played` (the echo
            canceller's reference).
    """

    PLAYED_BLOCKS = 100  # 8 s of played blocks waiting for the echo canceller at most

    def __init__(
        self, sd, device: DeviceChoice, buffer: JitterBuffer, latency="low", keep_played=False
    ):
        self.device = device
        self.buffer = buffer
        self.played: deque[tuple[float, np.ndarray]] | None = (
            deque(maxlen=self.PLAYED_BLOCKS) if keep_played else None
        )
        self.status_errors = 0  # callbacks PortAudio flagged (underflow)
        # from the first callback that plays audio
        self.pace = CallbackPace(device.blocksize / device.rate)
        self._mono = np.zeros(device.blocksize, np.float32)
        self.running = threading.Event()  # set by the first callback: the device is playing
        self.stream = sd.OutputStream(**_settings(device, latency), callback=self._callback)

    def _callback(self, outdata, frames, time_info, status) -> None:
        self.running.set()
        if self.buffer.ever_started:  # the pace of playback, not of the idle start
            self.pace.tick()
        if status:
            self.status_errors += 1
        if outdata.shape[1] == 1:
            out = outdata[:, 0]
            self.buffer.fill(out)
        else:
            out = self._mono[:frames]
            self.buffer.fill(out)
            outdata[:] = out[:, None]
        if self.played is not None:
            self.played.append((time_info.outputBufferDacTime or time_info.currentTime, out.copy()))


def _settings(device: DeviceChoice, latency) -> dict:
    """PortAudio's settings for a float32 stream of the device's rate, channels and blocks."""
    return {
        "device": device.index,
        "samplerate": device.rate,
        "channels": device.channels,
        "blocksize": device.blocksize,
        "dtype": "float32",
        "latency": latency,
    }


def stop_stream(stream) -> None:
    """Stop a stream (an output's buffered audio plays out) and close it, aborting it if it
    cannot stop."""
    try:
        stream.stop()
    except Exception:
        try:
            stream.abort()
        except Exception:
            pass
    stream.close()
