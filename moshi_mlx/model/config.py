"""Moshi's language-model configuration, read from Kyutai's JSON configs.

Field names are Kyutai's keys (their `configs/*.json` and hub `config.json`). The dataclass
defaults are the 7B Moshiko/Moshika model; `from_dict` gives absent keys the defaults of Kyutai's
`LMModel` / `StreamingTransformer` instead, so their small test configs load as they do there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from mimi_mlx.nn.transformer import TransformerConfig

# Defaults of Kyutai's `LMModel.__init__` and `StreamingTransformer.__init__` for absent keys.
KYUTAI_DEFAULTS = {
    "n_q": 8,
    "dep_q": 8,
    "card": 1024,
    "text_card": 32000,
    "text_card_out": None,
    "dim": 128,
    "num_heads": 8,
    "hidden_scale": 4,
    "norm": "layer_norm",
    "norm_emb": False,
    "bias_proj": False,
    "causal": True,
    "context": None,
    "max_period": 10000.0,
    "positional_embedding": "sin",
    "positional_scale": 1.0,
    "layer_scale": None,
    "gating": "none",
    "kv_repeat": 1,
    "depformer_dim": 256,
    "depformer_dim_feedforward": None,
    "depformer_multi_linear": False,
    "depformer_weights_per_step": False,
    "depformer_weights_per_step_schedule": None,
    "depformer_low_rank_embeddings": None,
    "depformer_pos_emb": "sin",
    "depformer_norm": None,
    "existing_text_padding_id": 3,
    "existing_text_end_padding_id": 0,
    "demux_second_text_stream": False,
    "extra_heads_num_heads": 0,
    "extra_heads_dim": 6,
}

# Keys of Kyutai's repo configs that describe files or generation, not the network.
FILE_KEYS = ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name", "lora_name")


@dataclass
class LmConfig:
    """Hyper-parameters of Moshi's language model (Kyutai's `LMModel` keys; 7B defaults)."""

    # temporal transformer ("Helium")
    dim: int = 4096
    num_heads: int = 32
    num_layers: int = 32
    hidden_scale: float = 4.125
    context: int | None = 3000
    max_period: float = 10000.0
    causal: bool = True
    norm: str = "rms_norm_f32"
    gating: str = "silu"
    layer_scale: float | None = None
    positional_embedding: str = "rope"
    positional_scale: float = 1.0
    kv_repeat: int = 1
    norm_emb: bool = False
    bias_proj: bool = False
    # streams
    n_q: int = 16
    dep_q: int = 8
    card: int = 2048
    text_card: int = 32000
    text_card_out: int | None = None
    delays: list[int] = field(
        default_factory=lambda: [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    )
    existing_text_padding_id: int = 3
    existing_text_end_padding_id: int = 0
    demux_second_text_stream: bool = False
    # depth decoder ("depformer"); None means "as the temporal transformer"
    depformer_dim: int = 1024
    depformer_num_heads: int | None = 16
    depformer_num_layers: int | None = 6
    depformer_dim_feedforward: int | list[int] | None = 4224
    depformer_multi_linear: bool = True
    depformer_weights_per_step: bool = True
    depformer_weights_per_step_schedule: list[int] | None = None
    depformer_low_rank_embeddings: int | None = None
    depformer_pos_emb: str = "none"
    depformer_norm: str | None = None
    depformer_gating: str | None = "silu"
    depformer_layer_scale: float | None = None
    depformer_max_period: float | None = 10000.0
    depformer_kv_repeat: int | None = None
    depformer_positional_scale: float | None = None
    # audio codebooks Moshi speaks (None: dep_q). PersonaPlex's depth decoder has 16 steps:
    # the last 8 predict the user's codebooks and are never needed to generate.
    generated_codebooks: int | None = None
    # extras
    extra_heads_num_heads: int = 0
    extra_heads_dim: int = 6
    conditioners: dict | None = None
    fuser: dict | None = None
    cross_attention: bool = False
    extra: dict = field(default_factory=dict, repr=False)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> LmConfig:
        """From a Kyutai config dict; absent keys take Kyutai's `LMModel` defaults.

        Depth-decoder keys that are absent (`depformer_num_layers`, `depformer_gating`, ...)
        follow the temporal transformer's, as in Kyutai's code. Unknown keys land in `extra`.
        """
        d = dict(d)
        if "demux_second_stream" in d:  # Kyutai's older name
            d["demux_second_text_stream"] = d.pop("demux_second_stream")
        names = {f.name for f in fields(cls)} - {"extra"}
        depformer_inherited = {
            f.name: None
            for f in fields(cls)
            if f.name.startswith("depformer_") and f.name not in KYUTAI_DEFAULTS
        }
        values = {**asdict(cls()), **depformer_inherited, **KYUTAI_DEFAULTS}
        values.pop("extra")
        values.update({k: v for k, v in d.items() if k in names})
        extra = {k: v for k, v in d.items() if k not in names}
        cfg = cls(**values, extra=extra)
        cfg.validate()
        return cfg

    @classmethod
    def personaplex_7b(cls) -> LmConfig:
        """NVIDIA's PersonaPlex: the 7B model with a 16-step depth decoder (`dep_q` 16, NVIDIA's
        `loaders.py`), of which the first 8 steps are Moshi's codebooks."""
        return cls(dep_q=16, generated_codebooks=8)

    def to_dict(self) -> dict:
        """Kyutai's flat layout, as their `config.json` files hold it."""
        d = asdict(self)
        d.update(d.pop("extra"))
        return {k: v for k, v in d.items() if v is not None or k in ("context", "layer_scale")}

    def validate(self) -> None:
        if len(self.delays) != self.num_codebooks:
            raise ValueError(
                f"expected {self.num_codebooks} delays (text + {self.n_q} audio codebooks), "
                f"got {len(self.delays)}"
            )
        schedule = self.depformer_weights_per_step_schedule
        # (a model without a depth decoder, as Kyutai's STT, ignores its depformer_* keys)
        if self.dep_q > 0 and schedule is not None and len(schedule) != self.dep_q:
            raise ValueError(f"depformer_weights_per_step_schedule needs {self.dep_q} entries")
        if self.generated_codebooks is not None and not 0 < self.generated_codebooks <= self.dep_q:
            raise ValueError(f"generated_codebooks must be in 1..dep_q ({self.dep_q})")
        if self.demux_second_text_stream and self.norm_emb:
            raise ValueError("demux_second_text_stream does not go with norm_emb (as Kyutai's)")
        cross = list((self.fuser or {}).get("cross") or [])
        if bool(cross) != bool(self.cross_attention):
            raise ValueError(
                "cross_attention needs conditions fused by `cross` in `fuser`, and the reverse"
            )

    # -- derived facts -------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        """Kyutai's `model_type`: "moshi", "hibiki", "stt", "tts" (absent: "moshi")."""
        return self.extra.get("model_type", "moshi")

    @property
    def num_codebooks(self) -> int:
        """Streams in the model's input: text + audio (17 for Moshi)."""
        return 1 + self.n_q

    @property
    def num_generated(self) -> int:
        """Audio codebooks the generator samples (Moshi's own; 8 for Moshi and PersonaPlex)."""
        return self.dep_q if self.generated_codebooks is None else self.generated_codebooks

    @property
    def num_user_codebooks(self) -> int:
        """Audio codebooks that come from outside (the user's; 8 for Moshi)."""
        return self.n_q - self.num_generated

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def text_out_card(self) -> int:
        return self.text_card if self.text_card_out is None else self.text_card_out

    @property
    def num_weight_sets(self) -> int:
        """Sets of depth-decoder transformer weights in Kyutai's PyTorch layout."""
        if not self.depformer_weights_per_step:
            return 1
        schedule = self.depformer_weights_per_step_schedule
        return max(schedule) + 1 if schedule else self.dep_q

    def weight_set(self, codebook: int) -> int:
        """Which PyTorch weight set the depth decoder uses for generated codebook `codebook`."""
        if not self.depformer_weights_per_step:
            return 0
        schedule = self.depformer_weights_per_step_schedule
        return schedule[codebook] if schedule else codebook

    def depformer_in_index(self, codebook: int) -> int:
        if not self.depformer_multi_linear:
            return 0
        schedule = self.depformer_weights_per_step_schedule
        return schedule[codebook] if schedule else codebook

    def transformer_config(self) -> TransformerConfig:
        """The temporal transformer."""
        return TransformerConfig(
            d_model=self.dim,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            dim_feedforward=int(self.hidden_scale * self.dim),
            causal=self.causal,
            context=self.context,
            max_period=float(self.max_period),
            norm=self.norm,
            gating=self.gating,
            layer_scale=self.layer_scale,
            positional_embedding=self.positional_embedding,
            positional_scale=self.positional_scale,
            kv_repeat=self.kv_repeat,
            cross_attention=bool(self.cross_attention),
        )

    def depformer_config(self, codebook: int) -> TransformerConfig:
        """The depth decoder's transformer for generated codebook `codebook`.

        Its attention spans the `dep_q` steps of one time step (Kyutai sets no context).
        """
        dff = self.depformer_dim_feedforward
        if dff is None:
            dff = int(self.hidden_scale * self.depformer_dim)
        elif isinstance(dff, list):
            dff = dff[self.weight_set(codebook)]

        def inherit(value, default):
            return default if value is None else value

        return TransformerConfig(
            d_model=self.depformer_dim,
            num_heads=inherit(self.depformer_num_heads, self.num_heads),
            num_layers=inherit(self.depformer_num_layers, self.num_layers),
            dim_feedforward=int(dff),
            causal=self.causal,
            context=self.dep_q,
            max_period=float(inherit(self.depformer_max_period, self.max_period)),
            norm=self.norm,
            gating=inherit(self.depformer_gating, self.gating),
            layer_scale=inherit(self.depformer_layer_scale, self.layer_scale),
            positional_embedding=self.depformer_pos_emb,
            positional_scale=inherit(self.depformer_positional_scale, self.positional_scale),
            kv_repeat=inherit(self.depformer_kv_repeat, self.kv_repeat),
        )

    # -- transformers' layout ------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, c: dict) -> LmConfig:
        """From a transformers `MoshiConfig` (`config.json` of `kmhf/hf-moshiko`).

        transformers stores no delays: Moshi's (text 0, semantic 0, acoustic 1) are used.
        """
        dep = c.get("depth_decoder_config") or {}
        dim = c.get("hidden_size", 4096)
        heads = c.get("num_attention_heads", 32)
        if c.get("head_dim", dim // heads) != dim // heads:
            raise ValueError("Moshi checkpoints need head_dim == hidden_size / num_attention_heads")
        if (c.get("num_key_value_heads") or heads) != heads:
            raise ValueError("Moshi checkpoints with grouped keys and values are not supported")
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        theta = rope.get("rope_theta", c.get("rope_theta", 10000.0))
        dep_q = c.get("num_codebooks", 8)
        dep_dim = dep.get("hidden_size", 1024)
        # transformers' ffn_dim is twice the gated hidden width; Kyutai's dim_feedforward is
        # 3/2 of it (`hidden = 2 * dim_feedforward // 3`).
        ffn = c.get("ffn_dim", 22528)
        dep_ffn = dep.get("ffn_dim", 5632)
        one = [0] + [1] * (dep_q - 1)
        return cls(
            dim=dim,
            num_heads=heads,
            num_layers=c.get("num_hidden_layers", 32),
            hidden_scale=(3 * ffn // 4) / dim,
            context=c.get("sliding_window", 3000),
            max_period=float(theta),
            norm="rms_norm_f32",
            gating=c.get("hidden_act", "silu"),
            n_q=2 * dep_q,
            dep_q=dep_q,
            card=c.get("audio_vocab_size") or 2048,
            text_card=c.get("vocab_size", 32000),
            delays=[0] + one + one,
            depformer_dim=dep_dim,
            depformer_num_heads=dep.get("num_attention_heads", 16),
            depformer_num_layers=dep.get("num_hidden_layers", 6),
            depformer_dim_feedforward=3 * dep_ffn // 4,
            depformer_gating=dep.get("hidden_act", "silu"),
        )
