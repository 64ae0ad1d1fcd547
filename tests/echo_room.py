"""A simulated laptop room for the echo canceller, and the measures taken on it.

Used by `scripts/bench.py aec` (every engine on the same rooms) and by the echo tests (the same
room between the virtual speaker and the virtual microphone). The echo of what the speaker plays
is: a mild loudspeaker nonlinearity, an optional clock drift between speaker and microphone, a
decaying random room response, a bulk delay and a gain (the echo's level over the user's).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 24000
SPEECH_DB = -26.0  # level of both voices while they speak (dBFS)
NOISE_DB = -50.0  # the microphone's noise floor relative to the voices


@dataclass(frozen=True)
class Room:
    """An echo path: bulk delay (s), echo gain over the user's level (dB; None: no echo, as
    with headphones), drift (ppm)."""

    delay: float
    gain_db: float | None
    drift_ppm: float = 0.0
    seed: int = 0

    @property
    def name(self) -> str:
        drift = f", {self.drift_ppm:g} ppm" if self.drift_ppm else ""
        return f"{1000 * self.delay:.0f} ms, {self.gain_db:+g} dB{drift}"


def room_response(room: Room, rate: int = RATE, rt60: float = 0.3, length: float = 0.25):
    """Direct path, a few early reflections and an exponentially decaying random tail (n,)."""
    rng = np.random.default_rng(room.seed)
    n = round(length * rate)
    h = np.zeros(n)
    h[0] = 1.0
    for _ in range(6):  # early reflections, 2-20 ms
        h[rng.integers(round(0.002 * rate), round(0.02 * rate))] += rng.uniform(-0.6, 0.6)
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * 0.05 * np.exp(-6.9 * t / rt60)
    tail[: round(0.005 * rate)] = 0
    h += tail
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


class EchoPath:
    """The room applied to a stream, block by block (the live tests run it in real time).

    `process(block)` returns the echo of the speaker's `block` as the microphone hears it: the
    bulk delay comes first (silence); with drift, a resampler makes 1 + ppm as many samples.
    """

    def __init__(self, room: Room, rate: int = RATE):
        self.h = room_response(room, rate) * np.float32(10 ** (room.gain_db / 20))
        self.tail = np.zeros(len(self.h) - 1, np.float32)
        self.delay = np.zeros(round(room.delay * rate), np.float32)
        self.drift = None
        if room.drift_ppm:
            self.drift = soxr.ResampleStream(rate, rate * (1 + room.drift_ppm * 1e-6), 1, "float32")

    def process(self, block: np.ndarray) -> np.ndarray:
        x = np.tanh(2 * np.asarray(block, np.float32)) / 2  # a small loudspeaker
        if self.drift is not None:
            x = self.drift.resample_chunk(x)
        y = np.convolve(x, self.h).astype(np.float32)  # (len(x) + len(h) - 1,)
        y[: len(self.tail)] += self.tail
        out, self.tail = y[: len(x)], y[len(x) :]
        if len(self.delay):
            out, self.delay = np.concatenate([self.delay, out]), self.delay[:0]
        return out


def echo_of(far: np.ndarray, room: Room, rate: int = RATE) -> np.ndarray:
    """The echo of a whole signal (the same as `EchoPath` block by block), len(far) samples."""
    path = EchoPath(room, rate)
    out = np.concatenate([path.process(far[i : i + 1920]) for i in range(0, len(far), 1920)])
    return np.pad(out, (0, max(0, len(far) - len(out))))[: len(far)]


def speech(text: str, voice: str, folder: Path | None = None) -> np.ndarray:
    """espeak-ng speech at 24 kHz, at `SPEECH_DB` while voiced (a chirp train without espeak)."""
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            raw = Path(tmp) / "speech.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True)
            audio, rate = sf.read(str(raw), dtype="float32")
        audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    else:
        t = np.arange(4 * RATE) / RATE
        audio = (np.sin(2 * np.pi * (200 + 300 * (t % 0.5)) * t)).astype(np.float32)
    return set_level(audio, SPEECH_DB)


def set_level(x: np.ndarray, db: float) -> np.ndarray:
    """`x` scaled so that its active 20 ms frames average `db` dBFS."""
    frames = x[: len(x) // 480 * 480].reshape(-1, 480)
    power = (frames.astype(np.float64) ** 2).mean(axis=1)
    active = power[power > power.max() * 1e-3]
    return (x * np.sqrt(10 ** (db / 10) / active.mean())).astype(np.float32)


def fill(voice: np.ndarray, seconds: float) -> np.ndarray:
    """`voice` repeated (with 0.3 s pauses) to exactly `seconds`."""
    gap = np.zeros(round(0.3 * RATE), np.float32)
    n = round(seconds * RATE)
    out = np.zeros(0, np.float32)
    while len(out) < n:
        out = np.concatenate([out, voice, gap])
    return out[:n]


# -- measures ---------------------------------------------------------------------------------

FRAME = 480  # 20 ms at 24 kHz


def frame_power(x: np.ndarray, frame: int = FRAME) -> np.ndarray:
    n = len(x) // frame
    return (x[: n * frame].astype(np.float64).reshape(n, frame) ** 2).mean(axis=1)


def active(x: np.ndarray, below_db: float = 30.0, frame: int = FRAME) -> np.ndarray:
    """Frames of `x` within `below_db` of its loudest (bool per frame)."""
    p = frame_power(x, frame)
    return p > p.max() * 10 ** (-below_db / 10) if p.max() > 0 else np.zeros(len(p), bool)


def erle_db(mic: np.ndarray, out: np.ndarray, mask: np.ndarray, frame: int = FRAME) -> float:
    """Echo reduction: microphone over output power, summed over the masked frames (dB)."""
    m, o = frame_power(mic, frame), frame_power(out, frame)
    n = min(len(m), len(o), len(mask))
    sel = mask[:n]
    return float(10 * np.log10(m[:n][sel].sum() / max(o[:n][sel].sum(), 1e-20)))


def level_db(out: np.ndarray, clean: np.ndarray, mask: np.ndarray, frame: int = FRAME) -> float:
    """How much louder (dB) `out` is than `clean` over the masked frames (0: kept, < 0: ducked)."""
    return -erle_db(clean, out, mask, frame)


def band_db(x: np.ndarray, count: int = 24, frame: int = FRAME) -> np.ndarray:
    """Log band energies (frames, bands) on 40 ms windows every 20 ms, 100 Hz - 8 kHz."""
    n = len(x) // frame - 1
    window = np.hanning(2 * frame)
    idx = np.arange(2 * frame)[None, :] + frame * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2
    freqs = np.fft.rfftfreq(2 * frame, 1 / RATE)
    edges = np.geomspace(100, 8000, count + 1)
    bands = [(freqs >= lo) & (freqs < hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    out = np.stack([spec[:, band].sum(axis=1) for band in bands], axis=1)
    return 10 * np.log10(out + 1e-10)


def spectral_distance(out: np.ndarray, clean: np.ndarray, mask: np.ndarray) -> float:
    """RMS difference (dB) of the band energies of `out` and `clean` over the masked frames,
    bands within 40 dB of the clean frame's loudest (the voice, not the silence between)."""
    a, b = band_db(out), band_db(clean)
    n = min(len(a), len(b), len(mask))
    a, b = a[:n][mask[:n]], b[:n][mask[:n]]
    keep = b > b.max(axis=1, keepdims=True) - 40
    return float(np.sqrt(np.mean((a - b)[keep] ** 2)))


