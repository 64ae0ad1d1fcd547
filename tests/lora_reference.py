"""Random LoRA adapters in Kyutai's format, and Kyutai's own loader applying them.

The adapter is what moshi-finetune saves: `X.lora_A.weight` (rank, in) and `X.lora_B.weight`
(out, rank) for every linear layer X of Kyutai's in-memory `LMModel`, drawn large enough that a
missing or misplaced adapter changes the outputs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from moshi_mlx.model.supported import OTHER_KEYS


@torch.no_grad()
def save_random_lora(reference, rank: int, path: Path, seed: int) -> dict[str, torch.Tensor]:
    """Kyutai's `replace_all_linear_with_lora` on a copy of `reference`, random A and B saved."""
    from moshi.modules.lora import replace_all_linear_with_lora
    from safetensors.torch import save_file

    model = copy.deepcopy(reference)
    replace_all_linear_with_lora(model, rank, 1.0)
    torch.manual_seed(seed)
    state = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            p.normal_(0.0, p.shape[-1] ** -0.5)
        elif ".lora_B." in name:
            p.normal_(0.0, 0.5 * p.shape[-1] ** -0.5)
        else:
            continue
        state[name] = p.detach().contiguous()
    save_file(state, str(path))
    return state


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
