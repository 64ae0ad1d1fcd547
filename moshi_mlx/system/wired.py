"""Keep the model resident on Metal: MLX's wired limit, as mlx-lm sets it.

On Apple silicon the GPU shares the Mac's memory, and macOS may page out memory the GPU is not
using at that instant; a model that is paged back in every step falls behind real time. While a
model runs, `wired_limit` raises MLX's wired limit (`mx.set_wired_limit`) to cover its weights and
caches, within the device's recommended working set (`max_recommended_working_set_size`), and
restores the previous limit afterwards, also on an error or Ctrl-C. When the model needs more
than that working set it cannot stay resident: `residency_warning` says so before loading and
names a smaller checkpoint. Everywhere else (the CPU, CUDA) both do nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import mlx.core as mx
from mlx.utils import tree_reduce

from mimi_mlx.nn.backend import backend_name

from .memory import format_bytes, kv_cache_bytes

WORKING_SET = "max_recommended_working_set_size"


def metal_info() -> dict | None:
    """Metal's device facts (`mx.device_info()`), or None when MLX does not compute on Metal."""
    if backend_name() != "metal":
        return None
    info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    return dict(info) if info.get(WORKING_SET) else None


def arrays_bytes(*trees) -> int:
    """Bytes of every array in the given modules or trees."""
    return sum(
        tree_reduce(lambda total, x: total + (x.nbytes if isinstance(x, mx.array) else 0), t, 0)
        for t in trees
    )


def session_bytes(lm, *others) -> int:
    """Weights of `lm` and `others` plus `lm`'s KV cache at its full context (bytes)."""
    return arrays_bytes(lm, *others) + kv_cache_bytes(lm.cfg, lm.dtype.size)


def residency_warning(needed: int, what: str, info: dict | None = None) -> str | None:
    """A warning when `needed` bytes exceed what Metal keeps resident (None: fits, or no Metal).

    Args:
        needed: bytes of weights and caches (`memory.estimate_bytes` before loading).
        what: the checkpoint, for the message.
        info: Metal's device facts (default: `metal_info()`).
    """
    info = metal_info() if info is None else info
    if not info or needed <= info[WORKING_SET]:
        return None
    smaller = "the 4-bit kyutai/moshiko-mlx-q4" if "q4" not in what else "a smaller model"
    return (
        f"warning: {what} needs about {format_bytes(needed)}, more than the "
        f"{format_bytes(info[WORKING_SET])} this Mac keeps resident for the GPU: it will be "
        f"paged in and out and fall behind real time. Choose {smaller}."
    )


@contextmanager
def wired_limit(
    needed: int,
    info: dict | None = None,
    set_limit: Callable[[int], int] | None = None,
) -> Iterator[int]:
    """While the block runs, keep `needed` bytes wired (within the recommended working set).

    Yields the limit set (0 when nothing was done: no Metal). The previous limit comes back when
    the block ends, however it ends (an exception, KeyboardInterrupt), after the GPU's queued
    work is done. `info` and `set_limit` stand in for Metal's (tests).
    """
    info = metal_info() if info is None else info
    if not info:
        yield 0
        return
    set_limit = set_limit or mx.set_wired_limit
    limit = min(int(needed), int(info[WORKING_SET]))
    if needed > info[WORKING_SET]:
        print(
            f"warning: the model needs {format_bytes(needed)}; only {format_bytes(limit)} "
            "stay resident on this Mac",
            file=sys.stderr,
        )
    previous = set_limit(limit)
    try:
        yield limit
    finally:
        mx.synchronize()
        set_limit(previous)
