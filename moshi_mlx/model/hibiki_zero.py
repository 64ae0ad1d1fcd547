"""Kyutai's Hibiki-Zero (`kyutai/hibiki-zero-3b-pytorch-bf16`): its config and how it is told apart.

Hibiki-Zero translates French, Spanish, Portuguese and German speech into English speech and text.
Its real `config.json` could not be read when this was written: `HIBIKI_ZERO_3B` holds the facts
published about it (dims, heads, grouped keys and values, `rope_concat`, 16 + 16 codebooks, the
9-set depth decoder), and Kyutai's Hibiki 2B config for what was not published (context 3000,
`depformer_dim` 1024 with 16 heads, the schedule's shape). `is_hibiki_zero` is the one place
that recognises the model from a config; correct both here when the real file is seen.
"""

from __future__ import annotations

# The published facts, then (marked) what is assumed.
HIBIKI_ZERO_3B = {
    "dim": 2048,
    "num_heads": 16,
    "num_layers": 28,
    "kv_repeat": 2,
    "hidden_scale": 6,
    "positional_embedding": "rope_concat",
    "max_period": 20000,
    "n_q": 32,
    "dep_q": 16,
    "card": 2048,
    "text_card": 48000,
    "delays": [0, 0] + [2] * 15 + [0] + [2] * 15,
    "depformer_num_layers": 6,
    "depformer_dim_feedforward": 4096,
    "depformer_weights_per_step": True,
    # assumed: the first 8 steps with their own weights, the last 8 sharing one set
    "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8,
    "tokenizer_name": "tokenizer_spm_48k_multi6_2.model",
    "model_type": "hibiki",
    # assumed, as Kyutai's Hibiki 2B (`configs/moshi_mlx_2b.json`)
    "existing_text_padding_id": 3,
    "causal": True,
    "layer_scale": None,
    "context": 3000,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "depformer_dim": 1024,
    "depformer_num_heads": 16,
    "depformer_multi_linear": True,
    "depformer_max_period": 10000,
    "depformer_gating": "silu",
    "depformer_pos_emb": "none",
    "depformer_layer_scale": None,
}


def is_hibiki_zero(cfg) -> bool:
    """A Hibiki-Zero config (an `LmConfig`): split-half RoPE, 16 + 16 codebooks, no conditioner
    (Hibiki 1B and 2B take a "description" condition and interleaved RoPE)."""
    return (
        cfg.positional_embedding == "rope_concat"
        and (cfg.n_q, cfg.dep_q) == (32, 16)
        and not cfg.conditioners
    )
