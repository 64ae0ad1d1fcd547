"""Backend-specific choices, made in one place.

MLX's CPU backend (Linux, CI) is fastest and exact in float32: its bfloat16 matmuls and its
quantized matmuls with bfloat16 activations are several times slower. On Metal (and CUDA), bfloat16
halves memory traffic and is the natural choice for the large language model.

`MOSHI_MLX_LM_DTYPE=bfloat16` (or `float32`) overrides the language models' choice on any
backend: the tests use it to run the GPU's bfloat16 path on the CPU.
"""

from __future__ import annotations

import os

import mlx.core as mx

LM_DTYPE_ENV = "MOSHI_MLX_LM_DTYPE"
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


def on_gpu() -> bool:
    """True when MLX's default device is a GPU (Metal on macOS, CUDA on Linux)."""
    return mx.default_device().type == mx.DeviceType.gpu


def lm_compute_dtype() -> mx.Dtype:
    """Activation dtype for the language models: bfloat16 on a GPU, float32 on the CPU.

    `MOSHI_MLX_LM_DTYPE` (bfloat16, float16 or float32) overrides it.
    """
    forced = os.environ.get(LM_DTYPE_ENV)
    if forced:
        if forced not in DTYPES:
            raise ValueError(f"{LM_DTYPE_ENV}={forced!r}: choose one of {', '.join(DTYPES)}")
        return DTYPES[forced]
    return mx.bfloat16 if on_gpu() else mx.float32


def codec_compute_dtype() -> mx.Dtype:
    """Dtype of Mimi's weights and activations: float32 everywhere.

    The codec is small, and its codes sit on nearest-codeword decisions that bfloat16 would change.
    """
    return mx.float32


def backend_name() -> str:
    """ "metal", "cuda" or "cpu": where MLX's default device computes."""
    if not on_gpu():
        return "cpu"
    cuda = getattr(mx, "cuda", None)
    return "cuda" if cuda is not None and cuda.is_available() else "metal"


def device_description() -> str:
    """One line naming the device, for benchmark output: `metal: Apple M2 Max, 32 GB`."""
    try:
        info = mx.device_info()
    except Exception:  # an older MLX without device_info
        info = {}
    name = info.get("device_name") or info.get("architecture") or "unknown device"
    memory = info.get("memory_size")
    size = f", {memory / 2**30:.0f} GiB" if memory else ""
    return f"{backend_name()}: {name}{size} (MLX {mx.__version__})"
