"""Every checkpoint layout loads to the same model: Kyutai PyTorch, Kyutai MLX (float, bf16,
quantized with bits and group size found from the shapes), transformers."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

import moshi_reference as R
from moshi_mlx import load_model
from moshi_mlx.model.checkpoint import weights_layout
from moshi_mlx.model.embedding import QuantizedScaledEmbedding

CODES = R.random_codes(R.TINY_MOSHI, B=2, T=16, seed=3)


def outputs(model) -> tuple[np.ndarray, np.ndarray]:
    out = model.forward(mx.array(CODES))
    return np.array(out.text_logits), np.array(out.logits)


def save_mlx(model, cfg: dict, folder, name: str = "model.safetensors", dtype=None):
    """Kyutai's MLX repo layout, written from our model's parameters (our names are theirs)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = dict(tree_flatten(model.parameters()))
    if dtype is not None:
        params = {k: v if v.dtype == mx.uint32 else v.astype(dtype) for k, v in params.items()}
    mx.save_safetensors(str(folder / name), params)
    (folder / "config.json").write_text(json.dumps({**cfg, "moshi_name": name}))
    return folder / name


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    cfg = R.TINY_MOSHI
    model = R.make_kyutai_lm(cfg, seed=21)
    root = tmp_path_factory.mktemp("layouts")
    R.save_pytorch(model, cfg, root / "pytorch")
    R.save_pytorch(model, cfg, root / "pytorch_bf16", dtype=torch.bfloat16)
    R.save_hf(model, cfg, root / "hf")
    ours = load_model(root / "pytorch")
    return cfg, model, root, ours


def test_pytorch_layout_matches_reference(refs):
    cfg, reference, root, ours = refs
    text, audio = outputs(ours)
    ref_text, _, ref_audio, _ = R.kyutai_forward(reference, CODES)
    assert weights_layout(root / "pytorch") == "pytorch"
    np.testing.assert_allclose(text, ref_text, atol=1e-4 * np.abs(ref_text).max())
    np.testing.assert_allclose(audio, ref_audio, atol=1e-4 * np.nanmax(np.abs(ref_audio)))


def test_transformers_layout_equals_pytorch_layout(refs):
    _, _, root, ours = refs
    hf = load_model(root / "hf")
    assert weights_layout(root / "hf") == "hf"
    assert hf.cfg.delays == ours.cfg.delays and hf.cfg.context == ours.cfg.context
    for a, b in zip(outputs(hf), outputs(ours), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.nanmax(np.abs(b)))


def test_mlx_layout_float32_and_bf16(refs, tmp_path):
    cfg, _, root, ours = refs
    exact = load_model(save_mlx(ours, cfg, tmp_path / "f32"))
    assert weights_layout(tmp_path / "f32") == "mlx"
    for a, b in zip(outputs(exact), outputs(ours), strict=True):
        np.testing.assert_array_equal(a, b)
    # Kyutai's MLX files are bf16: the same values as the reference's own bf16 file
    bf16 = load_model(save_mlx(ours, cfg, tmp_path / "bf16", dtype=mx.bfloat16))
    from_pytorch_bf16 = load_model(root / "pytorch_bf16")
    for a, b in zip(outputs(bf16), outputs(from_pytorch_bf16), strict=True):
        np.testing.assert_array_equal(a, b)


def quantize_copy(checkpoint, group_size: int, bits: int, every_other: bool = False):
    """Our model quantized in memory as Kyutai's scripts do (`nn.quantize`), layers whose input
    width is not a multiple of the group size left in float."""
    seen = []

    def predicate(path, module):
        if not hasattr(module, "to_quantized") or module.weight.shape[-1] % group_size:
            return False
        seen.append(path)
        return not every_other or len(seen) % 2 == 0

    clone = load_model(checkpoint)
    nn.quantize(clone, group_size=group_size, bits=bits, class_predicate=predicate)
    return clone


