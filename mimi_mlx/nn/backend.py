"""Backend-specific choices, made in one place.

MLX's CPU backend (Linux, CI) is fastest and exact in float32: its bfloat16 matmuls and its
quantized matmuls with bfloat16 activations are several times slower. On Metal (and CUDA), bfloat16
halves memory traffic and is the natural choice for the large language model.

`MOSHI_MLX_LM_DTYPE=bfloat16` (or `float32`) overrides the language models' choice on any
backend: the tests use it to run the GPU's bfloat16 path on the CPU.
"""

from __future__ import annotations

import os
import sys

import mlx.core as mx

LM_DTYPE_ENV = "MOSHI_MLX_LM_DTYPE"
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
BUNDLED_BLAS = "mlx_cpu.libs/libblas"  # the reference BLAS in MLX's Linux CPU wheel


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


def on_reference_blas() -> bool:
    """True when MLX's CPU backend does its matrix products with the reference (netlib) BLAS its
    Linux wheel bundles, 20-30x slower than OpenBLAS (which can be preloaded, see the README).

    The bundled library is loaded privately with MLX: a faster BLAS is in use only if one
    provides `sgemm_` in the global namespace (LD_PRELOAD) ahead of it.
    """
    if not sys.platform.startswith("linux") or on_gpu():
        return False
    try:
        with open("/proc/self/maps") as f:
            bundled = any(BUNDLED_BLAS in line for line in f)
    except OSError:
        return False
    provider = _global_symbol_file("sgemm_")
    return bundled and (provider is None or BUNDLED_BLAS in provider)


def _global_symbol_file(name: str) -> str | None:
    """The shared library that provides C symbol `name` to the whole process, if any."""
    import ctypes

    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    try:
        process = ctypes.CDLL(None)
        address = ctypes.cast(getattr(process, name), ctypes.c_void_p)
        info = DlInfo()
        if not process.dladdr(address, ctypes.byref(info)) or not info.dli_fname:
            return None
    except (AttributeError, OSError):
        return None
    return info.dli_fname.decode(errors="replace")
