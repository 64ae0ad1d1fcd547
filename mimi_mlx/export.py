"""Writing a Mimi in Kyutai's released layout: the file Kyutai's `moshi` and our loader read."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from .model import Mimi
from .weights import kyutai_state


def save_mimi_kyutai(mimi: Mimi, path: str | Path) -> None:
    """Write `mimi` in Kyutai's PyTorch layout (their released tensor names and shapes, float32)."""
    mx.save_safetensors(str(path), kyutai_state(mimi))
