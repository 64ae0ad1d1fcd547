"""LoRA fine-tunes against Kyutai's `get_moshi_lm(..., lora_weights=..., fuse_lora=...)`.

A random adapter on every linear layer (attention, MLPs, the depth decoder's per-step sets and
input projections, the output heads, the low-rank embeddings) of a random base: a folder whose
config.json names it loads with it fused, and `lora=FILE` fuses it into a base of another layout.
Teacher-forced logits agree with Kyutai's fused and unfused models within 1e-4 relative; greedy
generation gives the same tokens. An adapter that does not fit is one line naming the tensor.
"""

from __future__ import annotations

import json
import shutil

import lora_reference as L
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.torch import load_file, save_file
from test_moshi_parity import check_forward, check_generation, generate, rel

import moshi_reference as R
from moshi_mlx import LmConfig, load_model
from moshi_mlx.model.lora import LoraError
from moshi_mlx.testing.tiny_lora import save_random_lora

CFG = {
    **R.TINY,
    "depformer_weights_per_step_schedule": [0, 1, 1],
    "depformer_low_rank_embeddings": 16,
}
RANK, SCALING = 4, 1.5


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory):
    """(reference outputs fused, unfused, base-only; the folder; the adapter file)."""
    folder = tmp_path_factory.mktemp("lora")
    base = R.make_kyutai_lm(CFG, seed=31)
    weights = R.save_pytorch(base, CFG, folder)
    adapter = folder / "lora.safetensors"
    save_random_lora(LmConfig.from_dict(CFG), adapter, RANK, seed=32)
    codes = R.random_codes(CFG, B=2, T=30, seed=33)
    steps = 40
    user = np.random.default_rng(34).integers(0, CFG["card"], (2, 3, steps))
    outputs = {}
    for fuse in (True, False):
        kyutai = L.kyutai_with_lora(weights, CFG, adapter, RANK, SCALING, fuse)
        outputs[fuse] = (R.kyutai_forward(kyutai, codes), R.kyutai_generate(kyutai, user, steps))
    outputs["base"] = R.kyutai_forward(base, codes)
    return outputs, folder, adapter, codes, user


def test_random_adapter_has_kyutai_names_and_shapes(tmp_path):
    """The tiny adapters (moshi_mlx.testing) hold exactly what Kyutai's LoRA model trains."""
    base = R.make_kyutai_lm(CFG, seed=31)
    kyutai = L.kyutai_lora_shapes(base, RANK)
    ours = save_random_lora(LmConfig.from_dict(CFG), tmp_path / "a.safetensors", RANK, seed=0)
    assert {k: tuple(v.shape) for k, v in ours.items()} == kyutai
    assert any(".gating.1.linear_in." in k for k in kyutai)  # the per-set depth decoder
    assert "depformer_emb.0.low_rank.lora_A.weight" in kyutai  # the low-rank embeddings


def test_folder_naming_its_lora_matches_kyutai(fine_tune, tmp_path):
    outputs, folder, adapter, codes, user = fine_tune
    named = tmp_path / "fine-tune"
    shutil.copytree(folder, named)
    L.name_lora(named, "lora.safetensors", RANK, SCALING)
    ours = load_model(named)
    for fuse in (True, False):  # Kyutai's fused and unfused models agree: so do we with both
        forward, generated = outputs[fuse]
        check_forward(ours, forward, codes)
        check_generation(generate(ours, user, user.shape[-1]), generated, max_delay=2)
    # the adapter matters
    base_text = outputs["base"][0]
    assert rel(np.array(ours.forward(mx.array(codes)).text_logits), base_text) > 1e-2


def test_lora_file_on_a_base_of_another_layout(fine_tune, tmp_path):
    """`lora=FILE` on the same base in Kyutai's MLX layout (written from our model)."""
    outputs, folder, adapter, codes, _ = fine_tune
    base = load_model(folder)
    mlx_folder = tmp_path / "mlx"
    mlx_folder.mkdir()
    mx.save_safetensors(
        str(mlx_folder / "model.safetensors"), dict(tree_flatten(base.parameters()))
    )
    (mlx_folder / "config.json").write_text(json.dumps(CFG))
    # moshi-finetune's output: the adapter with a config.json beside it (its scaling)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(adapter, run / "lora.safetensors")
    (run / "config.json").write_text(json.dumps({"lora_rank": RANK, "lora_scaling": SCALING}))
    check_forward(load_model(mlx_folder, lora=run / "lora.safetensors"), outputs[True][0], codes)
    # an adapter alone takes Kyutai's default scaling, 2.0
    alone = tmp_path / "alone.safetensors"
    shutil.copy(adapter, alone)
    other = load_model(mlx_folder, lora=alone)
    assert rel(np.array(other.forward(mx.array(codes)).text_logits), outputs[True][0][0]) > 1e-3
    # ... unless told: `lora_scaling=` (--lora-scaling), or the file's own metadata
    check_forward(load_model(mlx_folder, lora=alone, lora_scaling=SCALING), outputs[True][0], codes)
    meta = tmp_path / "meta.safetensors"
    save_file(load_file(str(adapter)), str(meta), metadata={"lora_scaling": str(SCALING)})
    check_forward(load_model(mlx_folder, lora=meta), outputs[True][0], codes)


