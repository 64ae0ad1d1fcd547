"""The codes file: Mimi codes plus what is needed to decode them, in one `.safetensors` file.

Layout (format version 1): one tensor `codes` of shape (num_codebooks, num_frames), uint16 when
the cardinality allows it (else int32), and string metadata:

    format          "mimi-codes"
    version         "1"
    sample_rate     audio rate in Hz (24000)
    frame_rate      code frames per second (12.5)
    frame_size      samples per frame (1920)
    num_codebooks   rows of `codes`
    cardinality     codewords per codebook (2048); every code is in 0..cardinality-1
    num_samples     length of the encoded audio at `sample_rate`; the decoder trims to it
    checkpoint      the checkpoint the codes were made with (hub repo id or path)
    source_sample_rate  rate of the original file (information only)

Everything is checked when the file is written and when it is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io.output_file import replace_on_success

FORMAT_NAME = "mimi-codes"
FORMAT_VERSION = 1
TENSOR = "codes"


class CodesFileError(ValueError):
    """A codes file that is missing, unreadable or inconsistent. The message says why."""


@dataclass
class MimiCodes:
    """Codes of one mono recording and the facts needed to decode them.

    Attributes:
        codes: (num_codebooks, num_frames) integer codes.
        num_samples: length of the encoded audio at `sample_rate`.
        sample_rate: audio rate in Hz.
        frame_rate: code frames per second.
        cardinality: codewords per codebook.
        checkpoint: the checkpoint the codes were made with.
        source_sample_rate: rate of the original file, if known.
    """

    codes: np.ndarray
    num_samples: int
    sample_rate: int = 24000
    frame_rate: float = 12.5
    cardinality: int = 2048
    checkpoint: str = ""
    source_sample_rate: int | None = None

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes)
        self.validate()

    @property
    def num_codebooks(self) -> int:
        return self.codes.shape[0]

    @property
    def num_frames(self) -> int:
        return self.codes.shape[1]

    @property
    def frame_size(self) -> int:
        """Samples per code frame."""
        return round(self.sample_rate / self.frame_rate)

    @property
    def duration(self) -> float:
        """Length of the encoded audio in seconds."""
        return self.num_samples / self.sample_rate

    def validate(self) -> None:
        """Check shapes, ranges and metadata for consistency.

        Raises:
            CodesFileError: naming the first problem found.
        """
        c = self.codes
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise CodesFileError(
                f"codes must be (codebooks, frames) with at least one of each; got shape {c.shape}"
            )
        if not np.issubdtype(c.dtype, np.integer):
            raise CodesFileError(f"codes must be integers, not {c.dtype}")
        if self.sample_rate <= 0 or self.frame_rate <= 0 or self.cardinality <= 0:
            raise CodesFileError(
                f"sample_rate, frame_rate and cardinality must be positive; got "
                f"{self.sample_rate}, {self.frame_rate}, {self.cardinality}"
            )
        if self.cardinality > 2**31:
            raise CodesFileError(f"cardinality {self.cardinality} is over 2**31")
        if not math.isclose(self.frame_size * self.frame_rate, self.sample_rate):
            raise CodesFileError(
                f"sample_rate {self.sample_rate} is not a whole number of frames at "
                f"frame_rate {self.frame_rate}"
            )
        lo, hi = int(c.min()), int(c.max())
        if lo < 0 or hi >= self.cardinality:
            raise CodesFileError(
                f"codes out of range: found {lo}..{hi}, expected 0..{self.cardinality - 1}"
            )
        expected = math.ceil(self.num_samples / self.frame_size)
        if self.num_samples <= 0 or expected != self.num_frames:
            raise CodesFileError(
                f"{self.num_frames} frames do not match num_samples {self.num_samples} "
                f"({expected} frames of {self.frame_size} samples)"
            )

    def metadata(self) -> dict[str, str]:
        """The file's string metadata."""
        meta = {
            "format": FORMAT_NAME,
            "version": str(FORMAT_VERSION),
            "sample_rate": str(self.sample_rate),
            "frame_rate": repr(float(self.frame_rate)),
            "frame_size": str(self.frame_size),
            "num_codebooks": str(self.num_codebooks),
            "cardinality": str(self.cardinality),
            "num_samples": str(self.num_samples),
            "checkpoint": self.checkpoint,
        }
        if self.source_sample_rate is not None:
            meta["source_sample_rate"] = str(self.source_sample_rate)
        return meta


