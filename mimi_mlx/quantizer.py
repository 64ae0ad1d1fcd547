"""Mimi's split residual vector quantizer: 1 semantic codebook + N acoustic ones."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

CLUSTER_USAGE_EPS = 1e-5  # Kyutai's `EuclideanCodebook.epsilon`


@dataclass
class QuantizerConfig:
    dimension: int = 256  # codebook vectors
    n_q: int = 32  # codebooks in all
    n_q_semantic: int = 1
    bins: int = 2048  # codewords per codebook
    input_dimension: int = 512
    output_dimension: int = 512


def centroids(embedding_sum: mx.array, cluster_usage: mx.array) -> mx.array:
    """A checkpoint's codebook statistics -> centroids `embedding_sum / max(usage, eps)`."""
    return embedding_sum / mx.maximum(cluster_usage, CLUSTER_USAGE_EPS)[:, None]


class EuclideanCodebook(nn.Module):
    """Nearest-codeword lookup among `embedding` (bins, dim), the centroids."""

    def __init__(self, dim: int, bins: int):
        super().__init__()
        self.embedding = mx.zeros((bins, dim))

    def encode(self, x: mx.array) -> mx.array:
        """x (B, T, D) -> codes (B, T) of the nearest centroid (Euclidean distance)."""
        c = self.embedding
        # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c, as torch.cdist computes it.
        dists = (x * x).sum(-1, keepdims=True) + (c * c).sum(-1) - 2 * (x @ c.T)
        return mx.argmin(dists, axis=-1).astype(mx.int32)

    def decode(self, codes: mx.array) -> mx.array:
        """codes (B, T) -> centroids (B, T, D)."""
        return self.embedding[codes]


class ResidualVectorQuantizer(nn.Module):
    """Input projection, then each codebook quantizes what the previous ones left."""

    def __init__(self, cfg: QuantizerConfig, n_q: int):
        super().__init__()
        self.input_proj = nn.Linear(cfg.input_dimension, cfg.dimension, bias=False)
        self.output_proj = nn.Linear(cfg.dimension, cfg.output_dimension, bias=False)
        self.layers = [EuclideanCodebook(cfg.dimension, cfg.bins) for _ in range(n_q)]

    def encode(self, x: mx.array, n_q: int) -> mx.array:
        """x (B, T, input_dimension) -> codes (B, n_q, T)."""
        residual = self.input_proj(x)
        codes = []
        for layer in self.layers[:n_q]:
            c = layer.encode(residual)
            residual = residual - layer.decode(c)
            codes.append(c)
        return mx.stack(codes, axis=1)

    def decode(self, codes: mx.array) -> mx.array:
        """codes (B, K, T) -> (B, T, output_dimension)."""
        quantized = self.layers[0].decode(codes[:, 0])
        for k in range(1, codes.shape[1]):
            quantized = quantized + self.layers[k].decode(codes[:, k])
        return self.output_proj(quantized)


class SplitResidualVectorQuantizer(nn.Module):
    """Semantic codebooks (`rvq_first`) and acoustic ones (`rvq_rest`), both fed the same input."""

    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        self.n_q = cfg.n_q
        self.n_q_semantic = cfg.n_q_semantic
        self.rvq_first = ResidualVectorQuantizer(cfg, cfg.n_q_semantic)
        self.rvq_rest = ResidualVectorQuantizer(cfg, cfg.n_q - cfg.n_q_semantic)

    def encode(self, x: mx.array, n_q: int) -> mx.array:
        """x (B, T, D) -> codes (B, n_q, T), the first `n_q_semantic` from the semantic codebook."""
        codes = self.rvq_first.encode(x, min(n_q, self.n_q_semantic))
        if n_q > self.n_q_semantic:
            rest = self.rvq_rest.encode(x, n_q - self.n_q_semantic)
            codes = mx.concatenate([codes, rest], axis=1)
        return codes

    def decode(self, codes: mx.array) -> mx.array:
        """codes (B, K, T) -> (B, T, D)."""
        out = self.rvq_first.decode(codes[:, : self.n_q_semantic])
        if codes.shape[1] > self.n_q_semantic:
            out = out + self.rvq_rest.decode(codes[:, self.n_q_semantic :])
        return out
