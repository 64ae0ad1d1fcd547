"""`mx.compile` for streaming steps that write one token into ring caches.

A compiled function is traced once per input shape and replayed as one graph with fused
element-wise kernels: fewer operations for the device and no Python per operation. MLX compiles
pure functions, so a compiled step takes its ring caches' arrays (`RingKVCache.state`, as mlx-lm's
caches) as inputs and returns them updated; inside the trace real `RingKVCache`s are rebuilt from
that state and the step runs unchanged. The position is either fixed (the depth decoder: codebook
k always runs at position k) or a traced scalar, so one trace serves every step of the temporal
transformer; a ring then grows between calls, outside the graph, so shapes change only when it
grows (once per 256 steps until it is full). `MOSHI_MLX_COMPILE=0` turns compiling off; the
outputs are the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn

from .kv_cache import RingKVCache

Step = Callable[..., mx.array]  # step(*inputs, caches: list[RingKVCache]) -> y


def compile_enabled() -> bool:
    """False when the environment says `MOSHI_MLX_COMPILE=0`."""
    return os.environ.get("MOSHI_MLX_COMPILE", "1") != "0"


def compiled_step(step: Step, module: nn.Module, position: int | None = None) -> Step:
    """Compile `step(*inputs, caches) -> y`, a one-token step that updates `caches` in place.

    `module` holds the weights `step` reads: they are inputs of the compiled graph, so loading new
    weights into it is seen. `position`: the offset the caches always have when `step` runs
    (another offset runs `step` uncompiled); None: any offset, traced, for caches that already
    hold arrays with room for the token (else `step` runs uncompiled). With compiling off,
    `step` itself is returned.
    """
    if not compile_enabled():
        return step

    def pure(inputs: list, states: list[list[mx.array]], offset: mx.array | int, meta: tuple):
        # meta: (capacity, context) of each cache, constants of the trace
        caches = [
            RingKVCache.from_state(state, (capacity, context, offset))
            for state, (capacity, context) in zip(states, meta, strict=True)
        ]
        return step(*inputs, caches), [c.state for c in caches]

    compiled = mx.compile(pure, inputs=module.state)

    def run(*args) -> mx.array:
        *inputs, caches = args
        if position is None:
            if not all(c.reserve(1) for c in caches):
                return step(*args)
            offset = mx.array(caches[0].offset, dtype=mx.int32)
        elif any(c.offset != position for c in caches):
            return step(*args)  # not the position this was compiled for
        else:
            offset = position
        meta = tuple((c.capacity, c.context) for c in caches)
        y, states = compiled(inputs, [c.state for c in caches], offset, meta)
        for c, state in zip(caches, states, strict=True):
            c.state = state
            c.offset += 1
        return y

    return run
