"""Safetensors files: their tensors (lazily, through MLX) and their header alone."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from .hub import CheckpointError

MAX_HEADER = 100_000_000  # bytes: larger is not a safetensors header


def read_safetensors(path: Path) -> dict[str, mx.array]:
    """All tensors of a safetensors file, with a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return mx.load(str(path), format="safetensors")
    except Exception as e:
        raise CheckpointError(
            f"cannot read {path} as safetensors ({e}); the file is corrupt, truncated or not a "
            "checkpoint"
        ) from e


def read_header(path: Path) -> dict[str, dict] | None:
    """The tensors' entries of a safetensors header (`{name: {dtype, shape, data_offsets}}`,
    without `__metadata__`), read without the data; None for a file that is not one."""
    header = _raw_header(path)
    if header is None:
        return None
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def read_metadata(path: Path) -> dict[str, str]:
    """The header's `__metadata__` strings ({} where there are none or the file is unreadable)."""
    meta = (_raw_header(path) or {}).get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def _raw_header(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size < MAX_HEADER:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None
