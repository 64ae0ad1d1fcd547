"""Kyutai's own LoRA code: the adapter tensors it trains, and its loader applying an adapter.

The adapter is what moshi-finetune saves: `X.lora_A.weight` (rank, in) and `X.lora_B.weight`
(out, rank) for every linear layer X of Kyutai's in-memory `LMModel`; the random ones the tests
use come from `moshi_mlx.testing.tiny_lora`, checked here against Kyutai's names and shapes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from moshi_mlx.model.supported import OTHER_KEYS


@torch.no_grad()
def kyutai_lora_shapes(reference, rank: int) -> dict[str, tuple[int, ...]]:
    """The adapter tensors Kyutai's `replace_all_linear_with_lora` gives a copy of `reference`
    (what moshi-finetune trains and saves): {name: shape}."""
    from moshi.modules.lora import replace_all_linear_with_lora

    model = copy.deepcopy(reference)
    replace_all_linear_with_lora(model, rank, 1.0)
    return {n: tuple(p.shape) for n, p in model.named_parameters() if ".lora_" in n}


def kyutai_with_lora(weights: Path, cfg: dict, lora: Path, rank: int, scaling: float, fuse: bool):
    """Kyutai's `get_moshi_lm(..., lora_weights=..., fuse_lora=...)` in float32."""
    from moshi.models import loaders

    kwargs = {k: v for k, v in copy.deepcopy(cfg).items() if k not in OTHER_KEYS}
    kwargs.update(lora=True, lora_rank=rank, lora_scaling=scaling)
    return loaders.get_moshi_lm(
        weights, kwargs, device="cpu", dtype=torch.float32, lora_weights=lora, fuse_lora=fuse
    )


def name_lora(folder: Path, name: str, rank: int, scaling: float) -> None:
    """A checkpoint folder's config.json names its adapter, as Kyutai's loader reads it."""
    config = json.loads((folder / "config.json").read_text())
    config.update(lora=True, lora_name=name, lora_rank=rank, lora_scaling=scaling)
    (folder / "config.json").write_text(json.dumps(config))