def _broken(adapter, tmp_path, edit) -> str:
    tensors = load_file(str(adapter))
    edit(tensors)
    path = tmp_path / "broken" / "lora.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.pop("linears.1.lora_A.weight"),
            r"linears\.1\.lora_B\.weight has no linears\.1\.lora_A\.weight",
        ),
        (
            lambda t: [t.pop(k) for k in list(t) if k.startswith("depformer_in.1.")],
            r"missing depformer_in\.1\.lora_A\.weight",
        ),
        (
            lambda t: [t.pop(k) for k in list(t) if ".self_attn.in_projs.1." in k],
            r"missing depformer\.layers\.0\.self_attn\.in_projs\.1\.lora_A\.weight",
        ),
        (
            lambda t: t.update({"emb.0.lora_A.weight": t["linears.0.lora_A.weight"].clone(),
                                "emb.0.lora_B.weight": t["linears.0.lora_B.weight"].clone()}),
            r"emb\.0\.lora_A\.weight adapts no linear layer",
        ),
        (
            lambda t: t.update({"text_linear.lora_A.weight": t["text_linear.lora_A.weight"][:3]}),
            r"text_linear\.lora_B\.weight \(\d+, 4\) does not fit text_linear\.lora_A\.weight",
        ),
    ],
)  # fmt: skip
def test_an_adapter_that_does_not_fit_is_one_line(fine_tune, tmp_path, edit, message):
    _, folder, adapter, _, _ = fine_tune
    path = _broken(adapter, tmp_path, edit)
    with pytest.raises(LoraError, match=message) as e:
        load_model(folder, lora=path)
    assert "\n" not in str(e.value)


def test_wrong_rank_and_absent_file_are_one_line(fine_tune, tmp_path):
    _, folder, adapter, _, _ = fine_tune
    named = tmp_path / "fine-tune"
    shutil.copytree(folder, named)
    L.name_lora(named, "lora.safetensors", RANK + 4, SCALING)
    with pytest.raises(LoraError, match=r"lora_A\.weight has rank 4, the config lora_rank 8"):
        load_model(named)
    L.name_lora(named, "other.safetensors", RANK, SCALING)
    with pytest.raises(LoraError, match="lacks the LoRA file other.safetensors"):
        load_model(named)


def test_quantizer_fuses_the_lora_first(fine_tune, tmp_path):
    """q8 of a fine-tune: the adapter fused, then quantized; its config names no LoRA."""
    from quantize.convert import convert

    outputs, folder, _, codes, _ = fine_tune
    named = tmp_path / "fine-tune"
    shutil.copytree(folder, named)
    L.name_lora(named, "lora.safetensors", RANK, SCALING)
    out = convert(named, tmp_path / "q8", "q8", progress=False)
    assert not [w for w in out.warnings if "LoRA" in w]
    config = json.loads((out.output / "config.json").read_text())
    assert not {"lora", "lora_name", "lora_rank", "lora_scaling"} & config.keys()
    text = np.array(load_model(out.output).forward(mx.array(codes)).text_logits)
    assert rel(text, outputs[True][0][0]) < 0.05  # the fused model, quantized
    assert rel(text, outputs["base"][0]) > 0.1


