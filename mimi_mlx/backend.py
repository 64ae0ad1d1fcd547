"""Backend-specific choices, made in one place.

MLX's CPU backend (Linux, CI) is fastest and exact in float32: its bfloat16 matmuls and its
quantized matmuls with bfloat16 activations are several times slower. On Metal (and CUDA), bfloat16
halves memory traffic and is the natural choice for the large language model.
"""

from __future__ import annotations

import sys

import mlx.core as mx

BUNDLED_BLAS = "mlx_cpu.libs/libblas"  # the reference BLAS in MLX's Linux CPU wheel


def on_gpu() -> bool:
    """True when MLX's default device is a GPU (Metal on macOS, CUDA on Linux)."""
    return mx.default_device().type == mx.DeviceType.gpu


def lm_compute_dtype() -> mx.Dtype:
    """Activation dtype for the language models: bfloat16 on a GPU, float32 on the CPU."""
    return mx.bfloat16 if on_gpu() else mx.float32


def codec_compute_dtype() -> mx.Dtype:
    """Dtype of Mimi's weights and activations: float32 everywhere.

    The codec is small, and its codes sit on nearest-codeword decisions that bfloat16 would change.
    """
    return mx.float32


def on_reference_blas() -> bool:
    """True when MLX's CPU backend does its matrix products with the reference (netlib) BLAS its
    Linux wheel bundles, 5-10x slower than OpenBLAS (which can be preloaded, see the README).

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
