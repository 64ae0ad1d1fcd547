"""Will a checkpoint fit? An estimate from the files' headers against the memory available.

The estimate reads only the safetensors headers: float tensors are counted at the compute dtype
(bfloat16 weights are widened to float32 on the CPU), packed quantized weights as they are, plus
the temporal transformer's KV cache (keys and values of every layer over its whole context).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlx.core as mx

from mimi_mlx.io.safetensors import read_header
from mimi_mlx.nn.backend import lm_compute_dtype

FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U32": 4,
    "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
MARGIN = 1.15  # activations, the allocator's slack, the Python process


class MemoryCheckError(ValueError):
    """The checkpoint needs more memory than the machine has available."""


def weights_bytes(path: str | Path, float_bytes: int) -> int:
    """Memory the tensors of one safetensors file take once loaded.

    Falls back to the file's size when its header cannot be read.
    """
    path = Path(path)
    header = read_header(path)
    if header is None:
        return path.stat().st_size
    total = 0
    for t in header.values():
        count = 1
        for d in t.get("shape", []):
            count *= int(d)
        dtype = t.get("dtype", "F32")
        total += count * (float_bytes if dtype in FLOAT_DTYPES else DTYPE_BYTES.get(dtype, 4))
    return total


def kv_cache_bytes(cfg, dtype_bytes: int) -> int:
    """Keys and values of the temporal transformer's every layer over its whole context (bytes).

    `cfg`: an `LmConfig`. Grouped-query models (`kv_repeat` > 1, e.g. Hibiki-Zero) cache
    `num_heads / kv_repeat` heads; an unlimited context is counted as 3000 steps (Moshi's).
    """
    t = cfg.transformer_config()
    kv_heads = t.num_heads // t.kv_repeat
    return 2 * t.num_layers * (t.context or 3000) * kv_heads * t.head_dim * dtype_bytes


def estimate_bytes(weight_files: list[Path], cfg, mimi_file: Path | None = None) -> int:
    """Estimated memory of the language model, its KV cache and Mimi (bytes)."""
    float_bytes = lm_compute_dtype().size
    total = sum(weights_bytes(f, float_bytes) for f in weight_files)
    if mimi_file is not None:
        total += weights_bytes(mimi_file, 4)  # Mimi computes in float32
    if cfg is not None:
        total += kv_cache_bytes(cfg, float_bytes)
    return int(total * MARGIN)


def available_bytes() -> int | None:
    """Memory this process can still use (None if unknown).

    Linux: `MemAvailable`. macOS: the GPU's recommended working set (Metal), else physical memory.
    """
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None
    try:
        info = mx.device_info()
        for key in ("max_recommended_working_set_size", "memory_size"):
            if info.get(key):
                return int(info[key])
    except Exception:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, available: int | None = None) -> None:
    """Raise MemoryCheckError when `needed` bytes exceed the memory available."""
    available = available_bytes() if available is None else available
    if available is not None and needed > available:
        raise MemoryCheckError(
            f"not enough memory for {what}: it needs about {format_bytes(needed)}, "
            f"{format_bytes(available)} are available. Close other programs, or choose a smaller "
            "checkpoint (for example the 4-bit kyutai/moshiko-mlx-q4)."
        )


def format_bytes(n: float) -> str:
    """A size for people, in decimal units: `1.2 TB`, `11.5 GB`, `240 MB`, `12 kB`."""
    for unit, scale, digits in (("TB", 1e12, 1), ("GB", 1e9, 1), ("MB", 1e6, 0)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n / 1e3:.0f} kB"
