"""The streaming transformer shared by Mimi and Moshi.

Parameter names follow Kyutai's MLX checkpoints (`self_attn.in_proj`, `gating.linear_in`,
`norm1`, ...), so their files load without renaming. Attention is causal with a sliding context
window, in batch and in streaming alike, and every layer keeps a bounded ring cache while streaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .attention import (
    POSITIONAL_EMBEDDINGS,
    Attention,
    CrossAttention,
    attention_mask,
    row_start_mask,
    sin_embedding,
)
from .compiled import compile_enabled, compiled_step
from .kv_cache import RingKVCache
from .layers import LayerScale, make_mlp, make_norm
from .streaming import StreamingModule


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
    positional_embedding: str = "sin"  # one of POSITIONAL_EMBEDDINGS
    positional_scale: float = 1.0
    kv_repeat: int = 1
    cross_attention: bool = False  # a cross-attention block in every layer (Kyutai's TTS)
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.positional_embedding not in POSITIONAL_EMBEDDINGS:
            raise ValueError(
                f"positional_embedding {self.positional_embedding!r} is not implemented "
                f"(expected one of {', '.join(POSITIONAL_EMBEDDINGS)})"
            )

    @classmethod
    def from_dict(cls, d: dict) -> TransformerConfig:
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in d.items() if k in names and k != "extra"}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


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
        offsets: mx.array | None = None,
    ) -> mx.array:
        """x (B, T, d); `cross`: this layer's keys and values of the conditioning source;
        `offsets` (B,): each row's own position (rows restarted apart, see `Attention`)."""
        update = self.self_attn(self.norm1(x), cache, mask, offsets)
        x = x + (self.layer_scale_1(update) if self.has_layer_scale else update)
        if "cross_attention" in self:
            if cross is None:
                raise ValueError("this transformer needs a cross-attention source")
            update = self.cross_attention(self.norm_cross(x), cross)
            x = x + (self.layer_scale_cross(update) if self.has_layer_scale else update)
        update = self.gating(self.norm2(x))
        return x + (self.layer_scale_2(update) if self.has_layer_scale else update)


class Transformer(StreamingModule):
    """A stack of layers: `__call__` for a whole sequence, `step` + `reset` for streaming.

    The batch call never touches the streaming state. It processes the sequence in chunks through
    fresh caches, so long inputs cost memory linear in their length, and gives the same result as
    streaming the same tokens.

    Rows of a streaming batch can start new streams apart (`restart_rows`, `resize_batch`): the
    ring keeps one offset for all, and each row remembers where its stream started; it then sees
    only its own keys, at positions counted from its start (RoPE, sinusoids). Until a row is
    restarted, every row starts at 0 and the steps are those of one plain batch.
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
        self._compiled_rows: list | None = None
        self._starts: mx.array | None = None  # (B,) int32: where each row's stream started

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

    def _run(
        self,
        x: mx.array,
        caches: list[RingKVCache],
        cross: list | None = None,
        starts: mx.array | None = None,
    ) -> mx.array:
        if starts is not None:
            return self._run_rows(x, caches, cross, starts)
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

    def _run_rows(
        self, x: mx.array, caches: list[RingKVCache], cross: list | None, starts: mx.array
    ) -> mx.array:
        """`_run` for rows whose streams started at positions `starts` (B,)."""
        T = x.shape[1]
        offset = caches[0].offset
        offsets = offset - starts  # (B,) each row's own position of its first token here
        if self.cfg.positional_embedding in ("sin", "sin_rope"):
            positions = offsets[:, None] + mx.arange(T, dtype=mx.int32)  # (B, T)
            pos = sin_embedding(positions, x.shape[-1], self.cfg.max_period)
            x = x + self.cfg.positional_scale * pos.astype(x.dtype)
        keys = caches[0].key_positions(T)
        mask = None
        if self.cfg.causal:
            queries = mx.arange(offset, offset + T, dtype=mx.int32)
            mask = attention_mask(queries, keys, self.cfg.context)
        mask = row_start_mask(mask, keys, starts)  # (B, 1, T, S)
        if self._compile_steps and T == 1 and cross is None:
            for step, cache in zip(self._compiled_row_layers(), caches, strict=True):
                x = step(x, mask, offsets, [cache])
            return x
        for i, (layer, cache) in enumerate(zip(self.layers, caches, strict=True)):
            x = layer(x, cache, mask, None if cross is None else cross[i], offsets)
        return x

    def _compiled_row_layers(self) -> list:
        """`_compiled_layers` for restarted rows: `(x, mask, offsets, [cache]) -> x`."""
        if self._compiled_rows is None:
            self._compiled_rows = [
                compiled_step(
                    lambda x, mask, offsets, caches, layer=layer: layer(
                        x, caches[0], mask, None, offsets
                    ),
                    layer,
                )
                for layer in self.layers
            ]
        return self._compiled_rows

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
        return self._run(x, self._caches, cross, self._starts)

    def reset_state(self) -> None:
        self._caches = None
        self._starts = None

    def _rows(self) -> int | None:
        """Rows of the streaming state, None before the first step."""
        if self._caches is None or self._caches[0].keys is None:
            return None
        return self._caches[0].keys.shape[0]

    def restart_rows_state(self, rows: list[int]) -> None:
        B = self._rows()
        if B is None or not rows:
            return  # nothing streamed yet: every row starts at the next step anyway
        starts = np.zeros(B, np.int32) if self._starts is None else np.array(self._starts)
        starts[rows] = self.offset
        self._starts = mx.array(starts)

    def resize_batch_state(self, batch: int) -> None:
        B = self._rows()
        if B is None or batch == B:
            return
        for cache in self._caches:
            cache.resize_batch(batch)
        starts = np.zeros(B, np.int32) if self._starts is None else np.array(self._starts)
        starts = np.concatenate([starts, np.full(max(0, batch - B), self.offset, np.int32)])
        self._starts = mx.array(starts[:batch])

    @property
    def offset(self) -> int:
        """How many tokens have been streamed since the last reset."""
        return 0 if self._caches is None else self._caches[0].offset
