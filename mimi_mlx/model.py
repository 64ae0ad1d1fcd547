"""Mimi: batch `encode`/`decode` and exact streaming `encode_step`/`decode_step`."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from .config import MimiConfig
from .conv import StreamingConv1d, StreamingConvTranspose1d
from .nn.backend import codec_compute_dtype
from .nn.streaming import StreamingModule
from .nn.transformer import Transformer
from .quantizer import SplitResidualVectorQuantizer
from .seanet import SeanetDecoder, SeanetEncoder


class Mimi(StreamingModule):
    """Kyutai's Mimi codec: 24 kHz mono audio <-> 12.5 Hz frames of up to 32 codes.

    Batch calls (`encode`, `decode`) never touch the stream; `encode_step` and `decode_step`
    each keep their own state until `reset()`. Streaming output equals batch output for any split
    of the input into whole frames.
    """

    def __init__(self, cfg: MimiConfig | None = None, source: str = ""):
        super().__init__()
        cfg = cfg or MimiConfig()
        self.cfg = cfg
        self.source = source  # the checkpoint it was loaded from (a codes file records it)
        dim = cfg.seanet.dimension
        stride = cfg.resample_stride
        self.encoder = SeanetEncoder(cfg.seanet)
        self.encoder_transformer = Transformer(cfg.transformer, step_tokens=stride)
        self.downsample = StreamingConv1d(
            dim, dim, 2 * stride, stride=stride, bias=False, pad_mode="replicate"
        )
        self.quantizer = SplitResidualVectorQuantizer(cfg.quantizer)
        self.upsample = StreamingConvTranspose1d(
            dim, dim, 2 * stride, stride=stride, groups=dim, bias=False
        )
        self.decoder_transformer = Transformer(cfg.transformer, step_tokens=stride)
        self.decoder = SeanetDecoder(cfg.seanet)

    # -- facts ---------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.cfg.frame_rate

    @property
    def frame_size(self) -> int:
        """Samples per code frame (1920 at 24 kHz and 12.5 Hz)."""
        return self.cfg.frame_size

    @property
    def num_codebooks(self) -> int:
        """Codebooks in the checkpoint (32 for Kyutai's Mimi)."""
        return self.cfg.quantizer.n_q

    @property
    def cardinality(self) -> int:
        """Codewords per codebook (2048)."""
        return self.cfg.quantizer.bins

    # -- input checks --------------------------------------------------------------------------
    def _audio(self, audio, streaming: bool) -> mx.array:
        """(B, 1, T), (B, T) or (T,) audio -> (B, T, 1) in the codec's dtype."""
        x = mx.array(audio) if not isinstance(audio, mx.array) else audio
        if x.ndim == 1:
            x = x[None, None]
        elif x.ndim == 2:
            x = x[:, None]
        if x.ndim != 3 or x.shape[1] != self.cfg.channels:
            raise ValueError(
                f"audio must be (batch, {self.cfg.channels}, samples), (batch, samples) or "
                f"(samples,); got shape {tuple(x.shape)}. Downmix stereo to mono first."
            )
        if not mx.issubdtype(x.dtype, mx.floating):
            raise ValueError(f"audio must be floating point in [-1, 1], not {x.dtype}")
        T = x.shape[-1]
        if streaming and (T == 0 or T % self.frame_size):
            raise ValueError(
                f"encode_step takes whole frames: {T} samples is not a positive multiple of "
                f"{self.frame_size}. Buffer the audio until a frame is complete."
            )
        if T == 0:
            raise ValueError("audio is empty")
        return x.transpose(0, 2, 1).astype(codec_compute_dtype())

    def _num_quantizers(self, num_quantizers: int | None) -> int:
        n = self.num_codebooks if num_quantizers is None else num_quantizers
        if not 1 <= n <= self.num_codebooks:
            raise ValueError(f"num_quantizers must be in 1..{self.num_codebooks}, got {n}")
        return n

    def _codes(self, codes, check_range: bool = True) -> mx.array:
        c = mx.array(codes) if not isinstance(codes, mx.array) else codes
        if c.ndim == 2:
            c = c[None]
        if c.ndim != 3 or not 1 <= c.shape[1] <= self.num_codebooks or c.shape[2] == 0:
            raise ValueError(
                f"codes must be (batch, codebooks, frames) with 1..{self.num_codebooks} codebooks "
                f"and at least one frame; got shape {tuple(c.shape)}"
            )
        if not mx.issubdtype(c.dtype, mx.integer):
            raise ValueError(f"codes must be integers, not {c.dtype}")
        if check_range:  # reads the values: waits for codes that are still being computed
            lo, hi = mx.min(c).item(), mx.max(c).item()
            if lo < 0 or hi >= self.cardinality:
                raise ValueError(f"codes must be in 0..{self.cardinality - 1}; found {lo}..{hi}")
        return c.astype(mx.int32)

    # -- batch ---------------------------------------------------------------------------------
    def encode_latent(self, audio, padding_mask=None) -> mx.array:
        """Unquantized latents (B, T_frames, dimension) of audio (B, 1, T)."""
        x = self._audio(audio, streaming=False)
        if padding_mask is not None:
            x = x * mx.array(padding_mask).reshape(x.shape[0], -1, 1).astype(x.dtype)
        pad = -x.shape[1] % self.frame_size  # whole frames: zeros at the end
        if pad:
            x = mx.pad(x, [(0, 0), (0, pad), (0, 0)])
        emb = self.encoder_transformer(self.encoder(x))
        return self.downsample(emb)

    def encode(self, audio, num_quantizers: int | None = None, padding_mask=None) -> mx.array:
        """Encode audio into codes.

        Args:
            audio: (B, 1, T), (B, T) or (T,) float samples at 24 kHz. A length that is not a whole
                number of frames is padded with zeros at the end.
            num_quantizers: codebooks to return, 1..32 (default: all of them). Moshi uses 8.
            padding_mask: optional (B, T) mask, 0 where samples are padding (they are zeroed).

        Returns:
            codes (B, K, ceil(T / 1920)) int32.
        """
        n_q = self._num_quantizers(num_quantizers)
        return self.quantizer.encode(self.encode_latent(audio, padding_mask), n_q)

    def decode_latent(self, codes) -> mx.array:
        """Quantized latents (B, T, dimension) of codes (B, K, T)."""
        return self.quantizer.decode(self._codes(codes))

    def decode(self, codes) -> mx.array:
        """Decode codes (B, K, T) (any K from 1 to 32) into audio (B, 1, T * 1920)."""
        emb = self.upsample(self.decode_latent(codes))
        audio = self.decoder(self.decoder_transformer(emb))
        return audio.transpose(0, 2, 1)

    # -- streaming -----------------------------------------------------------------------------
    def encode_step(self, pcm, num_quantizers: int | None = None) -> mx.array:
        """Encode the next whole frames of a stream: (B, 1, n * 1920) -> codes (B, K, n)."""
        n_q = self._num_quantizers(num_quantizers)
        x = self._audio(pcm, streaming=True)
        emb = self.encoder_transformer.step(self.encoder.step(x))
        return self.quantizer.encode(self.downsample.step(emb), n_q)

    def decode_step(self, codes, check_range: bool = True) -> mx.array:
        """Decode the next frames of a stream: codes (B, K, n) -> audio (B, 1, n * 1920).

        Args:
            codes: (B, K, n) integers in 0..2047.
            check_range: verify the code values (default). Pass False for codes a model just
                produced, so decoding stays lazy instead of waiting for them.
        """
        emb = self.upsample.step(self.quantizer.decode(self._codes(codes, check_range)))
        audio = self.decoder.step(self.decoder_transformer.step(emb))
        return audio.transpose(0, 2, 1)

    def reset_encoder(self) -> None:
        """Forget the encoding stream only."""
        for module in (self.encoder, self.encoder_transformer, self.downsample):
            module.reset()

    def restart_encoder_rows(self, rows: list[int]) -> None:
        """Start new encoding streams on some rows of the batch (the others go on): from the
        next `encode_step`, each of those rows gives the codes a fresh stream gives."""
        for module in (self.encoder, self.encoder_transformer, self.downsample):
            module.restart_rows(rows)

    def resize_encoder_batch(self, batch: int) -> None:
        """Encode `batch` rows from the next `encode_step`: rows added at the end start fresh
        streams, rows beyond `batch` are dropped."""
        for module in (self.encoder, self.encoder_transformer, self.downsample):
            module.resize_batch(batch)

    def reset_decoder(self) -> None:
        """Forget the decoding stream only."""
        for module in (self.upsample, self.decoder_transformer, self.decoder):
            module.reset()

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, repo_id_or_path: str | Path = "kyutai/mimi", revision: str | None = None
    ) -> Mimi:
        """Load a checkpoint from a hub repo id, a local folder or a `.safetensors` file.

        Kyutai's layout (`tokenizer-e351c8d8-checkpoint125.safetensors`) and transformers' layout
        (`config.json` + `model.safetensors`, as in `kyutai/mimi`) are told apart by their tensor
        names.
        """
        from .checkpoint import load_mimi

        return load_mimi(repo_id_or_path, revision=revision)


def to_numpy(x: mx.array) -> np.ndarray:
    """Evaluate and copy an MLX array to NumPy (float32 for floating arrays)."""
    if mx.issubdtype(x.dtype, mx.floating):
        x = x.astype(mx.float32)
    return np.array(x)
