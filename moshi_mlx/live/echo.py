"""Echo cancellation: what the speaker played, taken out of what the microphone hears.

On a laptop without headphones Moshi would hear itself. The canceller is WebRTC's AEC3 (from the
`pywebrtc-audio` wheel; chosen by `scripts/bench.py aec`) on the 24 kHz frames Moshi hears.

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

`Canceller` is the engine on aligned frames (the offline `moshi-mlx echo-cancel` uses it too);
`EchoPath` is the live pairing, driven by `AudioIO` on the caller's thread.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import soxr

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE

ENGINE = "WebRTC AEC3 (pywebrtc-audio)"
LEAD = 0.02  # seconds the reference leads the microphone (guards against timestamp errors)
MAX_DELAY = 1.0  # seconds the delay estimate searches, after and before the reference
MAX_ALIGNED = 0.45  # seconds after the reference beyond which the echo is re-aligned
ESTIMATE_WINDOW = 25  # frames (2 s) behind the delay and reduction estimates
ESTIMATE_EVERY = 6  # frames between two delay estimates (about 0.5 s)
REALIGN_MARGIN = 0.03  # seconds after the reference plus lead where a re-aligned echo lands
ACTIVE_DB = -50.0  # a reference frame at least this loud (dBFS) is "Moshi speaking"


class EchoCancelError(RuntimeError):
    """The echo canceller cannot run. The message says what to install."""


def check_engine() -> None:
    """Fail early (before a long model load) if the engine is not installed."""
    _engine_class()


def _engine_class():
    try:
        from pywebrtc_audio import AudioProcessor
    except ImportError as e:
        raise EchoCancelError(
            f"echo cancellation needs pywebrtc-audio ({e}): `pip install pywebrtc-audio`, "
            "or run with --echo-cancel off"
        ) from e
    return AudioProcessor


def _engine(rate: int):
    return _engine_class()(sample_rate=rate, echo_cancellation=True)


def power_db(x: np.ndarray) -> float:
    """Mean power of `x` in dBFS (-120 for silence)."""
    p = float(np.mean(np.square(x, dtype=np.float64))) if len(x) else 0.0
    return 10 * np.log10(max(p, 1e-12))


SIGNIFICANT = 6.0  # a correlation peak this many times its noise floor's expected maximum
MIN_OVERLAP = 1.0  # seconds of played audio that must overlap the microphone for an echo


def find_delay(reference: np.ndarray, mic: np.ndarray, max_lag: int, min_lag: int = 0):
    """The lag (samples) at which `reference` best explains `mic`, and the peak's significance.

    GCC-PHAT over lags `min_lag..max_lag` (mic[t] ~ reference[t - lag]); the significance is
    `peak_significance` (above `SIGNIFICANT`: an echo).
    """
    n = len(mic) + len(reference)
    size = 1 << (n - 1).bit_length()
    cross = np.fft.rfft(mic, size) * np.conj(np.fft.rfft(reference, size))
    cross /= np.abs(cross) + 1e-12
    corr = np.fft.irfft(cross, size)
    lags = np.arange(min_lag, max_lag + 1)
    values = np.abs(corr[lags % size])
    best = int(np.argmax(values))
    return int(lags[best]), peak_significance(values)


def peak_significance(values: np.ndarray) -> float:
    """How far the highest of `values` (|correlation| per lag) stands above what noise alone
    gives at its best: the peak over the expected maximum of as many half-normal values as the
    noise floor's (sigma from the median). Unrelated speech gives about 1-3, an echo 10-50."""
    sigma = np.median(values) / 0.6745 + 1e-12
    noise_max = sigma * np.sqrt(2 * np.log(2 * len(values)))
    return float(values.max() / noise_max)


def overlap_seconds(played: np.ndarray, mic_length: int, lag: int, rate: int) -> float:
    """Seconds of non-silent `played` audio that land within the microphone's `mic_length`
    samples when shifted by `lag` (mic[t] ~ played[t - lag])."""
    lo, hi = max(0, lag), min(mic_length, len(played) + lag)
    if hi <= lo:
        return 0.0
    part = played[lo - lag : hi - lag]
    n = len(part) // FRAME_SIZE * FRAME_SIZE
    frames = part[:n].reshape(-1, FRAME_SIZE)
    loud = sum(power_db(f) > ACTIVE_DB for f in frames)
    return loud * FRAME_SIZE / rate


