"""Whole checkpoints: a tiny random Kyutai repo folder (the one scripts/make_tiny_checkpoint.py
writes), by folder, file and hub repo id; the chat bundle; the text tokenizer's display rules."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.constants as hub_constants
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mimi_mlx import Mimi
from moshi_mlx import CheckpointError, Lm, LmConfig, MoshiGenerator, load_checkpoint, load_model
from moshi_mlx.model.checkpoint import config_from, resolve
from moshi_mlx.testing.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_bundle_runs_a_chat_step_loop(tmp_path, bits):
    folder = make_tiny_checkpoint(tmp_path, seed=1, quantize_bits=bits)
    ck = load_checkpoint(folder)
    assert ck.format == "mlx" and isinstance(ck.mimi, Mimi)
    quantized = {(m.bits, m.group_size) for _, m in ck.lm.named_modules() if hasattr(m, "bits")}
    assert quantized == (set() if bits is None else {(bits, {8: 64, 4: 32}[bits])})
    assert ck.config.dep_q == 8 and ck.config.num_user_codebooks == 8
    gen = MoshiGenerator(ck.lm, seed=0)
    frame = ck.mimi.frame_size
    pcm = 0.1 * np.random.default_rng(0).standard_normal((1, 1, 4 * frame)).astype(np.float32)
    outputs = []
    for i in range(4):
        codes = ck.mimi.encode_step(pcm[:, :, i * frame : (i + 1) * frame])  # (1, K, 1)
        text, audio = gen.step(codes[:, :8])
        if audio is not None:
            outputs.append(np.array(ck.mimi.decode_step(audio[:, :, None])))
        assert 0 <= int(text[0]) <= ck.config.text_card
    assert len(outputs) == 3 and outputs[0].shape == (1, 1, frame)
    assert np.isfinite(np.concatenate(outputs)).all() and np.abs(outputs[-1]).max() > 0


def test_folder_file_and_hub_id_agree(tiny, tmp_path, monkeypatch):
    by_folder = load_model(tiny)
    by_file = load_model(tiny / "model.safetensors")  # config.json beside it is used
    assert by_file.cfg == by_folder.cfg
    # a hub repo id, served from a local Hugging Face cache with the network off
    snapshot = tmp_path / "models--kyutai--tiny-moshi" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny, snapshot)
    (tmp_path / "models--kyutai--tiny-moshi" / "refs").mkdir()
    (tmp_path / "models--kyutai--tiny-moshi" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    by_id = load_checkpoint("kyutai/tiny-moshi")
    rng = np.random.default_rng(0)
    text = rng.integers(0, 512, (1, 1, 5))
    codes = mx.array(np.concatenate([text, rng.integers(0, 2048, (1, 16, 5))], axis=1))
    a = by_folder.forward(codes).logits
    for model in (by_file, by_id.lm):
        np.testing.assert_array_equal(np.array(model.forward(codes).logits), np.array(a))
    assert by_id.tokenizer is not None
    with pytest.raises(CheckpointError, match="not in the local cache"):
        load_model("kyutai/not-cached")


def test_repo_without_config_is_the_7b_model(tiny, tmp_path):
    shutil.copy(tiny / "model.safetensors", tmp_path / "model.q4.safetensors")
    files = resolve(tmp_path)
    assert files.weights == [tmp_path / "model.q4.safetensors"] and files.config is None
    assert config_from(files) == LmConfig()  # Kyutai's loaders assume the 7B Moshi
    # a Kyutai config that only names files is the 7B model too
    (tmp_path / "config.json").write_text('{"moshi_name": "model.q4.safetensors"}')
    assert config_from(resolve(tmp_path)) == LmConfig()


def test_tokenizer_display_rules(tiny):
    tok = load_checkpoint(tiny).tokenizer
    ids = tok.encode("hello how are you")
    assert tok.decode(ids) == "hello how are you"
    assert tok.decode([0, *ids, 3, 3]) == "hello how are you"  # padding is never shown
    assert tok.piece(0) is None and tok.piece(3) is None
    assert tok.piece(512) is None  # the text start token is not a piece
    pieces = "".join(p for p in (tok.piece(i) for i in ids) if p)
    assert pieces.strip() == "hello how are you" and "▁" not in pieces


def test_quantized_load_never_holds_full_precision(tmp_path):
    """Loading a q4 file swaps quantized layers in before any weight is computed: the peak is
    about the file's size, far below the model in float32."""
    from moshi_mlx.testing.tiny import TINY_LM, save_random_lm

    cfg = LmConfig.from_dict(
        {**TINY_LM, "dim": 1024, "num_heads": 8, "num_layers": 4, "text_card": 32000,
         "depformer_dim": 512, "depformer_dim_feedforward": 1536}
    )  # fmt: skip
    weights = save_random_lm(cfg, tmp_path, quantize_bits=4)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    float32_bytes = 4 * sum(v.size for _, v in tree_flatten(Lm(cfg).parameters()))
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    model = load_model(tmp_path)
    peak = mx.get_peak_memory() - base
    file_bytes = weights.stat().st_size
    assert float32_bytes > 6 * file_bytes  # 4 bits and small scales
    assert peak < 1.5 * file_bytes, (peak / 1e6, file_bytes / 1e6)
    assert model.transformer.layers[0].gating.linear_in.bits == 4
