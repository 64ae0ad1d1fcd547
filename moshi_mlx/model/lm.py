"""Moshi's language model: embeddings, temporal transformer, text head and depth decoder.

Parameter names are those of Kyutai's MLX checkpoints (`kyutai/moshiko-mlx-*`), so their files
load as they are. Two entry points: `forward` (teacher-forced over a whole sequence, Kyutai's
`LMModel.forward` semantics) and `step` (one time step, streaming; see `generate.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import mlx.core as mx
import mlx.nn as nn

from mimi_mlx.nn.layers import make_norm
from mimi_mlx.nn.streaming import StreamingModule
from mimi_mlx.nn.transformer import Transformer

from .conditioning import ConditionProvider
from .config import LmConfig
from .depformer import DepFormer
from .embedding import ScaledEmbedding


@dataclass
class LmOutput:
    """Teacher-forced outputs, aligned with the input codes (no shift needed for a loss)."""

    text_logits: mx.array  # (B, 1, T, text_card) float
    text_mask: mx.array  # (B, 1, T) bool: where the text logits are valid
    logits: mx.array  # (B, dep_q, T, card) float, NaN where invalid
    mask: mx.array  # (B, dep_q, T) bool


def delay_codes(codes: mx.array, delays: list[int], initial: mx.array) -> mx.array:
    """Shift each stream k of codes (B, K, T) right by `delays[k]`, filling with `initial[k]`."""
    B, K, T = codes.shape
    rows = []
    for k, d in enumerate(delays):
        row = codes[:, k]
        if d > 0:
            fill = mx.broadcast_to(initial[k], (B, min(d, T))).astype(codes.dtype)
            row = mx.concatenate([fill, row[:, : T - d]], axis=1) if d < T else fill
        rows.append(row)
    return mx.stack(rows, axis=1)


def undelay(values: mx.array, delays: list[int]) -> tuple[mx.array, mx.array]:
    """Undo `delay_codes` on per-step outputs (B, K, T, V): shift left, NaN and mask the tail."""
    B, K, T = values.shape[:3]
    rows, masks = [], []
    for k, d in enumerate(delays):
        row = values[:, k]
        valid = mx.arange(T) < T - d
        if d > 0:
            nan = mx.full((B, min(d, T), *row.shape[2:]), mx.nan, dtype=row.dtype)
            row = mx.concatenate([row[:, d:], nan], axis=1) if d < T else nan
        rows.append(row)
        masks.append(mx.broadcast_to(valid, (B, T)))
    return mx.stack(rows, axis=1), mx.stack(masks, axis=1)


class Lm(StreamingModule):
    """Moshi's language model over 1 text stream and `n_q` audio streams.

    Args:
        cfg: the configuration (Kyutai's keys); defaults to the 7B Moshiko model.
        dtype: activation dtype (weights are loaded in it too, unless quantized).
    """

    def __init__(self, cfg: LmConfig | None = None, dtype: mx.Dtype = mx.float32):
        super().__init__()
        cfg = cfg or LmConfig()
        self.cfg = cfg
        self.dtype = dtype
        self.text_emb = ScaledEmbedding(
            cfg.text_card + 1,
            cfg.dim,
            norm=cfg.norm_emb,
            demux_second_stream=cfg.demux_second_text_stream,
        )
        self.audio_embs = [
            ScaledEmbedding(cfg.card + 1, cfg.dim, norm=cfg.norm_emb) for _ in range(cfg.n_q)
        ]
        self.transformer = Transformer(cfg.transformer_config(), compile_steps=True)
        self.out_norm = make_norm(cfg.norm, cfg.dim)
        self.text_linear = nn.Linear(cfg.dim, cfg.text_out_card, bias=cfg.bias_proj)
        self.depformer = DepFormer(cfg)
        self.extra_heads = [
            nn.Linear(cfg.dim, cfg.extra_heads_dim, bias=False)
            for _ in range(cfg.extra_heads_num_heads)
        ]
        if cfg.conditioners:
            self.condition_provider = ConditionProvider(cfg.dim, cfg.conditioners, cfg.fuser)

    @property
    def condition_names(self) -> list[str]:
        """Conditions the model takes ("description", ...); empty for Moshiko/Moshika."""
        return self.condition_provider.names if "condition_provider" in self else []

    def condition(self, conditions: dict | list[dict] | None, batch: int) -> mx.array | None:
        """The summed condition embedding (B, 1, dim) for {name: value} (one dict, or one a row).

        Raises:
            ValueError: the model needs conditions and none were given, or the reverse.
        """
        names = self.condition_names
        if not names:
            if conditions:
                raise ValueError("this model takes no conditions")
            return None
        if conditions is None:
            raise ValueError(f"this model needs conditions: {names} (for example 'very_good')")
        rows = [conditions] * batch if isinstance(conditions, dict) else list(conditions)
        if len(rows) != batch:
            raise ValueError(f"{len(rows)} condition rows for a batch of {batch}")
        return self.condition_provider.condition_sum(rows).astype(self.dtype)

    def cross_condition(self, conditions: dict | list[dict] | None, batch: int) -> list | None:
        """Every layer's cross-attention keys and values for the tensor conditions (computed once
        per conditioning; Kyutai's TTS voices), or None for models without cross-attention.

        Args:
            conditions: {name: (tensor (T, dim), mask (T,))} for the fuser's `cross` conditions
                (other names ignored), one dict for all rows or one a row.
        """
        if not self.cfg.cross_attention:
            return None
        rows = [conditions] * batch if isinstance(conditions, dict) else list(conditions or [])
        if len(rows) != batch:
            raise ValueError(f"{len(rows)} condition rows for a batch of {batch}")
        source = self.condition_provider.condition_cross(rows).astype(self.dtype)
        return self.transformer.cross_keys_values(source)

    # -- facts ---------------------------------------------------------------------------------
    @property
    def initial_tokens(self) -> mx.array:
        """(K,) start token of each stream: `text_card` for text, `card` for audio."""
        return mx.array([self.cfg.text_card] + [self.cfg.card] * self.cfg.n_q, dtype=mx.int32)

    # -- building blocks -----------------------------------------------------------------------
    def embed(self, tokens: mx.array, condition: mx.array | None = None) -> mx.array:
        """Sum of the stream embeddings (and condition): tokens (B, K, T) -> (B, T, dim)."""
        x = self.text_emb(tokens[:, 0]).astype(self.dtype)
        for k, emb in enumerate(self.audio_embs):
            x = x + emb(tokens[:, 1 + k]).astype(self.dtype)
        return x if condition is None else x + condition

    def _heads(self, x: mx.array) -> tuple[mx.array, mx.array]:
        out = self.out_norm(x)
        return out, self.text_linear(out)

    def extra_head_probs(self, transformer_out: mx.array) -> mx.array:
        """Softmax of each extra head (STT's voice activity): (B, T, dim) -> (B, T, heads, 6)."""
        if not self.extra_heads:
            raise ValueError("this checkpoint has no extra (voice-activity) heads")
        logits = mx.stack([head(transformer_out) for head in self.extra_heads], axis=2)
        return mx.softmax(logits.astype(mx.float32), axis=-1)

    def drop_extra_heads(self) -> None:
        """Forget the extra heads a config declares but a checkpoint lacks (Kyutai's STT `-mlx`
        repos): the model then says it has none (`cfg.extra_heads_num_heads` 0)."""
        self.extra_heads = []
        self.cfg = replace(self.cfg, extra_heads_num_heads=0)

    def step(
        self, tokens: mx.array, condition: mx.array | None = None, cross: list | None = None
    ) -> tuple[mx.array, mx.array]:
        """One streaming time step of the temporal transformer.

        Args:
            tokens: (B, K, 1) input tokens of every stream for this step.
            condition: (B, 1, dim) from `condition()`, for conditioned models.
            cross: from `cross_condition()`, for models with cross-attention.

        Returns:
            transformer_out (B, 1, dim) for the depth decoder and text logits (B, 1, text_card).
        """
        return self._heads(self.transformer.step(self.embed(tokens, condition), cross=cross))

    def forward(self, codes: mx.array, conditions: dict | list[dict] | None = None) -> LmOutput:
        """Teacher-forced logits for whole sequences, as Kyutai's `LMModel.forward`.

        Args:
            codes: (B, 1 + n_q, T) integers: text, then audio codebooks, undelayed. The delays
                are applied inside; -1 marks "no input" (embeds to zero, masked out).
            conditions: for conditioned models, {name: value} for all rows or one dict a row.

        Returns:
            LmOutput with logits aligned to `codes`: position t predicts `codes[:, :, t]`.
        """
        cfg = self.cfg
        B, K, T = codes.shape
        if K != cfg.num_codebooks:
            raise ValueError(
                f"codes must have {cfg.num_codebooks} streams, got shape {codes.shape}"
            )
        codes = codes.astype(mx.int32)
        self._check_range(codes)
        initial = self.initial_tokens
        delayed = delay_codes(codes, cfg.delays, initial)  # (B, K, T)
        start = mx.broadcast_to(initial[None, :, None], (B, K, 1))
        inputs = mx.concatenate([start, delayed[:, :, : T - 1]], axis=2)
        condition = self.condition(conditions, B)
        cross = self.cross_condition(conditions, B)
        out, text_logits = self._heads(self.transformer(self.embed(inputs, condition), cross=cross))
        if cfg.dep_q:
            logits = self.depformer(out, delayed[:, : cfg.dep_q])  # delayed time axis
            logits, mask = undelay(logits, cfg.delays[1 : 1 + cfg.dep_q])
            mask = mask & (codes[:, 1 : 1 + cfg.dep_q] != -1)
        else:  # no depth decoder (Kyutai's STT): text is the only output
            logits = mx.zeros((B, 0, T, cfg.card), dtype=out.dtype)
            mask = mx.zeros((B, 0, T), dtype=mx.bool_)
        text_logits, text_mask = undelay(text_logits[:, None], cfg.delays[:1])
        text_mask = text_mask & (codes[:, :1] != -1)
        return LmOutput(text_logits, text_mask, logits, mask)

    def _check_range(self, codes: mx.array) -> None:
        """Out-of-range tokens would read outside the embedding tables: refuse them."""
        cfg = self.cfg
        text_high = cfg.text_card
        if cfg.demux_second_text_stream:  # two text tokens in one: (second + 1) * num + first
            text_high = (cfg.text_card + 1) * (cfg.text_card + 2) - 1
        high = mx.array([text_high] + [cfg.card] * cfg.n_q)[None, :, None]
        bad = mx.any((codes < -1) | (codes > high)).item()
        if bad:
            raise ValueError(
                f"codes out of range: text tokens must be in [-1, {text_high}] and audio "
                f"tokens in [-1, {cfg.card}] (-1: no input; the top value: start token)"
            )

    def __call__(self, codes: mx.array, conditions: dict | list[dict] | None = None) -> LmOutput:
        return self.forward(codes, conditions)
