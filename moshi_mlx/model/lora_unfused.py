"""LoRA adapters kept apart from their base: `y = base(x) + scaling * (x @ A.T) @ B.T`.

What Kyutai's `LoRALinear` computes when their loader is told `fuse_lora=False`. It costs two
thin matrix products and an add per linear layer and step, and the memory of A and B (rank x
(in + out) per layer); in exchange the base stays as it is: quantized weights take an adapter
(which fusing cannot), and `with_lora` gives a second model that shares every base array with
the first, so one base in memory serves several fine-tunes.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .lm import Lm
from .lora import Lora, LoraError, lora_factors
from .quantized import _parent, find_quantized, quantize_layers


class LoraLinear(nn.Module):
    """A linear layer (float or quantized) and its adapter.

    Attributes:
        base: the layer, untouched (shared with other models by `with_lora`).
        lora_a: A, (rank, in). lora_b: B, (out, rank). scaling: `lora_scaling`.
    """

    def __init__(self, base: nn.Module, down: mx.array, up: mx.array, scaling: float):
        super().__init__()
        self.base = base
        self.lora_a = down
        self.lora_b = up
        self.scaling = scaling

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        return y + self.scaling * ((x @ self.lora_a.T) @ self.lora_b.T).astype(y.dtype)


def _linear_paths(model: nn.Module) -> dict[str, nn.Module]:
    kinds = (nn.Linear, nn.QuantizedLinear)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, attr = _parent(model, path)
    if isinstance(parent, list):
        parent[int(attr)] = module
    else:
        parent[attr] = module


def attach_lora(model: Lm, lora: Lora) -> None:
    """Put `lora` beside every linear layer of `model`, in place (float or quantized base): a
    model fresh from loading (compiled streaming steps trace the layers they first see).

    Raises:
        LoraError: the adapter does not fit (as `fuse_lora`), or the model has cross-attention
            (Kyutai's TTS reads its projection's rows directly: fuse the adapter instead).
    """
    if model.cfg.cross_attention:
        raise LoraError(
            "an unfused LoRA on a cross-attention model (Kyutai's TTS) is not implemented: "
            "fuse it into the float weights"
        )
    linears = _linear_paths(model)
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(Lm(model.cfg).parameters())}  # lazy
    factors = lora_factors(model.cfg, set(linears), shapes, lora)
    done: set[int] = set()
    for name, (down, up) in factors.items():
        path = name.removesuffix(".weight")
        layer = linears[path]
        if id(layer) in done:
            continue  # a layer shared by several depth-decoder steps: adapted once
        done.add(id(layer))
        dtype = model.dtype
        _replace(model, path, LoraLinear(layer, down.astype(dtype), up.astype(dtype), lora.scaling))
    mx.eval(model.parameters())


def with_lora(model: Lm, lora: Lora) -> Lm:
    """Another model made of `model`'s own arrays (none copied) with `lora` beside its linear
    layers: one base in memory, several fine-tunes; `model` itself is left as it was."""
    params = tree_flatten(model.parameters())
    other = Lm(model.cfg, dtype=model.dtype)  # lazy random weights, replaced before any eval
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(other.parameters())}
    quantize_layers(other, find_quantized(dict(params), shapes, "the base model"))
    other.update(tree_unflatten(params))
    attach_lora(other, lora)
    return other
