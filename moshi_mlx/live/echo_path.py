"""The live echo path: each microphone block paired with what the speaker played at that time.

The reference is exactly what the output callback handed to the device (after the jitter
buffer's prefill, fades, skips and underrun silences), placed on the microphone's timeline with
PortAudio's timestamps: the block captured at `inputBufferAdcTime` t is paired with the samples
that were at the DAC at t + `lead` (`outputBufferDacTime` of each played block). The reference
so leads its echo by `lead` plus the acoustic and unreported converter delays, never lags it;
AEC3 finds the rest of the delay itself. Nothing played (before the speaker starts, or where it
stalled) is silence.

The timestamps jitter, so the offset between the two streams' sample counts is the median over
the last 2 s of blocks, followed when it moves by more than `FOLLOW_STEP` (drift; a stall the
timestamps report). Timestamps can also be wrong (PulseAudio's ALSA plugin hides its own
buffer; under load its timestamps sometimes moved by 50-700 ms after stalls though the audio did
not, sometimes with it), so the echo itself has the last word:
where the canceller's delay estimate finds the echo before its reference or more than
`MAX_ALIGNED` after it (a device change, a real stall, clock drift over minutes), the reference
moves onto the echo and the canceller starts afresh (a reset, reported once by the chat).
Within that window AEC3 follows delay changes itself.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE
from mimi_mlx.io.audio import Resampler

from .echo import LEAD, MAX_ALIGNED, REALIGN_MARGIN, Canceller


class EchoFrame(NamedTuple):
    """One 80 ms frame (FRAME_SIZE,) at 24 kHz on the microphone's timeline."""

    mic: np.ndarray  # the microphone as caught
    heard: np.ndarray  # the microphone without the echo (the canceller's output)
    reference: np.ndarray  # what the speaker played, as the canceller was given it


