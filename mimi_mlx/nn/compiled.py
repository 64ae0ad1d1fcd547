"""`mx.compile` for one-token streaming steps of a transformer layer.

A compiled function is traced once per input shape and replayed as one graph with fused
element-wise kernels: fewer operations for the device and no Python per operation. MLX compiles
pure functions, so the compiled layer step takes its ring cache's arrays, the step's absolute
position (an array, so one trace serves every step) and the attention mask as inputs, and returns
the updated arrays. A ring grows between calls, outside the compiled graph, so shapes change only
when it grows (once per 256 steps until it is full). `MOSHI_MLX_COMPILE=0` turns compiling off;
the outputs are the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from .kv_cache import RingKVCache


def compile_enabled() -> bool:
    """False when the environment says `MOSHI_MLX_COMPILE=0`."""
    return os.environ.get("MOSHI_MLX_COMPILE", "1") != "0"


class _SlotCache:
    """A ring cache inside a compiled step: one token written at slot `offset % capacity`."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array, capacity: int):
        self.keys, self.values, self.offset, self.capacity = keys, values, offset, capacity

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        slot = (self.offset % self.capacity).reshape(1)
        self.keys = mx.slice_update(self.keys, k, slot, axes=(2,))
        self.values = mx.slice_update(self.values, v, slot, axes=(2,))
        return self.keys, self.values


LayerStep = Callable[[mx.array, RingKVCache, mx.array | None], mx.array]


def compiled_layer_step(layer: nn.Module) -> LayerStep:
    """`layer(x, cache, mask)` for one token (T = 1), compiled; the cache is updated in place.

    The layer's weights are inputs of the compiled graph, so loading new weights is seen.
    """

    def pure(x, mask, offset, keys, values, capacity):
        cache = _SlotCache(keys, values, offset, capacity)
        return layer(x, cache, mask), cache.keys, cache.values

    compiled = mx.compile(pure, inputs=layer.state)

    def run(x: mx.array, cache: RingKVCache, mask: mx.array | None, *extra) -> mx.array:
        if any(e is not None for e in extra) or x.shape[1] != 1 or not cache.reserve(1):
            return layer(x, cache, mask, *extra)  # e.g. cross-attention: not compiled here
        offset = mx.array(cache.offset, dtype=mx.int32)
        y, cache.keys, cache.values = compiled(
            x, mask, offset, cache.keys, cache.values, cache.capacity
        )
        cache.offset += 1
        return y

    return run
