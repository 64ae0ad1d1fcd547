"""Echo cancellation: what the speaker played, taken out of what the microphone hears.

On a laptop without headphones Moshi would hear itself. The canceller is WebRTC's AEC3 (from the
`pywebrtc-audio` wheel; chosen by `scripts/bench.py aec`) on the 24 kHz frames Moshi hears.

`Canceller` is the engine on aligned frames, with running estimates of the echo delay and
reduction; `echo_path.EchoPath` aligns the live streams for it (driven by `AudioIO` on the
caller's thread) and `cancel_recording` aligns recorded files (`moshi-mlx echo-cancel`).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np

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
        ref, mic = decimate(np.concatenate(self._ref)), decimate(np.concatenate(self._mic))
        if power_db(ref) < ACTIVE_DB or power_db(mic) < ACTIVE_DB:
            return
        reach = round(MAX_DELAY * self.rate / DECIMATION)
        lag, significance = find_delay(ref, mic, reach, -reach)
        if significance > SIGNIFICANT:
            self.delay_ms = 1000 * DECIMATION * lag / self.rate - 1000 * self.lead
            self.estimates += 1

    @property
    def echo_delay(self) -> float | None:
        """Seconds the echo comes after the reference in the microphone (None: not found)."""
        return None if self.delay_ms is None else self.delay_ms / 1000 + self.lead

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


DECIMATION = 3  # the delay searches run on 8 kHz copies


def decimate(x: np.ndarray) -> np.ndarray:
    """`x` at a third of its rate (means of 3 samples: enough for a delay search)."""
    n = len(x) // DECIMATION
    return x[: DECIMATION * n].reshape(n, DECIMATION).mean(axis=1)


OFFLINE_SEARCH = 120.0  # seconds of each file the offline delay search looks at


@dataclass
class CancelledRecording:
    """What `cancel_recording` did: the output and what it found."""

    audio: np.ndarray  # (n,) the microphone without the echo, 24 kHz
    delay_ms: float | None  # where the echo of PLAYED is in MIC (None: no echo found)
    reduction_db: float | None  # median echo reduction of the frames where PLAYED was heard
    echo_seconds: float  # seconds of MIC where PLAYED was heard


def cancel_recording(mic: np.ndarray, played: np.ndarray, lead: float = LEAD) -> CancelledRecording:
    """The chat's cancellation applied to a recorded microphone and what was played.

    Both (n,) float32 at 24 kHz. The recordings carry no timestamps, so the reference is placed
    by the bulk delay GCC-PHAT finds between them (the first `OFFLINE_SEARCH` s), `lead` ahead
    of its echo as in the chat; then the same `Canceller` runs on the same 80 ms frames.
    Without a significant peak over `MIN_OVERLAP` s of played audio there is no echo to take
    out, and the microphone is returned as recorded.
    """
    rate = SAMPLE_RATE
    n = round(OFFLINE_SEARCH * rate)
    a, b = decimate(played[:n]), decimate(mic[:n])
    lag, significance = find_delay(a, b, len(b) - 1, -(len(a) - 1))
    lag *= DECIMATION
    found = (
        significance > SIGNIFICANT and overlap_seconds(played, len(mic), lag, rate) >= MIN_OVERLAP
    )
    if not found:  # no echo: the microphone stays as recorded
        return CancelledRecording(mic.astype(np.float32), None, None, 0.0)
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
    return CancelledRecording(
        out,
        1000 * lag / rate,
        None if reduction is None else float(reduction),
        len(heard) * FRAME_SIZE / rate,
    )
