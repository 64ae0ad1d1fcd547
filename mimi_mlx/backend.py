"""Backend-specific choices, made in one place.

MLX's CPU backend (Linux, CI) is fastest and exact in float32: its bfloat16 matmuls and its
quantized matmuls with bfloat16 activations are several times slower. On Metal (and CUDA), bfloat16
halves memory traffic and is the natural choice for the large language model.
"""

from __future__ import annotations

import mlx.core as mx


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
