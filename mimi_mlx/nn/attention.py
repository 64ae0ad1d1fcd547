"""Attention with positions: the causal sliding-window mask, RoPE self-attention over a ring
cache, cross-attention over a conditioning source, and Kyutai's sinusoidal embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn

from .kv_cache import RingKVCache

# Kyutai's positional embeddings: "rope" rotates interleaved pairs (x0, x1), (x2, x3), ...;
# "rope_concat" the two halves (x_i, x_{i + D/2}) (their `RotaryEmbedding(interleave=False)`).
POSITIONAL_EMBEDDINGS = ("sin", "rope", "sin_rope", "rope_concat", "none")
ROPE = ("rope", "sin_rope", "rope_concat")

if TYPE_CHECKING:
    from .transformer import TransformerConfig


def attention_mask(
    query_positions: mx.array, key_positions: mx.array, context: int | None
) -> mx.array:
    """Boolean (T, S) mask: a query sees filled keys at or before it, and within `context` of it."""
    delta = query_positions[:, None] - key_positions[None, :]
    mask = (key_positions[None, :] >= 0) & (delta >= 0)
    if context is not None:
        mask = mask & (delta < context)
    return mask


def row_start_mask(mask: mx.array | None, key_positions: mx.array, starts: mx.array) -> mx.array:
    """A (T, S) mask (or None: every filled key) narrowed for rows whose streams started at
    `starts` (B,): a row sees only its own stream's keys. -> (B, 1, T, S)."""
    own = key_positions[None, None, None, :] >= starts[:, None, None, None]  # (B, 1, 1, S)
    if mask is None:
        return own
    return own & mask[None, None]


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
        self.rope = cfg.positional_embedding in ROPE
        self.rope_interleaved = cfg.positional_embedding != "rope_concat"
        self.max_period = cfg.max_period

    def __call__(
        self,
        x: mx.array,
        cache: RingKVCache,
        mask: mx.array | None,
        offsets: mx.array | None = None,
    ) -> mx.array:
        """x (B, T, d_model); `mask` (T, S) or (B, 1, T, S) says which of the cache's keys each
        query sees; `offsets` (B,): each row's position of its first token here (streams that
        started at different positions), else the cache's offset for all."""
        B, T, _ = x.shape
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.in_proj(x)
        qk = qkv[..., : (H + KV) * D].reshape(B, T, H + KV, D).transpose(0, 2, 1, 3)
        v = qkv[..., (H + KV) * D :].reshape(B, T, KV, D).transpose(0, 2, 1, 3)
        if self.rope:  # queries and keys in one call: the same rotation for every head
            # interleaved pairs: MLX's "traditional" RoPE; halves: its default
            qk = mx.fast.rope(
                qk,
                D,
                traditional=self.rope_interleaved,
                base=self.max_period,
                scale=1.0,
                offset=cache.offset if offsets is None else offsets,
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


def sin_embedding(positions: mx.array, dim: int, max_period: float) -> mx.array:
    """Kyutai's sinusoidal embedding: (..., T) positions -> (..., T, dim) `[cos, sin]`."""
    half = dim // 2
    adim = mx.arange(half, dtype=mx.float32)
    phase = positions.astype(mx.float32)[..., None] / (max_period ** (adim / (half - 1)))
    return mx.concatenate([mx.cos(phase), mx.sin(phase)], axis=-1)
