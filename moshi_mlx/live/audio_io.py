"""Microphone and speaker as streams of 80 ms frames: PortAudio streams, queues, resampling.

The callbacks only move NumPy blocks through bounded, lock-free queues (`collections.deque`
appends and pops are atomic) and never block: the input callback copies its block and counts the
blocks it had to drop when its queue was full; the output callback plays from a jitter buffer,
and when the buffer runs dry it ramps the last sample to silence (no click) and fades the next
audio in. Everything else (resampling, cutting 80 ms frames, statistics) runs on the caller's
thread.

Separate input and output streams (not one duplex stream), mono, 24 kHz and 1920-sample blocks
when the device supports it; otherwise the device's own rate, resampled with soxr.

With `echo_cancel`, both callbacks also note PortAudio's timestamps (`inputBufferAdcTime`,
`outputBufferDacTime`) and the output callback keeps a copy of each block it played: `echo`
pairs them and takes the speaker's echo out of the microphone (see `echo`).
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
import soxr

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

from .devices import DeviceChoice, load_sounddevice
from .echo import Canceller, EchoPath
from .jitter import JitterBuffer

FADE_SECONDS = 0.005  # ramp to and from silence around an underrun
INPUT_QUEUE_BLOCKS = 50  # 4 s of audio waiting for the model at most


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
        self.stream = sd.InputStream(
            device=device.index,
            samplerate=device.rate,
            channels=device.channels,
            blocksize=device.blocksize,
            dtype="float32",
            latency=latency,
            callback=self._callback,
        )

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
        self.pace = CallbackPace(
            device.blocksize / device.rate
        )  # from the first callback that plays audio
        self._mono = np.zeros(device.blocksize, np.float32)
        self.running = threading.Event()  # set by the first callback: the device is playing
        self.stream = sd.OutputStream(
            device=device.index,
            samplerate=device.rate,
            channels=device.channels,
            blocksize=device.blocksize,
            dtype="float32",
            latency=latency,
            callback=self._callback,
        )

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


OUTPUT_START_TIMEOUT = 3.0  # seconds to wait for the speaker's first callback


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
        echo_cancel: take the speaker's echo out of the microphone (`echo`); `read_frame`
            then returns the cancelled frame and `last_mic` the raw one.
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
        sd = load_sounddevice()
        self.input_device, self.output_device = input_device, output_device
        block = output_device.blocksize
        self.buffer = JitterBuffer(
            prefill_frames * block,
            capacity_frames * block,
            round(FADE_SECONDS * output_device.rate),
            log_played,
        )
        self.capture = InputCapture(sd, input_device, latency=latency)
        try:
            self.player = OutputPlayer(sd, output_device, self.buffer, latency, echo_cancel)
        except BaseException:
            self.capture.stream.close()
            raise
        self._in_resampler = _resampler(input_device.rate, SAMPLE_RATE)
        self._out_resampler = _resampler(SAMPLE_RATE, output_device.rate)
        self._pending = np.zeros(0, np.float32)  # 24 kHz samples not yet cut into a frame
        self.dropped_frames = 0  # input frames skipped by `drop_frames`
        self.echo: EchoPath | None = None
        if echo_cancel:
            self.echo = EchoPath(Canceller(), input_device.rate, output_device.rate)
        self._raw_pending = np.zeros(0, np.float32)  # the same samples before cancellation
        self.last_mic: np.ndarray | None = None  # the raw microphone of the last `read_frame`

    def __enter__(self) -> AudioIO:
        # The speaker first: some devices take a second to start, and Moshi's answers to a
        # microphone that started earlier would pile up and be skipped as lag.
        self.player.stream.start()
        self.player.running.wait(timeout=OUTPUT_START_TIMEOUT)
        self.capture.stream.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop both streams, letting the speaker play what it was given, and close them."""
        for stream in (self.capture.stream, self.player.stream):
            try:
                stream.stop()  # the output's buffered audio plays out: played.wav stays true
            except Exception:
                try:
                    stream.abort()
                except Exception:
                    pass
            stream.close()

    def _pull(self) -> None:
        if self.echo is not None:
            self._pull_cancelled()
            return
        blocks = []
        while self.capture.blocks:
            block = self.capture.blocks.popleft()
            self.capture.times.popleft()
            if self._in_resampler is not None:
                block = self._in_resampler.resample_chunk(block)
            blocks.append(block)
        if blocks:
            self._pending = np.concatenate([self._pending, *blocks])
            self._raw_pending = self._pending

    def _pull_cancelled(self) -> None:
        played = self.player.played
        while played:
            self.echo.add_played(*played.popleft())
        while self.capture.blocks:
            block = self.capture.blocks.popleft()
            self.echo.add_mic(self.capture.times.popleft(), block)
        frames = self.echo.frames()
        if frames:
            self._raw_pending = np.concatenate([self._raw_pending, *(raw for raw, _ in frames)])
            self._pending = np.concatenate([self._pending, *(out for _, out in frames)])

    def frames_waiting(self) -> int:
        """Whole input frames ready to be read."""
        self._pull()
        return len(self._pending) // FRAME_SIZE

    def read_frame(self) -> np.ndarray | None:
        """The oldest whole input frame (FRAME_SIZE,), or None if none is complete yet."""
        self._pull()
        if len(self._pending) < FRAME_SIZE:
            return None
        frame, self._pending = self._pending[:FRAME_SIZE], self._pending[FRAME_SIZE:]
        self.last_mic, self._raw_pending = (
            self._raw_pending[:FRAME_SIZE],
            self._raw_pending[FRAME_SIZE:],
        )
        return frame

    def drop_frames(self, keep: int = 1) -> int:
        """Skip the oldest waiting input frames, keeping the newest `keep`; returns how many."""
        self._pull()
        n = max(0, len(self._pending) // FRAME_SIZE - keep)
        self._pending = self._pending[n * FRAME_SIZE :]
        self._raw_pending = self._raw_pending[n * FRAME_SIZE :]
        self.dropped_frames += n
        return n

    def play(self, frame: np.ndarray) -> None:
        """Queue a 24 kHz frame for the speaker."""
        audio = np.asarray(frame, np.float32)
        if self._out_resampler is not None:
            audio = self._out_resampler.resample_chunk(audio)
        self.buffer.push(audio)

    def drain_played(self) -> list[tuple[int, np.ndarray]]:
        """Blocks the speaker played since the last call (with `log_played`)."""
        return self.buffer.drain_played()

    def stats(self) -> dict:
        """Counters of both streams (queue depths in 80 ms frames)."""
        block_in = self.input_device.blocksize
        block_out = self.output_device.blocksize
        return {
            "input": {
                "device": self.input_device.name,
                "rate": self.input_device.rate,
                **self.capture.pace.to_dict(),
                "queue_blocks": len(self.capture.blocks),
                "max_queue_blocks": self.capture.max_depth,
                "queue_capacity_blocks": self.capture.capacity,
                "overflow_blocks": self.capture.dropped,
                "status_errors": self.capture.status_errors,
                "skipped_frames": self.dropped_frames,
            },
            "output": {
                "device": self.output_device.name,
                "rate": self.output_device.rate,
                **self.player.pace.to_dict(),
                "buffered_frames": round(self.buffer.buffered / block_out, 2),
                "max_buffered_frames": round(self.buffer.max_buffered / block_out, 2),
                "capacity_frames": round(self.buffer.capacity / block_out, 2),
                "underruns": self.buffer.underruns,
                "silence_ms": round(1000 * self.buffer.silent_samples / self.output_device.rate),
                "latency_trims": self.buffer.trims,
                "trimmed_ms": round(1000 * self.buffer.skip_requested / self.output_device.rate),
                "status_errors": self.player.status_errors,
            },
            "input_block": block_in,
            "echo_cancel": self.echo.stats() if self.echo is not None else None,
        }


def _resampler(src: int, dst: int):
    if src == dst:
        return None
    return soxr.ResampleStream(src, dst, 1, dtype="float32")
