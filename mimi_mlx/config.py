"""Mimi's configuration, readable from Kyutai's dicts and from transformers' `config.json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .nn.transformer import TransformerConfig
from .quantizer import QuantizerConfig
from .seanet import SeanetConfig


def _mimi_transformer() -> TransformerConfig:
    return TransformerConfig(
        d_model=512,
        num_heads=8,
        num_layers=8,
        dim_feedforward=2048,
        causal=True,
        context=250,
        max_period=10000.0,
        norm="layer_norm",
        gating="none",
        layer_scale=0.01,
        positional_embedding="rope",
    )


def _pick(cls, d: dict):
    names = {f.name for f in fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})


@dataclass
class MimiConfig:
    """The whole codec: 24 kHz mono in, 12.5 Hz frames of up to 32 codes out (Kyutai's values)."""

    sample_rate: int = 24000
    frame_rate: float = 12.5
    channels: int = 1
    seanet: SeanetConfig = field(default_factory=SeanetConfig)
    transformer: TransformerConfig = field(default_factory=_mimi_transformer)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    @property
    def frame_size(self) -> int:
        """Samples per code frame (1920 for Mimi)."""
        return int(self.sample_rate / self.frame_rate)

    @property
    def encoder_frame_rate(self) -> float:
        return self.sample_rate / self.seanet.hop_length

    @property
    def resample_stride(self) -> int:
        """Stride of the convolution between the encoder's rate (25 Hz) and the frame rate."""
        stride = self.encoder_frame_rate / self.frame_rate
        if stride != int(stride) or stride < 1:
            raise ValueError(
                f"encoder rate {self.encoder_frame_rate} Hz is not a whole multiple of "
                f"the frame rate {self.frame_rate} Hz"
            )
        return int(stride)

    def to_dict(self) -> dict:
        """Kyutai's layout: `{"sample_rate", "frame_rate", "channels", "seanet", ...}`."""
        d = asdict(self)
        d["transformer"].pop("extra", None)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MimiConfig:
        """From Kyutai's `mimi_config` layout (as `to_dict` writes it); absent keys keep Mimi's."""
        base = cls()
        seanet = _pick(SeanetConfig, {**asdict(base.seanet), **d.get("seanet", {})})
        quantizer = _pick(QuantizerConfig, {**asdict(base.quantizer), **d.get("quantizer", {})})
        tr = {**asdict(base.transformer), **d.get("transformer", {})}
        tr.pop("extra", None)
        return cls(
            sample_rate=d.get("sample_rate", base.sample_rate),
            frame_rate=d.get("frame_rate", base.frame_rate),
            channels=d.get("channels", base.channels),
            seanet=seanet,
            transformer=TransformerConfig.from_dict(tr),
            quantizer=quantizer,
        )

    @classmethod
    def from_hf_config(cls, c: dict) -> MimiConfig:
        """From a transformers `MimiConfig` (`config.json` of `kyutai/mimi`)."""
        if c.get("use_conv_shortcut", False):
            raise ValueError("Mimi checkpoints with conv shortcuts are not supported")
        if not c.get("use_causal_conv", True):
            raise ValueError("only causal Mimi checkpoints are supported")
        hidden = c.get("hidden_size", 512)
        heads = c.get("num_attention_heads", 8)
        if c.get("head_dim", hidden // heads) != hidden // heads:
            raise ValueError("Mimi checkpoints need head_dim == hidden_size / num_attention_heads")
        vq_dim = c.get("vector_quantization_hidden_dimension", 256)
        if c.get("codebook_dim", vq_dim) != vq_dim or vq_dim == hidden:
            raise ValueError(
                "unsupported quantizer shape: codebook_dim must equal the quantizer "
                "hidden dimension, and differ from hidden_size"
            )
        rope = c.get("rope_parameters") or {}
        theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
        frame_rate = c.get("frame_rate") or c.get("_frame_rate") or 12.5
        return cls(
            sample_rate=c.get("sampling_rate", 24000),
            frame_rate=frame_rate,
            channels=c.get("audio_channels", 1),
            seanet=SeanetConfig(
                channels=c.get("audio_channels", 1),
                dimension=hidden,
                n_filters=c.get("num_filters", 64),
                n_residual_layers=c.get("num_residual_layers", 1),
                ratios=tuple(c.get("upsampling_ratios", (8, 6, 5, 4))),
                kernel_size=c.get("kernel_size", 7),
                residual_kernel_size=c.get("residual_kernel_size", 3),
                last_kernel_size=c.get("last_kernel_size", 3),
                dilation_base=c.get("dilation_growth_rate", 2),
                compress=c.get("compress", 2),
                pad_mode=c.get("pad_mode", "constant"),
            ),
            transformer=TransformerConfig(
                d_model=hidden,
                num_heads=heads,
                num_layers=c.get("num_hidden_layers", 8),
                dim_feedforward=c.get("intermediate_size", 2048),
                causal=True,
                context=c.get("sliding_window", 250),
                max_period=float(theta),
                norm="layer_norm",
                gating="none",
                layer_scale=c.get("layer_scale_initial_scale", 0.01),
                positional_embedding="rope",
            ),
            quantizer=QuantizerConfig(
                dimension=vq_dim,
                n_q=c.get("num_quantizers", 32),
                n_q_semantic=c.get("num_semantic_quantizers", 1),
                bins=c.get("codebook_size", 2048),
                input_dimension=hidden,
                output_dimension=hidden,
            ),
        )
