"""Hibiki-Zero's architecture against Kyutai's PyTorch `LMModel` on the same random weights.

What is new in it: split-half RoPE (`rope_concat`, Kyutai's `RotaryEmbedding(interleave=False)`)
with grouped keys and values, no conditioner, 16 + 16 codebooks, a 16-step depth decoder on 9
weight sets. Teacher-forced logits agree within 1e-4 relative, greedy streaming gives the same
tokens, through the compiled step and the plain one; at a tiny width, and at Hibiki-Zero's real
widths with 2 temporal layers (slow).
"""

from __future__ import annotations

import gc

import mlx.core as mx
import numpy as np
import pytest
import torch
from test_moshi_parity import check_forward, check_generation, generate

import moshi_reference as R
from moshi_mlx import LmConfig, load_model
from moshi_mlx.model.hibiki_zero import HIBIKI_ZERO_3B, is_hibiki_zero
from moshi_mlx.model.supported import OTHER_KEYS, UnsupportedConfigError

# Hibiki-Zero's structure at a tiny width (8 + 8 codebooks, 8 steps on 5 weight sets).
TINY_ZERO = {
    **R.TINY,
    "n_q": 16,
    "dep_q": 8,
    "num_heads": 4,
    "kv_repeat": 2,
    "positional_embedding": "rope_concat",
    "max_period": 20000,
    "context": 20,
    "depformer_num_heads": 2,
    "depformer_weights_per_step_schedule": [0, 1, 2, 3, 4, 4, 4, 4],
    "delays": [0, 0] + [2] * 7 + [0] + [2] * 7,
}


def network(cfg: dict) -> dict:
    """The keys Kyutai's loader gives `LMModel` (file names and the model type removed)."""
    return {k: v for k, v in cfg.items() if k not in OTHER_KEYS}


def hibiki_zero(num_layers: int = 2) -> dict:
    return network({**HIBIKI_ZERO_3B, "num_layers": num_layers})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero")
    reference = R.make_kyutai_lm(TINY_ZERO, seed=23)
    R.save_pytorch(reference, TINY_ZERO, folder)
    return reference, folder


def test_tiny_rope_concat_matches_kyutai(tiny, monkeypatch):
    reference, folder = tiny
    codes = R.random_codes(TINY_ZERO, B=2, T=45, seed=3)  # past the context: the ring wraps
    expected = R.kyutai_forward(reference, codes)
    steps = 50
    user = np.random.default_rng(4).integers(0, TINY_ZERO["card"], (2, 8, steps))
    generated = R.kyutai_generate(reference, user, steps)
    for compiled in ("1", "0"):  # the compiled one-token step, and the plain one
        monkeypatch.setenv("MOSHI_MLX_COMPILE", compiled)
        ours = load_model(folder)
        assert ours.transformer.layers[0].self_attn.num_kv_heads == 2
        check_forward(ours, expected, codes)
        check_generation(generate(ours, user, steps), generated, max_delay=2)


def test_rope_concat_is_not_interleaved_rope(tiny):
    """The flag matters: the same weights with interleaved RoPE say something else."""
    reference, folder = tiny
    codes = R.random_codes(TINY_ZERO, B=1, T=20, seed=5)
    expected = R.kyutai_forward(reference, codes)
    cfg = LmConfig.from_dict({**TINY_ZERO, "positional_embedding": "rope"})
    wrong = load_model(folder, config=cfg)
    text = np.array(wrong.forward(mx.array(codes)).text_logits)
    assert np.nanmax(np.abs(text - expected[0])) / np.nanmax(np.abs(expected[0])) > 1e-2


def test_unimplemented_config_values_are_refused_by_name():
    for key, value in (
        ("positional_embedding", "alibi"),
        ("depformer_pos_emb", "rope_scaled"),
        ("norm", "batch_norm"),
        ("gating", "swiglu"),
        ("depformer_gating", "tanh"),
    ):
        with pytest.raises(UnsupportedConfigError, match=f"{key} = '{value}' is not implemented"):
            LmConfig.from_dict({**TINY_ZERO, key: value})
    with pytest.raises(UnsupportedConfigError, match="config key 'skip_self_attn'"):
        LmConfig.from_dict({**TINY_ZERO, "skip_self_attn": True})
    # every key of Kyutai's published configs is known
    assert LmConfig.from_dict(HIBIKI_ZERO_3B).positional_embedding == "rope_concat"
    assert LmConfig.from_dict({**R.tts_1_6b(), "lora": False}).cross_attention


def test_hibiki_zero_is_recognised_from_its_config():
    assert is_hibiki_zero(LmConfig.from_dict(HIBIKI_ZERO_3B))
    interleaved = {**HIBIKI_ZERO_3B, "positional_embedding": "rope"}
    assert not is_hibiki_zero(LmConfig.from_dict(interleaved))
    assert not is_hibiki_zero(LmConfig.from_dict(TINY_ZERO))  # 8 + 8 codebooks


@pytest.mark.slow
def test_hibiki_zero_widths_two_layers_match_kyutai(tmp_path):
    """Hibiki-Zero's config at real widths with 2 temporal layers and its 6-layer depth decoder
    on 9 weight sets (1.1 G parameters), saved in bfloat16 (the weights are bf16 values)."""
    cfg = hibiki_zero(num_layers=2)
    reference = R.make_kyutai_lm(cfg, seed=29, bf16_exact=True)
    codes = R.random_codes(cfg, B=1, T=5, seed=6)
    forward = R.kyutai_forward(reference, codes)
    steps = 12
    user = np.random.default_rng(7).integers(0, 2048, (1, 16, steps))
    generated = R.kyutai_generate(reference, user, steps)
    R.save_pytorch(reference, cfg, tmp_path, dtype=torch.bfloat16)
    del reference
    gc.collect()

    ours = load_model(tmp_path)
    assert ours.cfg.dim == 2048 and ours.cfg.num_weight_sets == 9 and ours.cfg.kv_repeat == 2
    assert is_hibiki_zero(ours.cfg)
    check_forward(ours, forward, codes)
    texts, frames = generate(ours, user, steps)
    np.testing.assert_array_equal(texts, generated[0])
    for f, g in zip(frames, generated[1], strict=True):
        assert (f is None) == (g is None)
        if f is not None:
            np.testing.assert_array_equal(f, g)
