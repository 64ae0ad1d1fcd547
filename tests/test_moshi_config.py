"""LmConfig reads Kyutai's configs as their `LMModel` does."""

from __future__ import annotations

import pytest

import moshi_reference as R
from moshi_mlx import Lm, LmConfig

# Kyutai's configs/moshi_7b_202409.json
MOSHI_7B_JSON = {
    "dim": 4096, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8,
    "card": 2048, "num_heads": 32, "num_layers": 32, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 3000, "max_period": 10000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 1024,
    "depformer_dim_feedforward": 4224, "depformer_num_heads": 16, "depformer_num_layers": 6,
    "depformer_causal": True, "depformer_layer_scale": None, "depformer_multi_linear": True,
    "depformer_context": 8, "depformer_max_period": 10000, "depformer_gating": "silu",
    "depformer_pos_emb": "none", "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}  # fmt: skip


def test_default_is_kyutai_7b():
    cfg = LmConfig.from_dict({**MOSHI_7B_JSON, "moshi_name": "model.safetensors"})
    default = LmConfig()
    ignored = {"depformer_causal", "depformer_context"}  # Kyutai's LMModel ignores these too
    for key in MOSHI_7B_JSON.keys() - ignored:
        assert getattr(cfg, key) == getattr(default, key), key
    assert cfg.extra == {
        "depformer_causal": True,
        "depformer_context": 8,
        "moshi_name": "model.safetensors",
    }
    assert default.to_dict()["dim"] == 4096
    assert LmConfig.from_dict(default.to_dict()) == default
    # the numbers DESIGN.md lists
    main, dep = default.transformer_config(), default.depformer_config(0)
    from mimi_mlx.nn.layers import gated_hidden_dim

    assert gated_hidden_dim(main.d_model, main.dim_feedforward) == 11264
    assert gated_hidden_dim(dep.d_model, dep.dim_feedforward) == 2816
    assert (default.num_user_codebooks, default.max_delay, default.num_weight_sets) == (8, 1, 8)


def test_absent_keys_take_lmmodel_defaults():
    cfg = LmConfig.from_dict({"dim": 64, "num_heads": 4, "num_layers": 1, "n_q": 2, "dep_q": 1,
                              "delays": [0, 0, 0]})  # fmt: skip
    assert (cfg.card, cfg.text_card, cfg.norm, cfg.gating) == (1024, 32000, "layer_norm", "none")
    assert cfg.positional_embedding == "sin" and cfg.context is None
    assert cfg.depformer_dim == 256 and cfg.depformer_pos_emb == "sin"
    dep = cfg.depformer_config(0)
    # the depth decoder inherits the temporal transformer's settings, as in Kyutai's LMModel
    assert (dep.num_heads, dep.num_layers, dep.gating, dep.norm) == (4, 1, "none", "layer_norm")
    assert dep.dim_feedforward == 4 * 256
    # one input projection for every codebook
    assert not cfg.depformer_multi_linear
    assert {cfg.depformer_in_index(k) for k in range(cfg.dep_q)} == {0}
    Lm(cfg)  # builds


def test_schedule_and_variants():
    cfg = LmConfig.from_dict(R.VARIANT)
    assert cfg.num_weight_sets == 3 and [cfg.weight_set(k) for k in range(4)] == [0, 1, 1, 2]
    assert [cfg.depformer_in_index(k) for k in range(4)] == [0, 1, 1, 2]
    assert LmConfig.from_dict({**R.VARIANT, "demux_second_stream": False}).extra == {}


def test_unsupported_options_are_refused():
    tensor = {"speaker": {"type": "tensor", "tensor": {"dim": 8}}}
    with pytest.raises(NotImplementedError, match="cannot be fused by 'sum'"):
        Lm(LmConfig.from_dict({**R.TINY, "conditioners": tensor, "fuser": {"sum": ["speaker"]}}))
    cross = {**R.CONDITIONED, "fuser": {"cross": ["description"]}, "cross_attention": True}
    with pytest.raises(NotImplementedError, match="cannot be fused by 'cross'"):
        Lm(LmConfig.from_dict(cross))
    with pytest.raises(NotImplementedError, match="prepend"):
        Lm(LmConfig.from_dict({**R.CONDITIONED, "fuser": {"prepend": ["description"]}}))
    with pytest.raises(ValueError, match="cross_attention"):  # cross fusing needs the layers
        LmConfig.from_dict({**R.CONDITIONED, "fuser": {"cross": ["description"]}})
    LmConfig.from_dict({**R.TINY, "demux_second_stream": True})  # Kyutai's TTS: supported
