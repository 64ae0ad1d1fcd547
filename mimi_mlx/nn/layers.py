"""The transformer's building blocks besides attention: norms, feed-forward blocks, LayerScale.

Names and numerics follow Kyutai's (`norm1`, `gating.linear_in`, RMSNorm with `eps` inside the
square root, exact GELU), so their checkpoints load without renaming.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn

if TYPE_CHECKING:
    from .transformer import TransformerConfig

# Kyutai's norm names -> (kind, eps, computed in float32)
NORMS = {
    "layer_norm": ("layer", 1e-5, False),
    "layer_norm_f32": ("layer", 1e-8, True),
    "rms_norm": ("rms", 1e-5, False),
    "rms_norm_f32": ("rms", 1e-8, True),
}


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return x * self.scale


class RMSNorm(nn.Module):
    """RMSNorm as Kyutai computes it: `x * weight / sqrt(eps + mean(x^2))`."""

    def __init__(self, dim: int, eps: float, in_float32: bool):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.eps = eps
        self.in_float32 = in_float32

    def __call__(self, x: mx.array) -> mx.array:
        if self.in_float32 and x.dtype != mx.float32:
            y = mx.fast.rms_norm(x.astype(mx.float32), self.weight.astype(mx.float32), self.eps)
            return y.astype(x.dtype)
        return mx.fast.rms_norm(x, self.weight, self.eps)


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float, in_float32: bool):
        super().__init__()
        self.weight = mx.ones((dim,))
        self.bias = mx.zeros((dim,))
        self.eps = eps
        self.in_float32 = in_float32

    def __call__(self, x: mx.array) -> mx.array:
        if self.in_float32 and x.dtype != mx.float32:
            w, b = self.weight.astype(mx.float32), self.bias.astype(mx.float32)
            return mx.fast.layer_norm(x.astype(mx.float32), w, b, self.eps).astype(x.dtype)
        return mx.fast.layer_norm(x, self.weight, self.bias, self.eps)


def make_norm(norm: str, dim: int) -> nn.Module:
    """A norm by Kyutai's name (`layer_norm`, `rms_norm_f32`, ...)."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(NORMS)}")
    kind, eps, in_float32 = NORMS[norm]
    return (RMSNorm if kind == "rms" else LayerNorm)(dim, eps, in_float32)


ACTIVATIONS = {"silu": nn.silu, "gelu": nn.gelu, "relu": nn.relu, "sigmoid": mx.sigmoid}


def gated_hidden_dim(d_model: int, dim_feedforward: int) -> int:
    """Hidden width of Kyutai's `ActivationGating` for a given `dim_feedforward`."""
    if dim_feedforward == 4 * d_model:
        return (21 * d_model) // 8
    return (2 * dim_feedforward) // 3


class GatedMLP(nn.Module):
    """`linear_out(act(a) * b)` with `[a, b] = linear_in(x)`."""

    def __init__(self, d_model: int, dim_feedforward: int, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown gating {activation!r}; expected one of {sorted(ACTIVATIONS)}"
            )
        hidden = gated_hidden_dim(d_model, dim_feedforward)
        self.linear_in = nn.Linear(d_model, 2 * hidden, bias=False)
        self.linear_out = nn.Linear(hidden, d_model, bias=False)
        self.activation = activation

    def __call__(self, x: mx.array) -> mx.array:
        h = self.linear_in(x)
        hidden = h.shape[-1] // 2
        return self.linear_out(ACTIVATIONS[self.activation](h[..., :hidden]) * h[..., hidden:])


class MLP(nn.Module):
    """Linear -> exact (erf) GELU -> Linear."""

    def __init__(self, d_model: int, dim_feedforward: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=False)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear2(nn.gelu(self.linear1(x)))


def make_mlp(cfg: TransformerConfig) -> nn.Module:
    if cfg.gating == "none":
        return MLP(cfg.d_model, cfg.dim_feedforward)
    return GatedMLP(cfg.d_model, cfg.dim_feedforward, cfg.gating)
