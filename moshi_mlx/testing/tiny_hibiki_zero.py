"""A tiny random Hibiki-Zero in the layout of `kyutai/hibiki-zero-3b-pytorch-bf16`.

Hibiki-Zero's structure (`model.hibiki_zero.HIBIKI_ZERO_3B`: split-half RoPE, grouped keys and
values, 16 + 16 codebooks, a 16-step depth decoder on 9 weight sets, no conditioner) at a tiny
width, as Kyutai's PyTorch repos hold it: `config.json` (every network key, the file names,
`model_type` "hibiki"), the language model under Kyutai's PyTorch tensor names in bfloat16, Mimi
in Kyutai's PyTorch layout (with `mimi_config.json` for its tiny size) and a SentencePiece model
named as Hibiki's 48k one. The real repo's file names could not be read here: the language
model and Mimi are named as in Kyutai's newer PyTorch repos (assumed; `config.json` names them,
so a loader that reads it finds them either way).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from ..model.config import LmConfig
from ..model.hibiki_zero import HIBIKI_ZERO_3B
from ..model.lm import Lm
from ..model.tokenizer import TextTokenizer
from .pytorch_layout import save_pytorch_lm

FILES = {
    "moshi_name": "model.safetensors",
    "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
    "tokenizer_name": HIBIKI_ZERO_3B["tokenizer_name"],
}

# Hibiki-Zero at a tiny width (the TINY_LM widths; 16 + 16 codebooks of 2048, 9 weight sets).
TINY_HIBIKI_ZERO = {
    **{k: v for k, v in HIBIKI_ZERO_3B.items() if k not in ("tokenizer_name", "model_type")},
    "dim": 64,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.5,
    "text_card": 512,  # replaced by the tiny tokenizer's size: every token the model says decodes
    "context": 3000,
    "depformer_dim": 64,
    "depformer_num_heads": 2,
    "depformer_num_layers": 2,
    "depformer_dim_feedforward": 192,  # gated hidden width 128: quantizable in groups of 64
    "depformer_context": 16,
    "depformer_causal": True,
}


def kyutai_mimi_config(cfg) -> dict:
    """A `MimiConfig` as the full keyword dict Kyutai's `loaders.get_mimi(mimi_config=...)`
    builds its modules from (its `_mimi_config`'s keys, this config's sizes)."""
    se, tr, q = cfg.seanet, cfg.transformer, cfg.quantizer
    seanet = {
        "channels": cfg.channels,
        "dimension": se.dimension,
        "causal": True,
        "n_filters": se.n_filters,
        "n_residual_layers": se.n_residual_layers,
        "activation": "ELU",
        "compress": se.compress,
        "dilation_base": se.dilation_base,
        "disable_norm_outer_blocks": 0,
        "kernel_size": se.kernel_size,
        "residual_kernel_size": se.residual_kernel_size,
        "last_kernel_size": se.last_kernel_size,
        "norm": "none",
        "pad_mode": se.pad_mode,
        "ratios": list(se.ratios),
        "true_skip": True,
    }
    transformer = {
        "d_model": tr.d_model,
        "num_heads": tr.num_heads,
        "num_layers": tr.num_layers,
        "causal": tr.causal,
        "layer_scale": tr.layer_scale,
        "context": tr.context,
        "conv_layout": True,
        "max_period": tr.max_period,
        "gating": tr.gating,
        "norm": tr.norm,
        "positional_embedding": tr.positional_embedding,
        "dim_feedforward": tr.dim_feedforward,
        "input_dimension": se.dimension,
        "output_dimensions": [se.dimension],
    }
    quantizer = {
        "dimension": q.dimension,
        "n_q": q.n_q,
        "bins": q.bins,
        "input_dimension": q.input_dimension,
        "output_dimension": q.output_dimension,
    }
    return {
        "sample_rate": cfg.sample_rate,
        "channels": cfg.channels,
        "frame_rate": cfg.frame_rate,
        "seanet": seanet,
        "quantizer": quantizer,
        "transformer": transformer,
    }


def make_tiny_hibiki_zero(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny Hibiki-Zero folder and return its path."""
    from .tiny_parts import tiny_mimi_config, write_tiny_mimi_as, write_tiny_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_tokenizer(folder, FILES["tokenizer_name"])
    text_card = TextTokenizer(folder / FILES["tokenizer_name"]).vocab_size
    network = {**TINY_HIBIKI_ZERO, "text_card": text_card}
    mx.random.seed(seed)
    lm = Lm(LmConfig.from_dict(network))
    save_pytorch_lm(lm, folder / FILES["moshi_name"])
    write_tiny_mimi_as(folder, FILES["mimi_name"], seed + 1)
    mimi_config = kyutai_mimi_config(tiny_mimi_config())  # (Kyutai's loader reads this one)
    (folder / "mimi_config.json").write_text(json.dumps(mimi_config, indent=2))
    config = {
        **network,
        **FILES,
        "mimi_config_name": "mimi_config.json",
        "model_type": "hibiki",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
