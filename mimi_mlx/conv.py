"""Causal 1-D convolutions with exact streaming, channels-last: inputs are (B, T, C)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .nn.streaming import StreamingModule


class StreamingConv1d(StreamingModule):
    """A causal convolution: the input is left-padded with `effective_kernel - stride` samples.

    The padding is zeros (`pad_mode="constant"`) or copies of the first sample (`"replicate"`).
    While streaming, the last `effective_kernel - stride` input samples are carried to the next
    step, so any split of the input into multiples of the stride gives the batch output.

    Weights are MLX's layout (out, kernel, in / groups); PyTorch's is (out, in / groups, kernel).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ):
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode must be 'constant' or 'replicate', not {pad_mode!r}")
        self.weight = mx.zeros((out_channels, kernel_size, in_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.pad_mode = pad_mode
        self.history = (kernel_size - 1) * dilation + 1 - stride  # samples carried between steps
        self._previous: mx.array | None = None
        self._fresh: np.ndarray | None = None  # (B,) bool: rows whose history restarts

    def _initial_history(self, x: mx.array) -> mx.array:
        B, _, C = x.shape
        if self.pad_mode == "replicate":
            return mx.repeat(x[:, :1], self.history, axis=1)
        return mx.zeros((B, self.history, C), dtype=x.dtype)

    def _forward(self, x: mx.array, previous: mx.array | None) -> tuple[mx.array, mx.array | None]:
        if self.history > 0:
            x = mx.concatenate([previous, x], axis=1)
            previous = x[:, -self.history :]
        y = mx.conv1d(
            x, self.weight, stride=self.stride, dilation=self.dilation, groups=self.groups
        )
        if "bias" in self:
            y = y + self.bias
        return y, previous

    def __call__(self, x: mx.array) -> mx.array:
        """x (B, T, C_in) with T a multiple of the stride -> (B, T / stride, C_out)."""
        previous = self._initial_history(x) if self.history > 0 else None
        return self._forward(x, previous)[0]

    def step(self, x: mx.array) -> mx.array:
        """The next piece of a stream, T a multiple of the stride."""
        if self._previous is None and self.history > 0:
            self._previous = self._initial_history(x)
        elif self._fresh is not None:  # restarted rows: the history a fresh stream starts with
            fresh = mx.array(self._fresh)[:, None, None]
            self._previous = mx.where(fresh, self._initial_history(x), self._previous)
        self._fresh = None
        y, self._previous = self._forward(x, self._previous)
        return y

    def reset_state(self) -> None:
        self._previous = None
        self._fresh = None

    def restart_rows_state(self, rows: list[int]) -> None:
        # (lazy: a replicated history is the first sample of the row's next input)
        if self._previous is not None and rows:
            if self._fresh is None:
                self._fresh = np.zeros(self._previous.shape[0], bool)
            self._fresh[rows] = True

    def resize_batch_state(self, batch: int) -> None:
        if self._previous is None or self._previous.shape[0] == batch:
            return
        B, H, C = self._previous.shape
        fresh = np.zeros(B, bool) if self._fresh is None else self._fresh
        if batch < B:
            self._previous, self._fresh = self._previous[:batch], fresh[:batch]
            return
        more = mx.zeros((batch - B, H, C), dtype=self._previous.dtype)
        self._previous = mx.concatenate([self._previous, more], axis=0)
        self._fresh = np.concatenate([fresh, np.ones(batch - B, bool)])


class StreamingConvTranspose1d(StreamingModule):
    """A causal transposed convolution, trimmed on the right to `stride` samples per input frame.

    Computed as one matmul (each input frame times the kernel gives `kernel` output frames) and an
    overlap-add, which is several times faster than `mx.conv_transpose1d` on the CPU. While
    streaming, the tail that later frames still add to is carried, without bias.

    Weights are (in, kernel, out / groups); PyTorch's are (in, out / groups, kernel). Groups must
    be 1 or equal to the channel count (a channel-wise convolution).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        groups: int = 1,
        bias: bool = True,
    ):
        super().__init__()
        self.depthwise = groups > 1
        if self.depthwise and not (groups == in_channels == out_channels):
            raise ValueError("transposed convolutions support groups=1 or groups=channels only")
        self.weight = mx.zeros((in_channels, kernel_size, out_channels // groups))
        if bias:
            self.bias = mx.zeros((out_channels,))
        self.kernel_size = kernel_size
        self.stride = stride
        self.blocks = -(-kernel_size // stride)  # output blocks of `stride` frames per input frame
        self._partial: mx.array | None = None

    def _forward(self, x: mx.array, partial: mx.array | None) -> tuple[mx.array, mx.array]:
        B, T, C = x.shape
        K, S, M = self.kernel_size, self.stride, self.blocks
        if self.depthwise:
            # (B, T, 1, C) * (K, C): every channel has its own kernel.
            z = x[:, :, None, :] * self.weight[:, :, 0].T
        else:
            z = (x @ self.weight.reshape(C, -1)).reshape(B, T, K, -1)
        out_channels = z.shape[-1]
        if M * S != K:
            z = mx.pad(z, [(0, 0), (0, 0), (0, M * S - K), (0, 0)])
        z = z.reshape(B, T, M, S, out_channels)
        # Block i of input frame t lands on output block t + i.
        full = sum(
            mx.pad(z[:, :, i], [(0, 0), (i, M - 1 - i), (0, 0), (0, 0)]) for i in range(M)
        )  # (B, T + M - 1, S, out)
        if partial is not None:
            full = mx.concatenate([full[:, : M - 1] + partial, full[:, M - 1 :]], axis=1)
        y = full[:, :T].reshape(B, T * S, out_channels)
        if "bias" in self:
            y = y + self.bias
        return y, full[:, T:]

    def __call__(self, x: mx.array) -> mx.array:
        """x (B, T, C_in) -> (B, T * stride, C_out)."""
        return self._forward(x, None)[0]

    def step(self, x: mx.array) -> mx.array:
        y, self._partial = self._forward(x, self._partial)
        return y

    def reset_state(self) -> None:
        self._partial = None

    def restart_rows_state(self, rows: list[int]) -> None:
        if self._partial is not None and rows:  # a fresh stream has nothing to add
            keep = np.ones(self._partial.shape[0], bool)
            keep[rows] = False
            self._partial = self._partial * mx.array(keep)[:, None, None, None]

    def resize_batch_state(self, batch: int) -> None:
        if self._partial is None or self._partial.shape[0] == batch:
            return
        B = self._partial.shape[0]
        if batch < B:
            self._partial = self._partial[:batch]
            return
        more = mx.zeros((batch - B, *self._partial.shape[1:]), dtype=self._partial.dtype)
        self._partial = mx.concatenate([self._partial, more], axis=0)
