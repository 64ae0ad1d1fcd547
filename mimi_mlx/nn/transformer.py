"""The streaming transformer shared by Mimi and Moshi.

Parameter names follow Kyutai's MLX checkpoints (`self_attn.in_proj`, `gating.linear_in`,
`norm1`, ...), so their files load without renaming. Attention is causal with a sliding context
window, in batch and in streaming alike, and every layer keeps a bounded ring cache while streaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import mlx.core as mx
import mlx.nn as nn

from .compiled import compile_enabled, compiled_step
from .kv_cache import RingKVCache
from .streaming import StreamingModule

# Kyutai's norm names -> (kind, eps, computed in float32)
NORMS = {
    "layer_norm": ("layer", 1e-5, False),
    "layer_norm_f32": ("layer", 1e-8, True),
    "rms_norm": ("rms", 1e-5, False),
    "rms_norm_f32": ("rms", 1e-8, True),
}


@dataclass
class TransformerConfig:
    """Hyper-parameters of a Kyutai `StreamingTransformer` (their defaults for absent keys)."""

    d_model: int
    num_heads: int
    num_layers: int
    dim_feedforward: int = 2048
    causal: bool = True
    context: int | None = None
    max_period: float = 10000.0
    norm: str = "layer_norm"
    gating: str = "none"  # "none": Linear-GELU-Linear; else the activation of a gated MLP
    layer_scale: float | None = None
    positional_embedding: str = "sin"  # "rope", "sin", "sin_rope" or "none"
    positional_scale: float = 1.0
    kv_repeat: int = 1
    cross_attention: bool = False  # a cross-attention block in every layer (Kyutai's TTS)
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in d.items() if k in names and k != "extra"}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


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


def attention_mask(
    query_positions: mx.array, key_positions: mx.array, context: int | None
) -> mx.array:
    """Boolean (T, S) mask: a query sees filled keys at or before it, and within `context` of it."""
    delta = query_positions[:, None] - key_positions[None, :]
    mask = (key_positions[None, :] >= 0) & (delta >= 0)
    if context is not None:
        mask = mask & (delta < context)
    return mask


def attend(q: mx.array, k: mx.array, v: mx.array, mask: mx.array | None) -> mx.array:
    """Scaled dot-product attention of q (B, H, T, D) over k, v (B, H, S, D) -> (B, T, H * D)."""
    B, H, T, D = q.shape
    if H != k.shape[1]:  # grouped keys and values: repeat them over the query heads
        k = mx.repeat(k, H // k.shape[1], axis=1)
        v = mx.repeat(v, H // v.shape[1], axis=1)
    out = mx.fast.scaled_dot_product_attention(q, k, v, scale=D**-0.5, mask=mask)
    return out.transpose(0, 2, 1, 3).reshape(B, T, H * D)


class Attention(nn.Module):
    """Multi-head self-attention with a fused input projection, RoPE and a ring KV cache."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        kv_dim = cfg.head_dim * (cfg.num_heads // cfg.kv_repeat)
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_model + 2 * kv_dim, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_heads // cfg.kv_repeat
        self.head_dim = cfg.head_dim
        self.rope = cfg.positional_embedding in ("rope", "sin_rope")
        self.max_period = cfg.max_period

    def __call__(self, x: mx.array, cache: RingKVCache, mask: mx.array | None) -> mx.array:
        """x (B, T, d_model); `mask` (T, S) says which of the cache's keys each query sees."""
        B, T, _ = x.shape
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.in_proj(x)
        qk = qkv[..., : (H + KV) * D].reshape(B, T, H + KV, D).transpose(0, 2, 1, 3)
        v = qkv[..., (H + KV) * D :].reshape(B, T, KV, D).transpose(0, 2, 1, 3)
        if self.rope:  # queries and keys in one call: the same rotation for every head
            # Kyutai rotates interleaved pairs (x0, x1), (x2, x3), ...: MLX's "traditional" RoPE.
            qk = mx.fast.rope(
                qk, D, traditional=True, base=self.max_period, scale=1.0, offset=cache.offset
            )
        q, k = qk[:, :H], qk[:, H:]
        keys, values = cache.update_and_fetch(k, v)
        return self.out_proj(attend(q, keys, values, mask))


