"""The speaker's jitter buffer: Moshi's frames in, device blocks out, at a bounded latency.

The model thread `push`es audio; the output callback `fill`s each device block. Both sides share
only a `collections.deque` of chunks (appends and pops are atomic) and counters that each side
alone writes, so `fill` never blocks and allocates nothing on the normal path.

- Playback starts once `prefill` samples are buffered (the margin against a late frame).
- Underrun: the last sample ramps linearly to zero over `fade` samples (no click), the buffer
  refills to `prefill`, and the audio fades back in.
- Latency: when a burst of frames (the model catching up after a stall) pushes the buffer past
  `capacity`, the oldest audio is skipped down to `prefill`, with the same ramps, so the delay
  between the user and Moshi cannot creep up.
"""

from __future__ import annotations

from collections import deque

import numpy as np

PLAYED_LOG_BLOCKS = 250  # played blocks kept for a recorder between two drains


class JitterBuffer:
    """Audio samples between the model's thread and an output callback.

    Args:
        prefill: samples buffered before playback starts (and restarts after an underrun).
        capacity: samples buffered at most; above it the oldest are skipped down to `prefill`.
        fade: length of the ramps to and from silence, in samples.
        log_played: keep a copy of every filled block for `drain_played` (recording).
    """

    def __init__(self, prefill: int, capacity: int, fade: int, log_played: bool = False):
        if not 0 < prefill < capacity:
            raise ValueError(f"need 0 < prefill < capacity, got {prefill} and {capacity}")
        self.prefill, self.capacity, self.fade = prefill, capacity, max(1, fade)
        self.chunks: deque[np.ndarray] = deque()
        # written by the model's thread only
        self.produced = 0  # samples pushed
        self.skip_requested = 0  # samples asked to be skipped
        self.trims = 0  # times the latency was cut back to `prefill`
        self.max_buffered = 0
        # written by the callback only
        self.consumed = 0  # samples taken from the chunks (played or skipped)
        self.skipped = 0  # samples skipped
        self.started = False  # playing (False while filling up to `prefill`)
        self.ever_started = False
        self.underruns = 0  # blocks that ran out of audio while playing
        self.silent_samples = 0  # silence played since playback first started
        self.played: deque[tuple[int, np.ndarray]] | None = (
            deque(maxlen=PLAYED_LOG_BLOCKS) if log_played else None
        )
        self._played_seq = 0
        self._offset = 0  # samples of chunks[0] already taken
        self._last = 0.0  # the last sample written
        self._fade_in = False
        self._ramp_up = np.linspace(0.0, 1.0, self.fade + 2, dtype=np.float32)[1:-1]

    @property
    def buffered(self) -> int:
        """Samples waiting to be played (not counting those about to be skipped)."""
        return self.produced - self.consumed - (self.skip_requested - self.skipped)

    def push(self, audio: np.ndarray) -> None:
        """Queue samples (n,) float32; may schedule a skip of the oldest (see the module doc)."""
        self.chunks.append(audio)
        self.produced += len(audio)
        if self.buffered > self.capacity:
            self.skip_requested += self.buffered - self.prefill
            self.trims += 1
        self.max_buffered = max(self.max_buffered, self.buffered)

    def flush(self) -> int:
        """Drop every buffered sample (the callback ramps out of the audio at its next block);
        returns how many."""
        dropped = self.buffered
        self.skip_requested += dropped
        return dropped

    def drain_played(self) -> list[tuple[int, np.ndarray]]:
        """The blocks filled since the last call, as (sequence number, samples)."""
        out = []
        while self.played:
            out.append(self.played.popleft())
        return out

    def fill(self, out: np.ndarray) -> None:
        """Write the next block into `out` (frames,) float32: the output callback's job."""
        frames = len(out)
        n = 0
        skip = self.skip_requested - self.skipped
        if skip > 0:
            taken = self._take(None, skip)
            self.skipped += taken
            self.consumed += taken
            if self.started:  # ramp out of the audio we jump away from
                n = min(self.fade, frames)
                out[:n] = np.linspace(self._last, 0.0, n + 1, dtype=np.float32)[1:]
                self._fade_in = True
        if not self.started and self.buffered >= self.prefill:
            self.started = self.ever_started = True  # (again after an underrun: margin back)
        begin = n
        if self.started:
            n += self._take(out[n:], frames - n)
            self.consumed += n - begin
        if self._fade_in and n > begin:
            m = min(n - begin, self.fade)
            out[begin : begin + m] *= self._ramp_up[:m]
            self._fade_in = False
        if n < frames:
            if self.started:
                self.underruns += 1
                self.started = False  # refill before playing on
                self._fade_in = True
            if self.ever_started:
                self.silent_samples += frames - n
            last = out[n - 1] if n else self._last
            m = min(frames - n, self.fade)
            out[n : n + m] = np.linspace(last, 0.0, m + 1, dtype=np.float32)[1:]
            out[n + m :] = 0.0
        self._last = float(out[frames - 1])
        if self.played is not None:
            self.played.append((self._played_seq, out.copy()))
            self._played_seq += 1

    def _take(self, out: np.ndarray | None, count: int) -> int:
        """Move up to `count` samples from the chunks into `out` (None: discard them)."""
        n = 0
        while n < count and self.chunks:
            chunk = self.chunks[0]
            k = min(count - n, len(chunk) - self._offset)
            if out is not None:
                out[n : n + k] = chunk[self._offset : self._offset + k]
            n += k
            self._offset += k
            if self._offset == len(chunk):
                self.chunks.popleft()
                self._offset = 0
        return n
