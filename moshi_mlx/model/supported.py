"""Which of Kyutai's config keys and values this port implements; anything else is refused.

Kyutai's loader passes every key of a `config.json` that is not a file name or a generation
setting to `LMModel`, which hands the rest down to its transformers: an unknown key fails there
too. Here each one is refused up front, by name, in one line, and so is a value we do not
implement (a positional embedding, a norm, an activation), instead of running something else.
"""

from __future__ import annotations

from mimi_mlx.nn.attention import POSITIONAL_EMBEDDINGS
from mimi_mlx.nn.layers import ACTIVATIONS, NORMS


class UnsupportedConfigError(ValueError):
    """A config key or value this port does not implement."""


# Kyutai's `LMModel` / `StreamingTransformer` / layer keys that we implement (or that do not
# change the network: `quantize` and checkpointing are how Kyutai holds it in memory).
NETWORK_KEYS = frozenset(
    """delays n_q dep_q card text_card text_card_out demux_second_text_stream demux_second_stream
    dim num_heads num_layers hidden_scale norm norm_emb bias_proj context causal max_period
    positional_embedding positional_scale layer_scale gating kv_repeat cross_attention
    existing_text_padding_id existing_text_end_padding_id extra_heads_num_heads extra_heads_dim
    conditioners fuser quantize gradient_checkpointing checkpointing betas
    depformer_dim depformer_dim_feedforward depformer_multi_linear depformer_weights_per_step
    depformer_weights_per_step_schedule depformer_low_rank_embeddings depformer_pos_emb
    depformer_norm depformer_num_heads depformer_num_layers depformer_gating depformer_layer_scale
    depformer_max_period depformer_kv_repeat depformer_positional_scale depformer_betas
    depformer_causal depformer_context depformer_positional_embedding depformer_cross_attention
    generated_codebooks""".split()
)
# Keys Kyutai's loader reads before building the model (files, LoRA, generation defaults), and
# `quantization`, which `moshi-mlx-quantize` writes (the tensors' shapes say it again).
OTHER_KEYS = frozenset(
    """moshi_name mimi_name mimi_config_name tokenizer_name model_type lm_gen_config tts_config
    stt_config model_id lora lora_name lora_rank lora_scaling quantization""".split()
)

# Keys whose values we implement only in part: key -> implemented values.
GATINGS = ("none", *ACTIVATIONS)
VALUES = {
    "positional_embedding": POSITIONAL_EMBEDDINGS,
    "depformer_pos_emb": POSITIONAL_EMBEDDINGS,
    "norm": tuple(NORMS),
    "depformer_norm": (None, *NORMS),
    "gating": GATINGS,
    "depformer_gating": (None, *GATINGS),
}


def check_supported(d: dict) -> None:
    """Refuse (UnsupportedConfigError, one line) a key or value of a Kyutai config dict that
    this port does not implement."""
    unknown = sorted(k for k in d if k not in NETWORK_KEYS | OTHER_KEYS)
    if unknown:
        raise UnsupportedConfigError(
            f"config key {unknown[0]!r} is not implemented here (nor known to Kyutai's LMModel)"
            + (f"; also {', '.join(unknown[1:])}" if unknown[1:] else "")
        )
    for key, allowed in VALUES.items():
        if key in d and d[key] not in allowed:
            choices = ", ".join(repr(v) for v in allowed if v is not None)
            raise UnsupportedConfigError(
                f"config {key} = {d[key]!r} is not implemented (implemented: {choices})"
            )
