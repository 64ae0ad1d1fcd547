"""Our language model's weights in Kyutai's PyTorch layout (`kyutai/*-pytorch-bf16` repos).

The inverse of the `pytorch` name table: each source tensor rebuilt from the parameters that
load from it (an RMSNorm scale as (1, 1, d), the depth decoder's per-step projections stacked
as (n * out, in) in weight-set order). Where several steps share a weight set, the first step's
parameters are written (loading the file back gives every step the same ones).
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten

from ..model.name_tables import alpha, as_is, chunk, name_table


def pytorch_state(lm) -> dict[str, mx.array]:
    """`lm`'s parameters under Kyutai's PyTorch tensor names (float weights only)."""
    ours = dict(tree_flatten(lm.parameters()))
    out: dict[str, mx.array] = {}
    stacks: dict[str, dict[int, mx.array]] = {}
    sizes: dict[str, int] = {}
    for name, sources, transform in name_table(lm.cfg, "pytorch"):
        (src,) = sources
        x = ours[name]
        if isinstance(transform, chunk):
            stacks.setdefault(src, {}).setdefault(transform.i, x)
            sizes[src] = transform.n
        elif transform is alpha:
            out.setdefault(src, x.reshape(1, 1, -1))
        elif transform is as_is:
            out.setdefault(src, x)
        else:
            raise ValueError(f"no PyTorch form for {name} ({transform})")
    for src, parts in stacks.items():
        if sorted(parts) != list(range(sizes[src])):
            raise ValueError(f"{src}: weight sets {sorted(parts)} of {sizes[src]}")
        out[src] = mx.concatenate([parts[i] for i in range(sizes[src])], axis=0)
    return out


def save_pytorch_lm(lm, path, dtype=mx.bfloat16) -> None:
    """Write `lm` as Kyutai's PyTorch `.safetensors` (bfloat16 as their released files)."""
    tensors = {k: v.astype(dtype) for k, v in pytorch_state(lm).items()}
    mx.save_safetensors(str(path), tensors, metadata={"format": "pt"})
