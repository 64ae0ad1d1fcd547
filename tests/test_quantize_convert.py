"""Conversion round trips: every source layout -> a quantized checkpoint folder that moshi_mlx
loads with no flags, equal tensor for tensor to `nn.quantize` of the float model, with logits
within measured bounds; plain q4/q8 files identical to Kyutai's layout."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import huggingface_hub.constants as hub_constants
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from quantize_sources import build_sources

import moshi_mlx.model.weights as moshi_weights
from moshi_mlx import load_checkpoint, load_model
from moshi_mlx.model.checkpoint import config_from, resolve, weights_layout
from quantize import convert
from quantize.report import compare, log_probs, random_codes

LAYOUTS = ("pytorch", "hf", "mlx")
RECIPES = ("q8", "q4", "q4-mlp")


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_refs):
    return build_sources(tmp_path_factory.mktemp("quantize_sources"), tiny_refs.hf_dir)


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    """Every layout converted with every recipe (tiny models: 0.1 s each)."""
    root = tmp_path_factory.mktemp("converted")
    return {
        (layout, recipe): convert(
            getattr(sources, layout), root / f"{layout}-{recipe}", recipe, progress=False
        )
        for layout in LAYOUTS
        for recipe in RECIPES
    }


def params(model) -> dict[str, mx.array]:
    return dict(tree_flatten(model.parameters()))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_loads_as_direct_nn_quantize_tensor_for_tensor(sources, converted, layout, recipe):
    result = converted[layout, recipe]
    assert result.source_format == {"pytorch": "pytorch", "hf": "hf", "mlx": "mlx"}[layout]
    ours = load_model(result.output, dtype=mx.bfloat16)  # the folder, no flags
    direct = load_model(getattr(sources, layout), dtype=mx.bfloat16)
    nn.quantize(direct, class_predicate=result.plan.predicate)
    assert weights_layout(result.output) == "mlx"
    for (p, m), (q, n) in zip(ours.named_modules(), direct.named_modules(), strict=True):
        assert p == q and type(m) is type(n), (p, type(m), type(n))
        assert (getattr(m, "bits", None), getattr(m, "group_size", None)) == (
            getattr(n, "bits", None),
            getattr(n, "group_size", None),
        ), p
    a, b = params(ours), params(direct)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert mx.array_equal(a[k], b[k]).item(), k
    n_quantized = sum(hasattr(m, "bits") for _, m in ours.named_modules())
    assert n_quantized == len(result.plan.layers) > 40  # every layer of this config


def relative_error(ref, out) -> float:
    """Largest relative L2 error, over the streams, of the (centred) log-probabilities."""
    errors = []
    for (lp, mask), (lq, _) in zip(ref, out, strict=True):
        p, q = lp[mask], lq[mask]
        p, q = p - p.mean(-1, keepdims=True), q - q.mean(-1, keepdims=True)
        errors.append(np.linalg.norm(p - q) / np.linalg.norm(p))
    return float(max(errors))


# Bounds, from measurements on these models (codes: 4 x 24 random, seed 3), with ~2x margin.
# Each weight's relative quantization error is ~0.009 at 8 bits (group 64, bf16 scales) and
# ~0.08 at 4 bits (group 32): the logits' relative error follows, amplified ~4x by the layers
# (measured: q8 0.012-0.042, q4 0.15-0.45; q4-mlp in between). KL is second order in the logit
# error: measured q8 <= 2.4e-3, q4 <= 0.28. Top-1 agreement: q8 >= 0.93, q4 >= 0.54 (tiny random
# models have flat distributions, where near-ties flip easily).
BOUNDS = {"q8": (0.08, 5e-3, 0.9), "q4": (0.7, 0.5, 0.4), "q4-mlp": (0.35, 0.15, 0.6)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logits_within_measured_bounds_8_bits_much_tighter(sources, converted, layout):
    float_model = load_model(getattr(sources, layout))
    codes = random_codes(float_model.cfg, batch=4, steps=24, seed=3)
    ref = log_probs(float_model, codes, batch=4)
    errors = {}
    for recipe in RECIPES:
        out = log_probs(load_model(converted[layout, recipe].output), codes, batch=4)
        max_rel, max_kl, min_top1 = BOUNDS[recipe]
        errors[recipe] = relative_error(ref, out)
        stats = compare(ref, out)
        assert errors[recipe] < max_rel, (recipe, errors[recipe])
        assert max(s.kl for s in stats.values()) < max_kl, (recipe, stats)
        assert min(s.top1 for s in stats.values()) > min_top1, (recipe, stats)
    assert errors["q4"] > 5 * errors["q8"]  # weight errors differ ~9x
    assert errors["q8"] < errors["q4-mlp"] < errors["q4"]


def test_plain_recipes_write_kyutai_files_tensor_for_tensor(sources, converted, tmp_path):
    """Kyutai's own q4/q8 (`nn.quantize(model, bits, group_size)` of the bf16 model, then
    `save_weights`): the same names, dtypes, shapes and values as ours."""
    for recipe, (bits, group_size) in (("q4", (4, 32)), ("q8", (8, 64))):
        result = converted["mlx", recipe]
        assert result.weights.name == f"model.{recipe}.safetensors"
        theirs = load_model(sources.mlx, dtype=mx.bfloat16)
        nn.quantize(theirs, bits=bits, group_size=group_size)  # no predicate: everything
        kyutai_file = tmp_path / f"model.{recipe}.safetensors"
        mx.save_safetensors(str(kyutai_file), params(theirs))
        a, b = mx.load(str(kyutai_file)), mx.load(str(result.weights))
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k].dtype, a[k].shape) == (b[k].dtype, b[k].shape), k
            assert mx.array_equal(a[k], b[k]).item(), k


@pytest.mark.parametrize("bits,group_size", [(4, 32), (8, 64)])
def test_kyutai_layout_and_ours_load_in_the_same_code_path(
    sources, converted, tmp_path, monkeypatch, bits, group_size
):
    """A file in Kyutai's layout (built here as their script does) loads with bits and group
    size found from the shapes; ours goes through the same detection."""
    theirs = load_model(sources.mlx, dtype=mx.bfloat16)
    nn.quantize(theirs, bits=bits, group_size=group_size)
    folder = tmp_path / "kyutai"
    folder.mkdir()
    name = f"model.q{bits}.safetensors"
    mx.save_safetensors(str(folder / name), params(theirs))
    config = json.loads((sources.mlx / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "moshi_name": name}))

    detected = []
    find = moshi_weights.find_quantized
    monkeypatch.setattr(
        moshi_weights, "find_quantized", lambda *a: detected.append(find(*a)) or detected[-1]
    )
    kyutai = load_model(folder)
    ours = load_model(converted["mlx", f"q{bits}"].output)
    assert len(detected) == 2 and detected[0] == detected[1]
    assert set(detected[0].values()) == {(group_size, bits)}
    assert len(detected[0]) == sum(hasattr(m, "bits") for _, m in kyutai.named_modules())
    codes = random_codes(kyutai.cfg, batch=1, steps=8, seed=0)
    a, b = kyutai.forward(codes), ours.forward(codes)
    assert np.array_equal(np.array(a.text_logits), np.array(b.text_logits))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_folder_holds_config_mimi_and_tokenizer(sources, converted, layout):
    result = converted[layout, "q4-mlp"]
    raw = json.loads((result.output / "config.json").read_text())
    assert raw["moshi_name"] == "model.q4-mlp.safetensors"
    q = raw["quantization"]
    assert (q["recipe"], q["bits"], q["group_size"]) == ("q4-mlp", 8, 64)
    assert q["transformer.layers.0.gating.linear_in"] == {"group_size": 32, "bits": 4}
    # the model config survives the round trip through config.json
    source_cfg = config_from(resolve(getattr(sources, layout)))
    cfg = config_from(resolve(result.output))
    drop = ("extra",)
    assert {k: v for k, v in asdict(cfg).items() if k not in drop} == {
        k: v for k, v in asdict(source_cfg).items() if k not in drop
    }
    bundle = load_checkpoint(result.output)
    assert bundle.format == "mlx"
    assert bundle.mimi is not None
    if layout == "hf":  # Mimi written out of transformers' bundle, in Kyutai's layout
        assert bundle.tokenizer is None and any("tokenizer" in w for w in result.warnings)
        from mimi_mlx import load_mimi

        audio = mx.array(np.random.default_rng(0).standard_normal((1, 1, 1920 * 4)) * 0.1)
        expected = load_mimi(sources.hf_mimi).encode(audio)
        assert np.array_equal(np.array(bundle.mimi.encode(audio)), np.array(expected))
    else:  # Mimi and the tokenizer linked or copied, byte for byte
        assert bundle.tokenizer is not None and not result.warnings
        for name in ("tokenizer-e351c8d8-checkpoint125.safetensors", "tokenizer_spm_32k_3.model"):
            src = getattr(sources, layout) / name
            assert (result.output / name).read_bytes() == src.read_bytes()


def test_no_temporary_folders_left(converted):
    root = next(iter(converted.values())).output.parent
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_quantized_embeddings_keep_special_indices(sources, converted):
    """-1 ("no input") embeds to exact zeros, as in the float embedding (a plain
    `QuantizedEmbedding` would wrap it to the last row); other rows are the dequantized table,
    start tokens included."""
    float_model = load_model(sources.mlx)
    for recipe in ("q4", "q8"):
        model = load_model(converted["mlx", recipe].output)
        cfg = model.cfg
        text = mx.array([-1, 0, 3, cfg.text_card - 1, cfg.text_card])
        audio = mx.array([-1, 0, cfg.card - 1, cfg.card])
        for emb, ref, tokens in (
            (model.text_emb, float_model.text_emb, text),
            (model.audio_embs[5], float_model.audio_embs[5], audio),
            (model.depformer.slices[0].emb, float_model.depformer.slices[0].emb, text),
            (model.depformer.slices[2].emb, float_model.depformer.slices[2].emb, audio),
        ):
            assert hasattr(emb, "bits")
            got = np.array(emb(tokens).astype(mx.float32))  # bf16: the scales' dtype
            want = np.array(ref(tokens))
            assert np.all(got[0] == 0) and np.all(want[0] == 0)
            rows = mx.maximum(tokens[1:], 0)
            table = mx.dequantize(
                emb.weight[rows], emb.scales[rows], emb.biases[rows], emb.group_size, emb.bits
            )
            np.testing.assert_array_equal(got[1:], np.array(table.astype(mx.float32)))
            err = np.linalg.norm(got[1:] - want[1:]) / np.linalg.norm(want[1:])
            assert err < (0.12 if recipe == "q4" else 0.015), (recipe, err)
    # -1 in the codes: the same masks as the float model
    codes = np.array(random_codes(float_model.cfg, batch=1, steps=6, seed=1))
    codes[0, 0, 2] = codes[0, 3, 4] = -1
    a = float_model.forward(mx.array(codes))
    b = load_model(converted["mlx", "q4"].output).forward(mx.array(codes))
    assert np.array_equal(np.array(a.text_mask), np.array(b.text_mask))
    assert np.array_equal(np.array(a.mask), np.array(b.mask))


def test_same_weights_in_any_layout_give_the_same_file(sources, converted, tmp_path):
    """Kyutai's PyTorch release (bf16) and transformers' layout (float32, q/k rows permuted,
    depth decoder stacked, here also sharded) of the same weights convert to identical bytes."""
    hf = tmp_path / "hf_sharded"
    hf.mkdir()
    shutil.copyfile(sources.hf / "config.json", hf / "config.json")
    tensors = mx.load(str(sources.hf / "model.safetensors"))
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, keys in shards.items():
        mx.save_safetensors(
            str(hf / shard), {k: tensors[k] for k in keys}, metadata={"format": "pt"}
        )
        weight_map.update(dict.fromkeys(keys, shard))
    (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = convert(hf, tmp_path / "out", "q4-mlp", progress=False)
    for result in (sharded, converted["hf", "q4-mlp"]):
        assert result.weights.read_bytes() == converted["pytorch", "q4-mlp"].weights.read_bytes()


def test_hub_repo_id_from_the_local_cache(sources, converted, tmp_path, monkeypatch):
    """`kyutai/moshiko-pytorch-bf16`-style repo id, served from a Hugging Face cache offline."""
    repo = tmp_path / "models--kyutai--tiny-pytorch"
    shutil.copytree(sources.pytorch, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    result = convert("kyutai/tiny-pytorch", tmp_path / "q4", "q4-mlp", progress=False)
    assert result.weights.read_bytes() == converted["pytorch", "q4-mlp"].weights.read_bytes()
    assert load_checkpoint(result.output).tokenizer is not None


def test_kyutai_in_memory_names_convert_as_the_release(sources, converted, tmp_path):
    """Kyutai's `state_dict()` spelling (per-set `in_projs.{i}` / `out_projs.{i}`, stacked in
    their released files) converts to the same bytes."""
    from safetensors.torch import save_file

    folder = tmp_path / "state_dict"
    shutil.copytree(sources.pytorch, folder)
    state = {
        k: v.to(torch.bfloat16).contiguous() for k, v in sources.reference.state_dict().items()
    }
    assert any(".self_attn.in_projs.1." in k for k in state)
    save_file(state, str(folder / "model.safetensors"))
    result = convert(folder, tmp_path / "out", "q4-mlp", progress=False)
    assert result.weights.read_bytes() == converted["pytorch", "q4-mlp"].weights.read_bytes()