class CrossAttention(nn.Module):
    """Attention of the tokens over a fixed conditioning sequence (no positions, no mask).

    One fused `in_proj` as Kyutai's: its first `d_model` rows give the queries, the others the
    keys and values of the source, which `keys_values` computes once for a whole utterance.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.in_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim

    def _project(self, x: mx.array, part: int) -> mx.array:
        """Rows `part` (0: q, 1: k, 2: v) of the fused projection: x (B, T, d) -> (B, H, T, D)."""
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        rows = slice(part * H * D, (part + 1) * H * D)  # only the rows needed
        proj = self.in_proj
        if isinstance(proj, nn.QuantizedLinear):
            y = mx.quantized_matmul(
                x, proj.weight[rows], proj.scales[rows],
                proj.get("biases")[rows] if "biases" in proj else None,
                transpose=True, group_size=proj.group_size, bits=proj.bits, mode=proj.mode,
            )  # fmt: skip
        else:
            y = x @ proj.weight[rows].T
        return y.reshape(B, T, H, D).transpose(0, 2, 1, 3)

    def keys_values(self, source: mx.array) -> tuple[mx.array, mx.array]:
        """Keys and values (B, H, S, D) of a conditioning source (B, S, d_model)."""
        return self._project(source, 1), self._project(source, 2)

    def __call__(self, x: mx.array, kv: tuple[mx.array, mx.array]) -> mx.array:
        q = self._project(x, 0)
        return self.out_proj(attend(q, kv[0].astype(q.dtype), kv[1].astype(q.dtype), None))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.norm1 = make_norm(cfg.norm, cfg.d_model)
        self.norm2 = make_norm(cfg.norm, cfg.d_model)
        self.gating = make_mlp(cfg)  # Kyutai's name for the feed-forward block, gated or not
        if cfg.layer_scale is not None:
            self.layer_scale_1 = LayerScale(cfg.d_model)
            self.layer_scale_2 = LayerScale(cfg.d_model)
        if cfg.cross_attention:
            self.cross_attention = CrossAttention(cfg)
            self.norm_cross = make_norm("layer_norm", cfg.d_model)  # always LayerNorm in Kyutai's
            if cfg.layer_scale is not None:
                self.layer_scale_cross = LayerScale(cfg.d_model)
        self.has_layer_scale = cfg.layer_scale is not None

    def __call__(
        self,
        x: mx.array,
        cache: RingKVCache,
        mask: mx.array | None,
        cross: tuple[mx.array, mx.array] | None = None,
    ) -> mx.array:
        """x (B, T, d); `cross`: this layer's keys and values of the conditioning source."""
        update = self.self_attn(self.norm1(x), cache, mask)
        x = x + (self.layer_scale_1(update) if self.has_layer_scale else update)
        if "cross_attention" in self:
            if cross is None:
                raise ValueError("this transformer needs a cross-attention source")
            update = self.cross_attention(self.norm_cross(x), cross)
            x = x + (self.layer_scale_cross(update) if self.has_layer_scale else update)
        update = self.gating(self.norm2(x))
        return x + (self.layer_scale_2(update) if self.has_layer_scale else update)


def sin_embedding(positions: mx.array, dim: int, max_period: float) -> mx.array:
    """Kyutai's sinusoidal embedding: (T,) positions -> (T, dim) `[cos, sin]`."""
    half = dim // 2
    adim = mx.arange(half, dtype=mx.float32)
    phase = positions.astype(mx.float32)[:, None] / (max_period ** (adim / (half - 1)))
    return mx.concatenate([mx.cos(phase), mx.sin(phase)], axis=-1)