class EchoPath:
    """Pairs each microphone block with the speaker's output at the same time, cancels the echo
    and cuts 24 kHz frames. Fed and read on one thread (the callbacks only queue blocks).

    Args:
        canceller: the engine (a `Canceller`).
        in_rate, out_rate: the microphone's and the speaker's sample rates.
        lead: seconds the reference leads the microphone.
        max_wait_blocks: microphone blocks held back waiting for their reference before the
            missing part counts as silence (the speaker stalled).
    """

    RING_SECONDS = 8.0  # played audio kept
    HISTORY = 25  # blocks in the timestamps' median (2 s of 80 ms blocks)
    FOLLOW_STEP = 0.005  # seconds the median moves before the reference follows
    JUMP = 0.04  # seconds of a move that restarts the delay estimate

    def __init__(
        self,
        canceller: Canceller,
        in_rate: int,
        out_rate: int,
        lead: float = LEAD,
        max_wait_blocks: int = 3,
    ):
        self.canceller = canceller
        self.in_rate, self.out_rate, self.lead = in_rate, out_rate, lead
        self.ratio = out_rate / in_rate
        self.max_wait_blocks = max_wait_blocks
        self._ring = np.zeros(round(self.RING_SECONDS * out_rate), np.float32)
        self.played_count = 0  # output samples received so far
        self._stamps: deque[tuple[float, int]] = deque(maxlen=64)  # (dac time, first sample)
        self._mic: deque[tuple[float, np.ndarray]] = deque()
        self.mic_count = 0  # microphone samples paired so far
        self.offset: float | None = None  # played sample index at mic sample 0 (timestamps)
        self.correction = 0.0  # played samples added where the echo showed the timestamps off
        self._last_estimate: float | None = None
        self._estimates_seen = 0
        self._history: deque[float] = deque(maxlen=self.HISTORY)
        self.resets: list[str] = []  # why the canceller was reset, oldest first
        self.moves: list[str] = []  # the timestamps' jumps the reference followed
        self.silent_reference_samples = 0  # reference samples with nothing played (stalls)
        self._mic_rs = Resampler(in_rate, SAMPLE_RATE)
        self._ref_rs = Resampler(in_rate, SAMPLE_RATE)
        self._mic24 = np.zeros(0, np.float32)
        self._ref24 = np.zeros(0, np.float32)

    # -- feeding ------------------------------------------------------------------------------

    def add_played(self, dac_time: float, block: np.ndarray) -> None:
        """A block the output callback handed to the device, first sample at `dac_time`."""
        n = len(block)
        start = self.played_count % len(self._ring)
        first = min(n, len(self._ring) - start)
        self._ring[start : start + first] = block[:first]
        self._ring[: n - first] = block[first:]
        self._stamps.append((dac_time, self.played_count))
        self.played_count += n

    def add_mic(self, adc_time: float, block: np.ndarray) -> None:
        """A block the input callback captured, first sample at `adc_time`."""
        self._mic.append((adc_time, block))

    # -- reading -------------------------------------------------------------------------------

    def frames(self) -> list[EchoFrame]:
        """The frames now complete."""
        while self._mic:
            adc_time, block = self._mic[0]
            raw = self._raw_offset(adc_time)
            if raw is not None:  # wait for the reference to be played, unless it stalled
                offset = (raw if self.offset is None else self.offset) + self.correction
                end = offset + (self.mic_count + len(block) - 1) * self.ratio
                if end > self.played_count - 1 and len(self._mic) <= self.max_wait_blocks:
                    break
            self._mic.popleft()
            position = None
            if raw is not None:
                position = self._update(raw) + self.correction + self.mic_count * self.ratio
            reference = self._reference(position, len(block))
            self.mic_count += len(block)
            self._mic24 = _append(self._mic24, self._mic_rs, block)
            self._ref24 = _append(self._ref24, self._ref_rs, reference)
        out = []
        n = min(len(self._mic24), len(self._ref24)) // FRAME_SIZE
        for i in range(n):
            mic = self._mic24[i * FRAME_SIZE : (i + 1) * FRAME_SIZE]
            ref = self._ref24[i * FRAME_SIZE : (i + 1) * FRAME_SIZE]
            out.append(EchoFrame(mic, self.canceller.process(mic, ref), ref))
        self._mic24 = self._mic24[n * FRAME_SIZE :]
        self._ref24 = self._ref24[n * FRAME_SIZE :]
        self._check_delay()
        return out

    def _check_delay(self) -> None:
        """Where the echo shows the reference out of reach (after its echo, or too far ahead),
        move the reference onto the echo found and reset the canceller."""
        delay = self.canceller.delay_ms  # echo after the reference, less the lead
        count = self.canceller.estimates
        if delay is None or count == self._estimates_seen:
            return
        self._estimates_seen = count
        previous, self._last_estimate = self._last_estimate, delay
        lead_ms = 1000 * self.lead
        if -lead_ms + 5 <= delay <= 1000 * MAX_ALIGNED - lead_ms:
            return
        if previous is None or abs(previous - delay) > 10:
            return  # out of reach once: wait for the next estimate to agree
        self._last_estimate = None
        self.correction -= (delay - 1000 * REALIGN_MARGIN) / 1000 * self.out_rate
        where = "before" if delay < -lead_ms else "after"
        self.reset(f"the echo came {abs(delay + lead_ms):.0f} ms {where} its reference")

    def reset(self, reason: str) -> None:
        """Reset the canceller (`reason` is kept for the report)."""
        self.canceller.reset()
        self.resets.append(reason)

    def _raw_offset(self, adc_time: float) -> float | None:
        """The offset (played sample index at microphone sample 0) these timestamps give for
        the next microphone block (None: nothing played yet)."""
        if not self._stamps:
            return None
        t = adc_time + self.lead
        dac, first = self._stamps[0]
        for stamp in self._stamps:  # the latest played block starting before t
            if stamp[0] > t:
                break
            dac, first = stamp
        return first + (t - dac) * self.out_rate - self.mic_count * self.ratio

    def _update(self, raw: float) -> float:
        """Add one block's `raw` offset; returns the offset to use: the median of the last
        `HISTORY` blocks' (timestamps jitter), followed when it moves by more than
        `FOLLOW_STEP` (drift, a stall the timestamps saw). A move of more than `JUMP` also
        restarts the delay estimate, whose check then confirms or corrects it (timestamps can
        move when the audio did not: measured on PulseAudio under load)."""
        self._history.append(raw)
        median = float(np.sort(self._history)[len(self._history) // 2])  # one of them
        if self.offset is None:
            self.offset = median
        step = median - self.offset
        if abs(step) > self.FOLLOW_STEP * self.out_rate:
            if abs(step) > self.JUMP * self.out_rate:
                self.moves.append(f"{1000 * step / self.out_rate:+.0f} ms")
                self.canceller.forget_delay()
            self.offset = median
        return self.offset

    def _reference(self, position: float | None, n: int) -> np.ndarray:
        """The played samples at microphone rate from `position` on (silence where none)."""
        if position is None:
            self.silent_reference_samples += n
            return np.zeros(n, np.float32)
        if self.ratio == 1:
            index = np.arange(n) + round(position)
        else:
            index = position + np.arange(n) * self.ratio
        oldest = self.played_count - len(self._ring)
        valid = (index >= max(0, oldest)) & (index <= self.played_count - 1)
        self.silent_reference_samples += int(n - valid.sum())
        out = np.zeros(n, np.float32)
        if not valid.any():
            return out
        at = index[valid]
        if self.ratio == 1:
            out[valid] = self._ring[at.astype(np.int64) % len(self._ring)]
        else:  # linear interpolation between the two neighbouring played samples
            low = np.floor(at).astype(np.int64)
            frac = (at - low).astype(np.float32)
            high = np.minimum(low + 1, self.played_count - 1)
            size = len(self._ring)
            out[valid] = (1 - frac) * self._ring[low % size] + frac * self._ring[high % size]
        return out

    def stats(self) -> dict:
        return {
            **self.canceller.stats(),
            "resets": len(self.resets),
            "reset_reasons": self.resets[-5:],
            "timestamp_jumps_followed": self.moves[-5:],
            "silent_reference_ms": round(1000 * self.silent_reference_samples / self.in_rate),
        }


def _append(pending: np.ndarray, resampler, block: np.ndarray) -> np.ndarray:
    if resampler is not None:
        block = resampler.resample_chunk(np.asarray(block, np.float32))
    return np.concatenate([pending, np.asarray(block, np.float32)])
