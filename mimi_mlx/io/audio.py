"""Audio files in and out: any format soundfile reads, downmixed to mono, resampled with soxr.

Reading goes block by block (`iter_audio`), so a file longer than memory can be streamed;
`read_audio` is the same reader run to the end, so batch and streaming see identical samples.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .output_file import replace_on_success

READ_BLOCK = 65536  # source frames read at a time


class Resampler:
    """Streaming mono float32 resampling with soxr: the blocks of a signal in, the same samples
    out as one `soxr.resample` of the whole signal. Equal rates pass the blocks through."""

    def __init__(self, src_rate: int, dst_rate: int):
        self._stream = None
        if src_rate != dst_rate:
            self._stream = soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32")

    def resample_chunk(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """The next block (n,) at `dst_rate`; `last` flushes what soxr still holds."""
        block = np.asarray(block, np.float32)
        return block if self._stream is None else self._stream.resample_chunk(block, last=last)


class AudioError(ValueError):
    """An audio file that cannot be read or written. The message says which file and why."""


@dataclass(frozen=True)
class AudioInfo:
    """What a readable audio file holds, before any conversion."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate

    def resampled_length(self, sample_rate: int) -> int:
        """Number of samples `iter_audio` yields at `sample_rate` (soxr rounds to nearest)."""
        if sample_rate == self.sample_rate:
            return self.frames
        return round(self.frames * sample_rate / self.sample_rate)


def audio_info(path: str | Path) -> AudioInfo:
    """Check that `path` is a readable, non-empty audio file and describe it.

    Raises:
        AudioError: missing file, a folder, an empty or non-audio file, or no samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"no such file: {path}")
    if not path.is_file():
        raise AudioError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"empty file (0 bytes): {path}")
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioError(f"cannot read {path} as audio: {_reason(e)}") from e
    if info.frames <= 0 or info.channels <= 0 or info.samplerate <= 0:
        raise AudioError(f"no audio samples in {path}")
    return AudioInfo(path, info.samplerate, info.channels, info.frames, info.format)


def iter_audio(path: str | Path, sample_rate: int, block_samples: int) -> Iterator[np.ndarray]:
    """Read an audio file as mono float32 blocks at `sample_rate`.

    Channels are averaged; the rate is converted with soxr's streaming resampler (identical to
    its one-shot `soxr.resample`).

    Args:
        path: any file soundfile reads (WAV, FLAC, OGG, MP3, ...).
        sample_rate: output rate in Hz.
        block_samples: length of every yielded block except the last, which is shorter or equal.

    Yields:
        float32 arrays of shape (n,), 0 < n <= block_samples.

    Raises:
        AudioError: unreadable, empty or corrupt input, or non-finite samples.
    """
    info = audio_info(path)
    resampler = Resampler(info.sample_rate, sample_rate)
    pending = np.zeros(0, np.float32)
    try:
        with sf.SoundFile(str(info.path)) as f:
            while True:
                block = f.read(READ_BLOCK, dtype="float32", always_2d=True)
                last = len(block) < READ_BLOCK
                mono = block.mean(axis=1, dtype=np.float32) if info.channels > 1 else block[:, 0]
                if not np.isfinite(mono).all():
                    raise AudioError(f"{info.path} holds NaN or infinite samples")
                mono = resampler.resample_chunk(mono, last=last)
                pending = np.concatenate([pending, mono]) if len(pending) else mono
                while len(pending) >= block_samples:
                    yield pending[:block_samples]
                    pending = pending[block_samples:]
                if last:
                    break
    except (sf.SoundFileError, RuntimeError) as e:
        raise AudioError(f"cannot read {info.path}: {_reason(e)}") from e
    if len(pending):
        yield pending


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Read a whole audio file as mono float32 at `sample_rate` (see `iter_audio`)."""
    blocks = list(iter_audio(path, sample_rate, READ_BLOCK))
    audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if len(audio) == 0:
        raise AudioError(f"no audio samples in {path}")
    return audio


def output_format(path: str | Path, float32: bool = False) -> tuple[str, str]:
    """(format, subtype) for an output file, from its suffix (`.wav`, `.flac`, `.ogg`, ...).

    WAV is 16-bit PCM unless `float32`; other formats use soundfile's default encoding.

    Raises:
        AudioError: a suffix that names no format soundfile can write.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = {"aif": "AIFF", "aiff": "AIFF", "opus": "OGG"}.get(suffix, suffix.upper())
    if fmt not in sf.available_formats() or fmt == "RAW":
        raise AudioError(f"cannot tell the audio format of {path}: name it .wav (or .flac, .ogg)")
    if fmt == "WAV":
        return fmt, "FLOAT" if float32 else "PCM_16"
    if suffix == "opus":
        return fmt, "OPUS"
    subtype = sf.default_subtype(fmt)
    if float32 and sf.check_format(fmt, "FLOAT"):
        subtype = "FLOAT"
    return fmt, subtype


class AudioWriter:
    """Write mono audio block by block; the file appears at `path` only when closed cleanly.

    Use as a context manager. Samples are clipped to [-1, 1] for integer encodings.
    """

    def __init__(self, path: str | Path, sample_rate: int, float32: bool = False):
        self.path = Path(path)
        self.format, self.subtype = output_format(self.path, float32)
        self.sample_rate = sample_rate
        self.frames = 0
        self._commit = None
        self._file = None

    def __enter__(self) -> AudioWriter:
        self._commit = replace_on_success(self.path)
        tmp = self._commit.__enter__()
        try:
            self._file = sf.SoundFile(
                str(tmp), "w", self.sample_rate, 1, self.subtype, format=self.format
            )
        except (sf.SoundFileError, RuntimeError) as e:
            self._commit.__exit__(type(e), e, e.__traceback__)
            raise AudioError(f"cannot write {self.path}: {_reason(e)}") from e
        return self

    def write(self, audio: np.ndarray) -> None:
        """Append samples (n,) to the file."""
        audio = np.asarray(audio, np.float32).reshape(-1)
        if self.subtype not in ("FLOAT", "DOUBLE"):
            audio = np.clip(audio, -1.0, 1.0)
        try:
            self._file.write(audio)
        except (sf.SoundFileError, RuntimeError) as e:
            raise self._write_error(e) from e
        self.frames += len(audio)

    def _write_error(self, e: Exception) -> AudioError:
        """libsndfile says "System error." for a full disk: say which."""
        from .output_file import disk_full

        reason = os.strerror(errno.ENOSPC) if disk_full(self.path) else _reason(e)
        return AudioError(f"cannot write {self.path}: {reason}")

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()
        except (sf.SoundFileError, RuntimeError) as e:
            if exc is None:  # else the block's own error is the one to report
                error = self._write_error(e)
                self._commit.__exit__(AudioError, error, None)  # removes the partial file
                raise error from e
        self._commit.__exit__(exc_type, exc, tb)


def write_audio(
    path: str | Path, audio: np.ndarray, sample_rate: int, float32: bool = False
) -> None:
    """Write mono audio (n,) to `path`, in the format its suffix names (16-bit WAV by default).

    Args:
        path: output file; written to a temporary name and renamed when complete.
        audio: float samples in [-1, 1].
        sample_rate: rate in Hz.
        float32: write 32-bit float samples instead of 16-bit integers (WAV, FLAC has none).
    """
    with AudioWriter(path, sample_rate, float32) as writer:
        writer.write(audio)


def _reason(e: Exception) -> str:
    """libsndfile's message without soundfile's "Error opening '<path>': " prefix."""
    text = str(e)
    return text.split(": ", 1)[1] if text.startswith("Error opening") and ": " in text else text