def best_lag(reference: np.ndarray, signal: np.ndarray, max_lag: int) -> int:
    """Lag in 0..max_lag at which `signal` best matches `reference` (signal[t] ~ ref[t - lag])."""
    n = len(reference) + len(signal)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(signal, size) * np.conj(np.fft.rfft(reference, size)), size)
    return int(np.argmax(corr[: max_lag + 1]))


class LiveRoom:
    """The room between PulseAudio's virtual speaker and microphone, in real time.

    A thread reads the speaker's monitor (`parec`), applies `EchoPath`, adds the user's speech
    (`say`) and a noise floor, and plays the sum into the virtual microphone (`pacat`). It keeps
    every track on the microphone's timeline: `mic` (what it played), `echo`, `user`.
    """

    BLOCK = 240  # 10 ms

    def __init__(self, pulse, room: Room):
        import threading

        self.path = EchoPath(room) if room.gain_db is not None else None
        raw = ["--raw", "--format=float32le", f"--rate={RATE}", "--channels=1"]
        self.reader = subprocess.Popen(
            ["parec", "--device=spk.monitor", "--latency-msec=10", *raw],
            env=pulse.env,
            stdout=subprocess.PIPE,
        )
        self.writer = subprocess.Popen(
            ["pacat", "--playback", "--device=mic", "--latency-msec=100", *raw],
            env=pulse.env,
            stdin=subprocess.PIPE,
        )
        self.noise = np.random.default_rng(7)
        self.tracks: dict[str, list[np.ndarray]] = {"mic": [], "echo": [], "user": [], "spk": []}
        self.position = 0  # samples written to the microphone
        self._user = np.zeros(0, np.float32)  # user speech not yet played
        self._user_lock = threading.Lock()
        self._echo = np.zeros(0, np.float32)
        self.loud = 0.0  # seconds the speaker has been loud (> 0) or quiet (< 0)
        for proc in (self.reader, self.writer):
            raise_priority(proc.pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def say(self, audio: np.ndarray) -> None:
        """Start the user's `audio` at the microphone now (on top of what is still playing)."""
        with self._user_lock:
            n = max(len(self._user), len(audio))
            self._user = np.pad(self._user, (0, n - len(self._user))) + np.pad(
                audio, (0, n - len(audio))
            )

    def _run(self) -> None:
        import threading

        raise_priority(threading.get_native_id())
        size = self.BLOCK * 4
        while not self._stop.is_set():
            data = self.reader.stdout.read(size)
            if not data:
                break
            spk = np.frombuffer(data, "<f4").copy()
            loud = np.abs(spk).max() > 1e-3
            step = len(spk) / RATE
            self.loud = (max(self.loud, 0) + step) if loud else (min(self.loud, 0) - step)
            echo = self.path.process(spk) if self.path is not None else np.zeros_like(spk)
            self._echo = np.concatenate([self._echo, echo])
            n = len(spk)  # the microphone runs at the speaker's pace (the drift stays in echo)
            echo, self._echo = self._echo[:n], self._echo[n:]
            echo = np.pad(echo, (0, n - len(echo)))
            with self._user_lock:
                user, self._user = self._user[:n], self._user[n:]
            user = np.pad(user, (0, n - len(user)))
            noise = self.noise.standard_normal(n).astype(np.float32)
            noise *= np.float32(10 ** ((SPEECH_DB + NOISE_DB) / 20))
            mic = (echo + user + noise).astype(np.float32)
            try:
                self.writer.stdin.write(mic.astype("<f4").tobytes())
                self.writer.stdin.flush()
            except (BrokenPipeError, ValueError):
                break
            for name, x in (("mic", mic), ("echo", echo), ("user", user), ("spk", spk)):
                self.tracks[name].append(x)
            self.position += n

    def track(self, name: str) -> np.ndarray:
        parts = self.tracks[name]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def stop(self) -> None:
        self._stop.set()
        for proc in (self.reader, self.writer):
            proc.terminate()
        for proc in (self.reader, self.writer):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)


def raise_priority(task: int) -> None:
    """Real-time audio on a shared, loaded machine: a room does not stall, the room's thread and
    pipes would, and each stall of the stream into the microphone adds its length to the echo's
    delay for good; the chat's own streams stall too (on a laptop it is the app in front).
    Where allowed (root), run them at a higher priority (nice -10; threads included)."""
    import os

    try:
        os.setpriority(os.PRIO_PROCESS, task, -10)
    except OSError:
        pass
