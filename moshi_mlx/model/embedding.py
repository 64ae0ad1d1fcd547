"""Kyutai's `ScaledEmbedding`: token -1 embeds to zeros; optional low-rank projection and norm.

`nn.quantize` would replace an `nn.Embedding` subclass by a plain `QuantizedEmbedding` and lose
the zero token, so the embedding here is its own class with its own `to_quantized`.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mimi_mlx.nn.layers import make_norm

ZERO_TOKEN = -1  # "no input here": embeds to exactly zero (Kyutai's `zero_token_id`)


class _EmbeddingBase(nn.Module):
    def _lookup(self, tokens: mx.array) -> mx.array:
        raise NotImplementedError

    def __call__(self, tokens: mx.array) -> mx.array:
        """(...) integer tokens -> (..., dim); -1 gives zeros, other negatives embed token 0."""
        if "out1" in self:
            return self._demuxed(tokens)
        is_zero = (tokens == ZERO_TOKEN)[..., None]
        y = self._lookup(mx.maximum(tokens, 0))
        if "norm" in self:
            y = self.norm(y)
        y = mx.where(is_zero, mx.zeros((), dtype=y.dtype), y)
        if "low_rank" in self:
            y = self.low_rank(y)
        return y

    def _demuxed(self, tokens: mx.array) -> mx.array:
        """Kyutai's two text streams in one token: `(second + 1) * num + first`, each embedded
        in the same table, then projected by `out1` / `out2` (second = -1: no second token)."""
        num = self.num_embeddings
        is_zero = (tokens == ZERO_TOKEN)[..., None]
        tokens = mx.maximum(tokens, 0)
        first, second = tokens % num, tokens // num - 1
        y = self.out1(self._lookup(first))
        y2 = self.out2(self._lookup(mx.maximum(second, 0)))
        y = y + mx.where((second < 0)[..., None], mx.zeros((), dtype=y2.dtype), y2)
        return mx.where(is_zero, mx.zeros((), dtype=y.dtype), y)


class ScaledEmbedding(_EmbeddingBase):
    """An embedding table (num, low_rank or dim), then LayerNorm if `norm`, then `low_rank`."""

    def __init__(
        self,
        num: int,
        dim: int,
        low_rank: int | None = None,
        norm: bool = False,
        demux_second_stream: bool = False,
    ):
        super().__init__()
        self.weight = mx.random.normal((num, low_rank or dim), scale=(low_rank or dim) ** -0.5)
        if norm:
            self.norm = make_norm("layer_norm", low_rank or dim)
        if demux_second_stream:  # two projections replace the low-rank one
            self.out1 = nn.Linear(low_rank or dim, dim, bias=False)
            self.out2 = nn.Linear(low_rank or dim, dim, bias=False)
        elif low_rank is not None:
            self.low_rank = nn.Linear(low_rank, dim, bias=False)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    def _lookup(self, tokens: mx.array) -> mx.array:
        return self.weight[tokens]

    def to_quantized(
        self, group_size: int = 64, bits: int = 4, mode: str = "affine", **_
    ) -> QuantizedScaledEmbedding:
        """The same embedding with its table quantized (the norm and low-rank layer kept)."""
        return QuantizedScaledEmbedding.from_embedding(self, group_size, bits, mode)


class QuantizedScaledEmbedding(_EmbeddingBase):
    """`ScaledEmbedding` with a quantized table: `weight` (packed uint32), `scales`, `biases`."""

    def __init__(self, group_size: int, bits: int, mode: str = "affine"):
        super().__init__()
        self.group_size = group_size
        self.bits = bits
        self.mode = mode

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_embedding(
        cls, emb: ScaledEmbedding, group_size: int, bits: int, mode: str = "affine"
    ) -> QuantizedScaledEmbedding:
        q = cls(group_size, bits, mode)
        q.weight, q.scales, *biases = mx.quantize(emb.weight, group_size, bits, mode=mode)
        if biases:
            q.biases = biases[0]
        for child in ("norm", "low_rank", "out1", "out2"):
            if child in emb:
                setattr(q, child, emb[child])
        q.freeze(keys=["weight", "scales", "biases"], strict=False)
        return q

    def _lookup(self, tokens: mx.array) -> mx.array:
        return mx.dequantize(
            self.weight[tokens],
            self.scales[tokens],
            self.get("biases")[tokens] if "biases" in self else None,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )
