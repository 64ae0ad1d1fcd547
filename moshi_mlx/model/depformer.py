"""The depth decoder ("depformer"): the audio codebooks of one time step, one after the other.

Slice `k` holds the weights for generated codebook `k` (Kyutai's MLX layout
`depformer.slices.{k}`): an input projection of the temporal transformer's output, an embedding of
the previous token (the text token for slice 0), a transformer and an output head. The slices'
transformers share one key/value cache within a time step, so codebook `k` attends to the
positions of codebooks `0..k`, each computed with its own slice's weights.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from mimi_mlx.nn.compiled import compiled_step
from mimi_mlx.nn.layers import make_norm
from mimi_mlx.nn.transformer import Transformer

from .config import LmConfig
from .embedding import ScaledEmbedding


class DepFormerSlice(nn.Module):
    def __init__(self, cfg: LmConfig, codebook: int):
        super().__init__()
        num = cfg.text_card + 1 if codebook == 0 else cfg.card + 1
        dim = cfg.depformer_dim
        self.emb = ScaledEmbedding(
            num,
            dim,
            low_rank=cfg.depformer_low_rank_embeddings,
            norm=cfg.norm_emb,
            demux_second_stream=codebook == 0 and cfg.demux_second_text_stream,
        )
        self.linear_in = nn.Linear(cfg.dim, dim, bias=False)
        self.transformer = Transformer(cfg.depformer_config(codebook))
        if cfg.depformer_norm is not None:
            self.norm = make_norm(cfg.depformer_norm, dim)
        self.linear_out = nn.Linear(dim, cfg.card, bias=cfg.bias_proj)

    def head(self, x: mx.array) -> mx.array:
        return self.linear_out(self.norm(x) if "norm" in self else x)

    def step(self, transformer_out: mx.array, token: mx.array, caches: list) -> mx.array:
        """Logits (R, card) of this codebook from (R, 1, dim) and the previous token (R,)."""
        x = self.linear_in(transformer_out) + self.emb(token[:, None]).astype(transformer_out.dtype)
        return self.head(self.transformer.step(x, caches=caches))[:, 0]


class DepFormer(nn.Module):
    def __init__(self, cfg: LmConfig):
        super().__init__()
        self.slices = [DepFormerSlice(cfg, k) for k in range(cfg.dep_q)]
        # Slices with the same weight set (Kyutai's schedule, e.g. the TTS's 32 steps on 11
        # sets) share one transformer: the weights are held once, though every slice names them.
        first: dict[int, Transformer] = {}
        for k, part in enumerate(self.slices):
            part.transformer = first.setdefault(cfg.weight_set(k), part.transformer)

    def _caches(self):
        return self.slices[0].transformer.make_caches()

    def __call__(self, transformer_out: mx.array, tokens: mx.array) -> mx.array:
        """Teacher-forced logits of every codebook at every time step.

        Args:
            transformer_out: (B, T, dim) output of the temporal transformer (after `out_norm`).
            tokens: (B, dep_q, T) input token of each slice: the text token, then the audio
                tokens of codebooks 0 .. dep_q - 2.

        Returns:
            (B, dep_q, T, card) logits.
        """
        B, T, _ = transformer_out.shape
        caches = self._caches()  # one time step per batch row: (B * T) rows, dep_q positions
        logits = []
        for k, part in enumerate(self.slices):
            x = part.linear_in(transformer_out) + part.emb(tokens[:, k]).astype(
                transformer_out.dtype
            )
            y = part.transformer.step(x.reshape(B * T, 1, -1), caches=caches)
            logits.append(part.head(y).reshape(B, T, -1))
        return mx.stack(logits, axis=1)

    def sample(
        self,
        transformer_out: mx.array,
        text_token: mx.array,
        sample_fn: Callable[[mx.array], mx.array],
        count: int | None = None,
        forced: list[mx.array | None] | None = None,
        feed: list[mx.array | None] | None = None,
    ) -> mx.array:
        """Generate the audio tokens of one time step.

        Args:
            transformer_out: (R, 1, dim) temporal transformer output for this step, R = B, or
                2 B with classifier-free guidance (conditioned rows, then unconditioned).
            text_token: (B,) the text token of this step.
            sample_fn: (R, card) logits -> (B,) tokens.
            count: run only the first `count` codebooks (slices; default: all `dep_q`). The
                depth decoder is causal over its steps: later slices never change earlier tokens.
            forced: per codebook, (B,) tokens given instead of sampled (slices after the last
                sampled codebook are not run at all).
            feed: per codebook, (B,) tokens fed to the next slice in place of the sampled one
                (which is still returned): NVIDIA's teacher forcing of the user's codebooks.

        Returns:
            (B, count) int32 tokens.
        """
        steps = len(self.slices) if count is None else count
        forced = list(forced or []) + [None] * (steps - len(forced or []))
        feed = list(feed or []) + [None] * (steps - len(feed or []))
        sampled = [k for k in range(steps) if forced[k] is None]
        run = sampled[-1] + 1 if sampled else 0  # slices whose outputs matter
        caches = self._caches()
        rows = transformer_out.shape[0]
        token = text_token
        tokens = []
        for k in range(steps):
            if k >= run:
                token = forced[k]
                tokens.append(token)
                continue
            token_in = mx.tile(token, rows // token.shape[0])  # the same token for both halves
            logits = self._step(k)(transformer_out, token_in, caches)
            token = forced[k] if forced[k] is not None else sample_fn(logits)
            tokens.append(token)
            if feed[k] is not None:
                token = feed[k]
        return mx.stack(tokens, axis=1).astype(mx.int32)

    def _step(self, k: int) -> Callable[[mx.array, mx.array, list], mx.array]:
        """Slice k's `step`, compiled (its shapes never change: the caches hold 1 step)."""
        steps = self.__dict__.setdefault("_compiled", {})
        if k not in steps:
            steps[k] = compiled_step(self.slices[k].step, self.slices[k], position=k)
        return steps[k]
