"""SEANet: Mimi's convolutional encoder (waveform -> 25 Hz latents) and decoder (back)."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx

from .conv import StreamingConv1d, StreamingConvTranspose1d
from .nn.streaming import StreamingModule


@dataclass
class SeanetConfig:
    """Kyutai's `SEANetEncoder`/`SEANetDecoder` arguments, Mimi's values as defaults."""

    channels: int = 1
    dimension: int = 512
    n_filters: int = 64
    n_residual_layers: int = 1
    ratios: tuple[int, ...] = (8, 6, 5, 4)  # the decoder's order; the encoder runs them reversed
    kernel_size: int = 7
    residual_kernel_size: int = 3
    last_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    pad_mode: str = "constant"

    @property
    def hop_length(self) -> int:
        hop = 1
        for r in self.ratios:
            hop *= r
        return hop


def elu(x: mx.array) -> mx.array:
    """ELU (alpha 1) as `max(x, 0) + expm1(min(x, 0))`: one transcendental op, no select."""
    return mx.maximum(x, 0) + mx.expm1(mx.minimum(x, 0))


class ResidualBlock(StreamingModule):
    """x + conv2(elu(conv1(elu(x)))), with an identity shortcut."""

    def __init__(self, dim: int, kernel_size: int, dilation: int, compress: int, pad_mode: str):
        super().__init__()
        hidden = dim // compress
        self.conv1 = StreamingConv1d(dim, hidden, kernel_size, dilation=dilation, pad_mode=pad_mode)
        self.conv2 = StreamingConv1d(hidden, dim, 1, pad_mode=pad_mode)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.conv2(elu(self.conv1(elu(x))))

    def step(self, x: mx.array) -> mx.array:
        return x + self.conv2.step(elu(self.conv1.step(elu(x))))


def _residual_stack(cfg: SeanetConfig, dim: int) -> list[ResidualBlock]:
    return [
        ResidualBlock(
            dim, cfg.residual_kernel_size, cfg.dilation_base**j, cfg.compress, cfg.pad_mode
        )
        for j in range(cfg.n_residual_layers)
    ]


class EncoderBlock(StreamingModule):
    """Residual blocks, then ELU and a strided convolution that doubles the channels."""

    def __init__(self, cfg: SeanetConfig, dim: int, ratio: int):
        super().__init__()
        self.residuals = _residual_stack(cfg, dim)
        self.downsample = StreamingConv1d(
            dim, 2 * dim, 2 * ratio, stride=ratio, pad_mode=cfg.pad_mode
        )

    def __call__(self, x: mx.array) -> mx.array:
        for block in self.residuals:
            x = block(x)
        return self.downsample(elu(x))

    def step(self, x: mx.array) -> mx.array:
        for block in self.residuals:
            x = block.step(x)
        return self.downsample.step(elu(x))


class DecoderBlock(StreamingModule):
    """ELU and a transposed convolution that halves the channels, then residual blocks."""

    def __init__(self, cfg: SeanetConfig, dim: int, ratio: int):
        super().__init__()
        self.upsample = StreamingConvTranspose1d(dim, dim // 2, 2 * ratio, stride=ratio)
        self.residuals = _residual_stack(cfg, dim // 2)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.upsample(elu(x))
        for block in self.residuals:
            x = block(x)
        return x

    def step(self, x: mx.array) -> mx.array:
        x = self.upsample.step(elu(x))
        for block in self.residuals:
            x = block.step(x)
        return x


class _ConvStack(StreamingModule):
    """`init_conv`, then `blocks`, then ELU and `final_conv`: the shape of both SEANet halves."""

    def __call__(self, x: mx.array) -> mx.array:
        x = self.init_conv(x)
        for block in self.blocks:
            x = block(x)
        return self.final_conv(elu(x))

    def step(self, x: mx.array) -> mx.array:
        x = self.init_conv.step(x)
        for block in self.blocks:
            x = block.step(x)
        return self.final_conv.step(elu(x))


class SeanetEncoder(_ConvStack):
    """Waveform (B, T, channels) -> latents (B, T / hop_length, dimension)."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        dim = cfg.n_filters
        self.init_conv = StreamingConv1d(cfg.channels, dim, cfg.kernel_size, pad_mode=cfg.pad_mode)
        self.blocks = []
        for ratio in reversed(cfg.ratios):
            self.blocks.append(EncoderBlock(cfg, dim, ratio))
            dim *= 2
        self.final_conv = StreamingConv1d(
            dim, cfg.dimension, cfg.last_kernel_size, pad_mode=cfg.pad_mode
        )


class SeanetDecoder(_ConvStack):
    """Latents (B, T, dimension) -> waveform (B, T * hop_length, channels)."""

    def __init__(self, cfg: SeanetConfig):
        super().__init__()
        dim = cfg.n_filters * 2 ** len(cfg.ratios)
        self.init_conv = StreamingConv1d(cfg.dimension, dim, cfg.kernel_size, pad_mode=cfg.pad_mode)
        self.blocks = []
        for ratio in cfg.ratios:
            self.blocks.append(DecoderBlock(cfg, dim, ratio))
            dim //= 2
        self.final_conv = StreamingConv1d(
            dim, cfg.channels, cfg.last_kernel_size, pad_mode=cfg.pad_mode
        )
