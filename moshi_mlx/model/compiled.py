"""`mx.compile` for the depth decoder's per-codebook steps, whose shapes never change.

Codebook k always runs at position k of caches that hold one time step, so each slice's step
(input projection, embedding, transformer, head) is one compiled graph: fused element-wise
kernels and no Python per operation. MLX compiles pure functions, so the caches' arrays are
inputs and outputs; the cache objects are rebuilt inside the trace and updated after the call.
`MOSHI_MLX_COMPILE=0` turns it off (the outputs are identical). The temporal transformer's
one-token steps are compiled in `mimi_mlx.compiled`.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from mimi_mlx.nn.compiled import compile_enabled
from mimi_mlx.nn.kv_cache import RingKVCache


def compiled_step(
    step: Callable[[mx.array, mx.array, list[RingKVCache]], mx.array],
    module: nn.Module,
    position: int,
) -> Callable[[mx.array, mx.array, list[RingKVCache]], mx.array]:
    """Compile `step(x, token, caches) -> y` for caches that are always at `position`.

    `module` holds the weights `step` reads: they are inputs of the compiled graph, so loading
    new weights into it is seen. The returned function has `step`'s signature and updates the
    caches as `step` would.
    """
    if not compile_enabled():
        return step

    def pure(x: mx.array, token: mx.array, state: list[mx.array]):
        caches = [
            _cache_at(capacity, context, position, state, i)
            for i, (capacity, context) in enumerate(layout)
        ]
        y = step(x, token, caches)
        return y, [a for c in caches for a in (c.keys, c.values)]

    compiled = mx.compile(pure, inputs=module.state)
    layout: list[tuple[int, int]] = []

    def run(x: mx.array, token: mx.array, caches: list[RingKVCache]) -> mx.array:
        if any(c.offset != position for c in caches):
            return step(x, token, caches)  # not the position this was compiled for
        layout[:] = [(c.capacity, c.context) for c in caches]
        state = [] if caches[0].keys is None else [a for c in caches for a in (c.keys, c.values)]
        y, new = compiled(x, token, state)
        for i, c in enumerate(caches):
            c.keys, c.values = new[2 * i], new[2 * i + 1]
            c.offset += x.shape[1]
        return y

    return run


def _cache_at(capacity: int, context: int, offset: int, state: list[mx.array], i: int):
    cache = RingKVCache(capacity, context)
    cache.offset = offset
    if state:
        cache.keys, cache.values = state[2 * i], state[2 * i + 1]
    return cache