@pytest.mark.parametrize("bits,group_size", [(8, 64), (4, 32)])
def test_mlx_quantized_layout_found_from_shapes(refs, tmp_path, bits, group_size):
    cfg, _, root, ours = refs
    quantized = quantize_copy(root / "pytorch", group_size, bits)
    name = f"model.q{bits}.safetensors"
    loaded = load_model(save_mlx(quantized, cfg, tmp_path, name))
    # quantized layers, embeddings included, with the right bits and group size
    layers = {p: m for p, m in loaded.named_modules() if hasattr(m, "bits")}
    assert "text_emb" in layers and "audio_embs.0" in layers and "text_linear" in layers
    assert isinstance(layers["text_emb"], QuantizedScaledEmbedding)
    assert {(m.bits, m.group_size) for m in layers.values()} == {(bits, group_size)}
    assert len(layers) == sum(hasattr(m, "bits") for _, m in quantized.named_modules())
    for a, b in zip(outputs(loaded), outputs(quantized), strict=True):
        np.testing.assert_array_equal(a, b)  # exactly the in-memory quantized model
    # close to the float model (4 bits on tiny random matrices loses a lot, yet correlates)
    text, audio = outputs(loaded)
    ref_text, ref_audio = outputs(ours)
    valid = ~np.isnan(ref_audio)
    min_corr = 0.99 if bits == 8 else 0.7
    assert np.corrcoef(text.ravel(), ref_text.ravel())[0, 1] > min_corr
    assert np.corrcoef(audio[valid], ref_audio[valid])[0, 1] > min_corr
    # Kyutai's files keep bf16 scales and biases: they load and run in float32 activations
    bf16 = load_model(save_mlx(quantized, cfg, tmp_path / "bf16", name, dtype=mx.bfloat16))
    assert bf16.text_emb.scales.dtype == mx.bfloat16
    text16, _ = outputs(bf16)
    assert text16.dtype == np.float32
    assert np.corrcoef(text16.ravel(), text.ravel())[0, 1] > 0.99


def test_mixed_quantization_per_layer(refs, tmp_path):
    """Bits and group size are read per layer: a file mixing 4 and 8 bits, and float layers."""
    cfg, _, root, ours = refs
    mixed = quantize_copy(root / "pytorch", 32, 4, every_other=True)
    nn.quantize(
        mixed,
        group_size=64,
        bits=8,
        class_predicate=lambda p, m: isinstance(m, nn.Linear) and m.weight.shape[-1] % 64 == 0,
    )
    kinds = {(m.bits, m.group_size) for _, m in mixed.named_modules() if hasattr(m, "bits")}
    assert kinds == {(4, 32), (8, 64)}
    loaded = load_model(save_mlx(mixed, cfg, tmp_path))
    for (p, m), (q, n) in zip(loaded.named_modules(), mixed.named_modules(), strict=True):
        assert p == q and type(m) is type(n)
        assert getattr(m, "bits", None) == getattr(n, "bits", None)
    for a, b in zip(outputs(loaded), outputs(mixed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_pytorch_in_memory_names(refs, tmp_path):
    """A raw `LMModel.state_dict()` (per-set `in_projs.{i}` / `out_projs.{i}`) loads too."""
    from safetensors.torch import save_file

    cfg, reference, _, ours = refs
    state = {k: v.detach().contiguous() for k, v in reference.state_dict().items()}
    assert "depformer.layers.0.self_attn.in_projs.2.weight" in state
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for a, b in zip(outputs(load_model(tmp_path)), outputs(ours), strict=True):
        np.testing.assert_array_equal(a, b)


def test_transformers_sharded(refs, tmp_path):
    """transformers' sharded layout: `model.safetensors.index.json` + shards."""
    import shutil

    from safetensors.numpy import load_file, save_file

    _, _, root, ours = refs
    shutil.copy(root / "hf" / "config.json", tmp_path / "config.json")
    tensors = load_file(str(root / "hf" / "model.safetensors"))
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / shard))
        weight_map.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = load_model(tmp_path)
    for a, b in zip(outputs(sharded), outputs(ours), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.nanmax(np.abs(b)))


def test_transformers_bundle_includes_mimi(refs):
    """transformers' repos bundle Mimi (`audio_encoder.*`); they carry no SentencePiece model."""
    from moshi_mlx import load_checkpoint

    _, _, root, ours = refs
    ck = load_checkpoint(root / "hf")
    assert ck.tokenizer is None and ck.config.dep_q == 3
    assert ck.mimi.num_codebooks == 8 and ck.mimi.cardinality == R.TINY_MOSHI["card"]
    codes = ck.mimi.encode(np.zeros((1, 1, 1920 * 2), np.float32))
    assert codes.shape == (1, 8, 2)