def save_codes(path: str | Path, codes: MimiCodes) -> None:
    """Write a codes file (validated first; the file appears only when complete)."""
    from safetensors.numpy import save_file

    codes.validate()
    dtype = np.uint16 if codes.cardinality <= 2**16 else np.int32
    tensors = {TENSOR: np.ascontiguousarray(codes.codes.astype(dtype))}
    with replace_on_success(path) as tmp:
        save_file(tensors, str(tmp), metadata=codes.metadata())


def load_codes(path: str | Path) -> MimiCodes:
    """Read and validate a codes file written by `save_codes`.

    Raises:
        CodesFileError: missing or unreadable file, not a codes file, unsupported version, bad
            or inconsistent metadata, wrong shape, or codes out of range.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise CodesFileError(f"no such file: {path}")
    if not path.is_file():
        raise CodesFileError(f"not a file: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            if meta.get("format") != FORMAT_NAME:
                raise CodesFileError(
                    f"{path} is not a Mimi codes file (no '{FORMAT_NAME}' format tag); "
                    "make one with `mimi-mlx encode`"
                )
            if names != [TENSOR]:
                raise CodesFileError(
                    f"{path}: expected one tensor {TENSOR!r}, found {sorted(names)}"
                )
            codes = f.get_tensor(TENSOR)
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, CodesFileError):
            raise
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CodesFileError(f"{path} is not a Mimi codes file ({reason})") from e

    version = _number(meta, "version", path, int)
    if version != FORMAT_VERSION:
        raise CodesFileError(
            f"{path}: codes file format version {version} is not supported "
            f"(this version of mimi_mlx reads version {FORMAT_VERSION})"
        )
    if codes.ndim == 2 and _number(meta, "num_codebooks", path, int) != codes.shape[0]:
        raise CodesFileError(
            f"{path}: metadata says {meta['num_codebooks']} codebooks, the codes have "
            f"{codes.shape[0]}"
        )
    source = meta.get("source_sample_rate")
    try:
        result = MimiCodes(
            codes=codes,  # validated as stored: a cast first could wrap values into range
            num_samples=_number(meta, "num_samples", path, int),
            sample_rate=_number(meta, "sample_rate", path, int),
            frame_rate=_number(meta, "frame_rate", path, float),
            cardinality=_number(meta, "cardinality", path, int),
            checkpoint=meta.get("checkpoint", ""),
            source_sample_rate=_number(meta, "source_sample_rate", path, int) if source else None,
        )
    except CodesFileError as e:
        if str(e).startswith(str(path)):
            raise
        raise CodesFileError(f"{path}: {e}") from None
    if "frame_size" in meta and _number(meta, "frame_size", path, int) != result.frame_size:
        raise CodesFileError(
            f"{path}: frame_size {meta['frame_size']} does not match sample_rate / frame_rate"
        )
    result.codes = result.codes.astype(np.int32)  # in 0..cardinality-1: exact
    return result


def _number(meta: dict[str, str], key: str, path: Path, kind: type):
    if key not in meta:
        raise CodesFileError(f"{path}: metadata lacks {key!r}")
    try:
        value = kind(meta[key])
    except ValueError:
        raise CodesFileError(f"{path}: metadata {key!r} is not a number: {meta[key]!r}") from None
    if kind is float and not math.isfinite(value):
        raise CodesFileError(f"{path}: metadata {key!r} is not finite: {meta[key]!r}")
    return value
