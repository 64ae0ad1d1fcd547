"""Fixtures and helpers for the `moshi-mlx` app tests: a tiny checkpoint, speech, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
RATE = 24000
FRAME = 1920


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny random Moshi checkpoint folder in Kyutai's layout (float weights)."""
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_moshi") / "ckpt", seed=0)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """About 4 s of English speech from espeak-ng, 24 kHz float32 mono WAV."""
    folder = tmp_path_factory.mktemp("speech")
    return make_speech(folder / "speech.wav", "Hello Moshi, how are you today? Tell me a story.")


def make_speech(path: Path, text: str) -> Path:
    """espeak-ng speech at 24 kHz (a deterministic chirp train where espeak-ng is missing)."""
    raw = path.with_suffix(".22k.wav")
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
        import soxr

        audio, rate = sf.read(str(raw), dtype="float32")
        audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    else:
        t = np.arange(4 * RATE) / RATE
        audio = (0.3 * np.sin(2 * np.pi * (200 + 300 * (t % 0.5)) * t)).astype(np.float32)
    sf.write(str(path), audio, RATE, subtype="FLOAT")
    return path


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m moshi_mlx ARGS` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "moshi_mlx", *map(str, args)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read(path: Path) -> np.ndarray:
    audio, _ = sf.read(str(path), dtype="float32")
    return audio


def align(reference: np.ndarray, recorded: np.ndarray) -> int:
    """Offset of `reference` inside `recorded` that maximises their cross-correlation."""
    n = len(reference) + len(recorded)
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(reference, size))
    corr = np.fft.irfft(spectrum, size)[: len(recorded)]
    return int(np.argmax(corr))


def snr_db(reference: np.ndarray, measured: np.ndarray) -> float:
    """Signal-to-noise ratio of `measured` against `reference` (same length), in dB."""
    noise = np.sum((measured.astype(np.float64) - reference) ** 2)
    signal = np.sum(reference.astype(np.float64) ** 2)
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def block_snrs(reference: np.ndarray, measured: np.ndarray, block: int = FRAME) -> np.ndarray:
    """SNR (dB) of each whole block of `measured` against `reference`."""
    n = min(len(reference), len(measured)) // block
    return np.array(
        [
            snr_db(reference[i * block : (i + 1) * block], measured[i * block : (i + 1) * block])
            for i in range(n)
        ]
    )


def huge_checkpoint(tiny: Path, folder: Path, terabytes: float = 1.0) -> Path:
    """The tiny checkpoint with a sparse weights file whose header declares `terabytes` of bf16."""
    shutil.copytree(tiny, folder)
    count = int(terabytes * 1e12 / 2)
    header = json.dumps(
        {"weight": {"dtype": "BF16", "shape": [count], "data_offsets": [0, 2 * count]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    path = folder / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 2 * count)  # sparse: no disk used
    return folder