def test_quantize_lora_file_and_its_report(fine_tune, tmp_path, capsys):
    """`moshi-mlx-quantize BASE OUT --lora FILE`: the same q8 as the folder naming the adapter;
    `--report` compares it with the fused float model (its weight errors too)."""
    from quantize.cli import main as quantize

    _, folder, adapter, _, _ = fine_tune
    named = tmp_path / "fine-tune"
    shutil.copytree(folder, named)
    L.name_lora(named, "lora.safetensors", RANK, SCALING)
    flags = ("--recipe", "q8", "--quiet", "--lora", adapter, "--lora-scaling", SCALING)
    args = [str(folder), str(tmp_path / "a"), *map(str, flags), "--report", "--steps", "6"]
    assert quantize(args) == 0, capsys.readouterr().err
    assert quantize([str(named), str(tmp_path / "b"), "--recipe", "q8", "--quiet"]) == 0
    a, b = (mx.load(str(tmp_path / x / "model.q8.safetensors")) for x in "ab")
    assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]).item() for k in a)
    report = json.loads((tmp_path / "a" / "quantization_report.json").read_text())
    from quantize.report import accuracy_report

    def text_kl(**lora) -> float:
        result = accuracy_report(folder, [tmp_path / "a"], steps=6, **lora).results[0]
        return result.streams["text"].kl

    fused = text_kl(lora=adapter, lora_scaling=SCALING)
    assert report["results"][0]["streams"]["text"]["kl"] == pytest.approx(fused, rel=1e-5)
    assert fused < 0.1 * text_kl()  # against the base alone, q8 of the fine-tune is far off
    assert quantize([str(folder), str(tmp_path / "c"), "--lora-scaling", "2"]) == 2
    assert "--lora-scaling needs --lora FILE" in capsys.readouterr().err


def test_unfused_adapters_match_kyutai_unfused_and_share_the_base(fine_tune, tmp_path):
    """`fuse_lora=False`: Kyutai's `LoRALinear` (their `fuse_lora=False`), the same logits and
    greedy tokens; `with_lora` makes fine-tunes of one base in memory, which stays as it was."""
    from moshi_mlx.model.lora import lora_file
    from moshi_mlx.model.lora_unfused import LoraLinear, with_lora

    outputs, folder, adapter, codes, user = fine_tune
    named = tmp_path / "fine-tune"
    shutil.copytree(folder, named)
    L.name_lora(named, "lora.safetensors", RANK, SCALING)
    unfused = load_model(named, fuse_lora=False)
    assert any(isinstance(m, LoraLinear) for _, m in unfused.named_modules())
    forward, generated = outputs[False]
    check_forward(unfused, forward, codes)
    check_generation(generate(unfused, user, user.shape[-1]), generated, max_delay=2)
    base = load_model(folder)
    generate(base, user, 4)  # a base that has streamed already (its steps compiled)
    before = {k: v for k, v in tree_flatten(base.parameters())}
    tuned = with_lora(base, lora_file(adapter, scaling=SCALING))
    other = with_lora(base, lora_file(adapter, scaling=0.5))  # a second fine-tune, same base
    for model in (tuned, other):  # not one base array copied
        kept = {id(v) for k, v in tree_flatten(model.parameters()) if ".lora_" not in k}
        assert {id(v) for v in before.values()} == kept
    check_forward(tuned, outputs[True][0], codes)
    check_generation(generate(tuned, user, user.shape[-1]), outputs[True][1], max_delay=2)
    check_forward(base, outputs["base"], codes)  # the base is untouched
    assert rel(np.array(other.forward(mx.array(codes)).text_logits), outputs[True][0][0]) > 1e-3
    assert {k for k, _ in tree_flatten(base.parameters())} == before.keys()


def test_a_quantized_base_takes_an_adapter_unfused(fine_tune, tmp_path):
    from quantize.convert import convert

    outputs, folder, adapter, codes, _ = fine_tune
    q8 = convert(folder, tmp_path / "q8", "q8", progress=False).output
    model = load_model(q8, lora=adapter, lora_scaling=SCALING)  # kept beside the weights
    text = np.array(model.forward(mx.array(codes)).text_logits)
    plain = np.array(load_model(q8).forward(mx.array(codes)).text_logits)
    error = rel(plain, outputs["base"][0])  # what 8 bits cost the base alone
    assert 0 < rel(text, outputs[True][0][0]) < min(2 * error, 0.1)  # the fine-tune, on q8
    assert rel(text, outputs["base"][0]) > 0.1
    with pytest.raises(LoraError, match="cannot be fused into quantized weights"):
        load_model(q8, lora=adapter, fuse_lora=True)
    from moshi_mlx.model.lora import lora_file
    from moshi_mlx.model.lora_unfused import with_lora

    shared = with_lora(load_model(q8), lora_file(adapter, scaling=SCALING))  # a q8 base, shared
    np.testing.assert_array_equal(np.array(shared.forward(mx.array(codes)).text_logits), text)
