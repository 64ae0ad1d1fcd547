"""Writing a Mimi in Kyutai's released layout: the file Kyutai's `moshi` and our loader read."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from .model import Mimi
from .weights import kyutai_state


def save_mimi_kyutai(mimi: Mimi, path: str | Path) -> None:
    """Write `mimi` in Kyutai's PyTorch layout (their released tensor names and shapes, float32),
    with the codebooks' `_initialized` flags their files carry (Kyutai's `get_mimi` loads
    strictly: without them it refuses the file; ours ignores them)."""
    state = kyutai_state(mimi)
    suffix = "._codebook.embedding_sum"
    for name in [n for n in state if n.endswith(suffix)]:
        state[name[: -len(suffix)] + "._codebook._initialized"] = mx.ones((1,), mx.float32)
    mx.save_safetensors(str(path), state)