class Transformer(StreamingModule):
    """A stack of layers: `__call__` for a whole sequence, `step` + `reset` for streaming.

    The batch call never touches the streaming state. It processes the sequence in chunks through
    fresh caches, so long inputs cost memory linear in their length, and gives the same result as
    streaming the same tokens.
    """

    def __init__(self, cfg: TransformerConfig, step_tokens: int = 1, compile_steps: bool = False):
        """Args:
        cfg: the hyper-parameters.
        step_tokens: tokens a streaming step usually carries (2 for Mimi's 25 Hz transformers
            at one 12.5 Hz frame a step); the rings get room for them beyond the context.
        compile_steps: run one-token streaming steps through compiled layers
            (`mimi_mlx.nn.compiled`); the outputs are the same.
        """
        super().__init__()
        self.cfg = cfg
        self.step_tokens = step_tokens
        self.layers = [TransformerLayer(cfg) for _ in range(cfg.num_layers)]
        self._caches: list[RingKVCache] | None = None
        self._compile_steps = compile_steps and compile_enabled()
        self._compiled: list | None = None

    def make_caches(self) -> list[RingKVCache]:
        """Fresh caches, one a layer, each holding the attention context."""
        context = self.cfg.context
        if context is None:
            raise ValueError("streaming needs a transformer with a finite attention context")
        return [RingKVCache(context + self.step_tokens - 1, context) for _ in self.layers]

    def cross_keys_values(self, source: mx.array) -> list[tuple[mx.array, mx.array]]:
        """Every layer's cross-attention keys and values of a source (B, S, d_model): computed
        once per conditioning and given to each `__call__` / `step`."""
        return [layer.cross_attention.keys_values(source) for layer in self.layers]

    def _run(self, x: mx.array, caches: list[RingKVCache], cross: list | None = None) -> mx.array:
        T = x.shape[1]
        offset = caches[0].offset  # every layer's cache is at the same position
        if self.cfg.positional_embedding in ("sin", "sin_rope"):
            pos = sin_embedding(mx.arange(offset, offset + T), x.shape[-1], self.cfg.max_period)
            x = x + self.cfg.positional_scale * pos.astype(x.dtype)
        mask = None
        if self.cfg.causal:  # one mask for all layers
            queries = mx.arange(offset, offset + T, dtype=mx.int32)
            mask = attention_mask(queries, caches[0].key_positions(T), self.cfg.context)
        if self._compile_steps and T == 1 and cross is None:
            for step, cache in zip(self._compiled_layers(), caches, strict=True):
                x = step(x, mask, [cache])
            return x
        for i, (layer, cache) in enumerate(zip(self.layers, caches, strict=True)):
            x = layer(x, cache, mask, None if cross is None else cross[i])
        return x

    def _compiled_layers(self) -> list:
        """Each layer's one-token step `(x, mask, [cache]) -> x`, compiled at any position."""
        if self._compiled is None:
            self._compiled = [
                compiled_step(lambda x, mask, caches, layer=layer: layer(x, caches[0], mask), layer)
                for layer in self.layers
            ]
        return self._compiled

    def __call__(
        self, x: mx.array, chunk: int | None = None, cross: list | None = None
    ) -> mx.array:
        """Run a whole sequence x (B, T, d_model) with causal sliding-window attention.

        `cross`: from `cross_keys_values`, for transformers with cross-attention.
        """
        T = x.shape[1]
        context = self.cfg.context
        if context is None or not self.cfg.causal:
            # Unlimited (or bidirectional) attention: one pass, keys are exactly the input.
            caches = [RingKVCache(T) for _ in self.layers]
            return self._run(x, caches, cross)
        chunk = chunk or context
        caches = self.make_caches()
        outs = [self._run(x[:, s : s + chunk], caches, cross) for s in range(0, T, chunk)]
        return outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=1)

    def step(
        self, x: mx.array, caches: list[RingKVCache] | None = None, cross: list | None = None
    ) -> mx.array:
        """Stream the next tokens x (B, T, d_model), attending to everything streamed before.

        Args:
            x: (B, T, d_model) new tokens.
            caches: caches to use instead of this module's own (one a layer, from
                `make_caches()`), for example one set shared by several transformers that each
                hold the weights of one step (Moshi's depth decoder).
            cross: from `cross_keys_values`, for transformers with cross-attention.
        """
        if caches is not None:
            return self._run(x, caches, cross)
        if self._caches is None:
            self._caches = self.make_caches()
        return self._run(x, self._caches, cross)

    def reset_state(self) -> None:
        self._caches = None

    @property
    def offset(self) -> int:
        """How many tokens have been streamed since the last reset."""
        return 0 if self._caches is None else self._caches[0].offset