class Canceller:
    """AEC3 on 24 kHz frames, with running estimates of the echo delay and the echo reduction.

    `process(mic, reference)` takes the microphone and the aligned reference, each (n,) float32
    (any n; the chat gives 80 ms frames), and returns the microphone without the echo (n,),
    about 10 ms later (AEC3's own delay).

    Args:
        rate: sample rate in Hz.
        lead: seconds the reference leads the microphone on top of the echo delay (subtracted
            from the reported delay).
    """

    def __init__(self, rate: int = SAMPLE_RATE, lead: float = LEAD):
        self.rate, self.lead = rate, lead
        self._aec = _engine(rate)
        self._mic: deque[np.ndarray] = deque(maxlen=ESTIMATE_WINDOW)
        self._ref: deque[np.ndarray] = deque(maxlen=ESTIMATE_WINDOW)
        self._reduction: deque[float] = deque(maxlen=ESTIMATE_WINDOW)
        self._ref_db: deque[float] = deque(maxlen=round(MAX_DELAY / 0.08) + 1)
        self._frames = 0
        self.delay_ms: float | None = None  # echo delay after the reference's lead
        self.estimates = 0  # delay estimates made (each updates `delay_ms`)
        self.cpu_seconds = 0.0
        self.frames = 0

    def reset(self) -> None:
        """Forget the echo path (the echo moved out of reach: a device change, a stall)."""
        self._aec.reset()
        self._reduction.clear()
        self._ref_db.clear()
        self.forget_delay()

    def forget_delay(self) -> None:
        """Start the delay estimate afresh (the reference was moved)."""
        self._mic.clear()
        self._ref.clear()
        self.delay_ms = None

    def process(self, mic: np.ndarray, reference: np.ndarray) -> np.ndarray:
        mic = np.ascontiguousarray(mic, np.float32)
        reference = np.ascontiguousarray(reference, np.float32)
        t = time.perf_counter()
        out = np.asarray(self._aec.process(mic, reference), np.float32).reshape(-1)
        self.cpu_seconds += time.perf_counter() - t
        self.frames += 1
        self._mic.append(mic)
        self._ref.append(reference)
        # reduction of this frame if Moshi spoke just before (the echo arrives late)
        self._ref_db.append(power_db(reference))
        mic_db = power_db(mic)
        if max(self._ref_db) > ACTIVE_DB and mic_db > ACTIVE_DB:
            self._reduction.append(mic_db - power_db(out))
        self._frames += 1
        if self._frames % ESTIMATE_EVERY == 0:
            self._estimate_delay()
        return out

    def _estimate_delay(self) -> None:
        # on 8 kHz copies (3-sample means): enough for a delay, a tenth of the cost
        ref, mic = _decimate(np.concatenate(self._ref)), _decimate(np.concatenate(self._mic))
        if power_db(ref) < ACTIVE_DB or power_db(mic) < ACTIVE_DB:
            return
        reach = round(MAX_DELAY * self.rate / 3)
        lag, significance = find_delay(ref, mic, reach, -reach)
        if significance > SIGNIFICANT:
            self.delay_ms = 1000 * 3 * lag / self.rate - 1000 * self.lead
            self.estimates += 1

    @property
    def reduction_db(self) -> float | None:
        """Median echo reduction (dB) over the recent frames where Moshi spoke (lower while the
        user talks too: their voice is kept)."""
        return float(np.median(self._reduction)) if self._reduction else None

    def stats(self) -> dict:
        return {
            "engine": ENGINE,
            "delay_ms": None if self.delay_ms is None else round(self.delay_ms, 1),
            "reduction_db": None if self.reduction_db is None else round(self.reduction_db, 1),
            "cpu_ms_per_frame": round(1000 * self.cpu_seconds / max(1, self.frames), 3),
        }


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
        self._mic_rs = _resampler(in_rate)
        self._ref_rs = _resampler(in_rate)
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

    def frames(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The (raw microphone, echo cancelled) 24 kHz frames (FRAME_SIZE,) now complete."""
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
            out.append((mic, self.canceller.process(mic, ref)))
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


def _decimate(x: np.ndarray) -> np.ndarray:
    n = len(x) // 3
    return x[: 3 * n].reshape(n, 3).mean(axis=1)


def _resampler(rate: int):
    if rate == SAMPLE_RATE:
        return None
    return soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")


def _append(pending: np.ndarray, resampler, block: np.ndarray) -> np.ndarray:
    if resampler is not None:
        block = resampler.resample_chunk(np.asarray(block, np.float32))
    return np.concatenate([pending, np.asarray(block, np.float32)])


OFFLINE_SEARCH = 120.0  # seconds of each file the offline delay search looks at


@dataclass
class OfflineResult:
    """What `cancel_recording` did: the output and what it found."""

    audio: np.ndarray  # (n,) the microphone without the echo, 24 kHz
    delay_ms: float | None  # where the echo of PLAYED is in MIC (None: no echo found)
    reduction_db: float | None  # median echo reduction of the frames where PLAYED was heard
    echo_seconds: float  # seconds of MIC where PLAYED was heard


def cancel_recording(mic: np.ndarray, played: np.ndarray, lead: float = LEAD) -> OfflineResult:
    """The chat's cancellation applied to a recorded microphone and what was played.

    Both (n,) float32 at 24 kHz. The recordings carry no timestamps, so the reference is placed
    by the bulk delay GCC-PHAT finds between them (the first `OFFLINE_SEARCH` s), `lead` ahead
    of its echo as in the chat; then the same `Canceller` runs on the same 80 ms frames.
    Without a significant peak over `MIN_OVERLAP` s of played audio there is no echo to take
    out, and the microphone is returned as recorded.
    """
    rate = SAMPLE_RATE
    n = round(OFFLINE_SEARCH * rate)
    a, b = _decimate(played[:n]), _decimate(mic[:n])
    lag, significance = find_delay(a, b, len(b) - 1, -(len(a) - 1))
    lag *= 3
    found = (
        significance > SIGNIFICANT and overlap_seconds(played, len(mic), lag, rate) >= MIN_OVERLAP
    )
    if not found:  # no echo: the microphone stays as recorded
        return OfflineResult(mic.astype(np.float32), None, None, 0.0)
    shift = lag - round(lead * rate)  # reference[t] = played[t - shift]
    reference = np.zeros(len(mic), np.float32)
    lo, hi = max(0, shift), min(len(mic), len(played) + shift)
    if hi > lo:
        reference[lo:hi] = played[lo - shift : hi - shift]
    canceller = Canceller(rate, lead)
    padded = np.pad(mic, (0, -len(mic) % FRAME_SIZE)).astype(np.float32)
    reference = np.pad(reference, (0, len(padded) - len(reference)))
    out = np.concatenate(
        [
            canceller.process(padded[i : i + FRAME_SIZE], reference[i : i + FRAME_SIZE])
            for i in range(0, len(padded), FRAME_SIZE)
        ]
    )[: len(mic)]
    # the reduction where the echo is: frames whose reference, `lead` earlier, was not silent
    k = round(lead * rate)
    heard = [
        i
        for i in range(0, len(mic) - FRAME_SIZE + 1, FRAME_SIZE)
        if power_db(reference[max(0, i - k) : i + FRAME_SIZE - k]) > ACTIVE_DB
    ]
    reduction = None
    if heard:  # the median frame, as the chat's estimate (robust to double talk)
        m, o = mic[: len(out)], out
        reduction = np.median(
            [power_db(m[i : i + FRAME_SIZE]) - power_db(o[i : i + FRAME_SIZE]) for i in heard]
        )
    return OfflineResult(
        out,
        1000 * lag / rate,
        None if reduction is None else float(reduction),
        len(heard) * FRAME_SIZE / rate,
    )
