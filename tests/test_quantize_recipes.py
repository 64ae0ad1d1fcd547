"""Quantization recipes: parsing, clear errors, and what each recipe does to Moshi's modules."""

from __future__ import annotations

import pytest

import moshi_reference as R
from moshi_mlx import Lm, LmConfig
from quantize.recipes import (
    PARTS,
    Q4,
    Q8,
    RECIPES,
    RecipeError,
    get_recipe,
    make_plan,
    parse_precision,
    part_of,
    quantizable_leaves,
)

SEVEN_B = Lm(LmConfig())  # lazy: shapes only, nothing is evaluated


def test_precisions():
    assert parse_precision("q4") == (4, 32) and parse_precision("q8") == (8, 64)
    assert parse_precision("Q6g128") == (6, 128) and parse_precision("q2") == (2, 32)
    assert parse_precision("float") is None and parse_precision("bf16") is None


@pytest.mark.parametrize(
    "spec,message",
    [
        ("q5x", "unknown recipe 'q5x'"),
        ("", "empty recipe"),
        ("q4,embeddings=q7", "unsupported bits 7"),
        ("q4,embeddings=q1", "unsupported bits 1"),
        ("q4,helium=q4g48", "unsupported group size 48"),
        ("q4,helium=int4", "unknown precision 'int4'"),
        ("q4,attention=q8", "unknown recipe part 'attention'"),
        ("q4,helium", "expected part=precision"),
    ],
)
def test_bad_recipes_say_what_is_accepted(spec, message):
    with pytest.raises(RecipeError, match=message):
        get_recipe(spec)


def test_every_quantizable_module_has_a_part():
    for cfg in (LmConfig(), LmConfig.from_dict(R.VARIANT), LmConfig.from_dict(R.TINY)):
        for path, _ in quantizable_leaves(Lm(cfg)):
            assert part_of(path) is not None, path


def test_plain_recipes_quantize_every_layer_as_kyutai():
    """Kyutai's q4/q8 files quantize every Linear and Embedding of the 7B (nn.quantize)."""
    leaves = quantizable_leaves(SEVEN_B)
    assert len(leaves) == 16 + 1 + 32 * 4 + 8 * (3 + 6 * 4) + 1
    for name, precision in (("q4", Q4), ("q8", Q8)):
        plan = make_plan(SEVEN_B, name)
        assert plan.uniform() == precision and not plan.notes and not plan.float_layers
        assert len(plan.layers) == len(leaves)


def test_mixed_recipe_4_bit_mlp_8_bit_elsewhere():
    plan = make_plan(SEVEN_B, "q4-mlp")
    four = {p for p, (g, b) in plan.layers.items() if (b, g) == Q4}
    assert four == {
        f"transformer.layers.{i}.gating.{n}" for i in range(32) for n in ("linear_in", "linear_out")
    }
    assert all((b, g) == Q8 for p, (g, b) in plan.layers.items() if p not in four)
    entry = plan.config_entry(get_recipe("q4-mlp"))
    assert entry["recipe"] == "q4-mlp" and (entry["bits"], entry["group_size"]) == (8, 64)
    assert entry["transformer.layers.3.gating.linear_in"] == {"group_size": 32, "bits": 4}
    assert "transformer.layers.3.self_attn.in_proj" not in entry  # the default precision
    assert plan.uniform() is None


def test_choices_for_embeddings_and_text_head():
    recipe = get_recipe("q4,embeddings=q8,text_head=float")
    plan = make_plan(SEVEN_B, recipe)
    assert plan.layers["text_emb"] == (64, 8) and plan.layers["depformer.slices.3.emb"] == (64, 8)
    assert plan.layers["transformer.layers.0.self_attn.in_proj"] == (32, 4)
    assert "text_linear" not in plan.layers and "text_linear" in plan.float_layers
    assert plan.config_entry(recipe)["text_linear"] is False
    written = get_recipe("helium=q4,depformer=q8")  # parts not named stay in float
    assert written.parts["helium_mlp"] == Q4 and written.parts["depformer_io"] == Q8
    assert written.parts["embeddings"] is None and written.parts["text_head"] is None


def test_layers_whose_width_does_not_fit_the_group_stay_float_with_a_note():
    plan = make_plan(Lm(LmConfig.from_dict(R.TINY)), "q8")  # gated hidden 176 and 88
    note = plan.notes["transformer.layers.0.gating.linear_out"]
    assert "176" in note and "64" in note
    assert "transformer.layers.0.gating.linear_in" in plan.layers


def test_named_recipes_are_described():
    assert {"q4", "q8"} <= RECIPES.keys()
    assert any(len({p for p in r.parts.values()}) > 1 for r in RECIPES.values())  # a mixed one
    for r in RECIPES.values():
        assert r.description and set(r.parts) == set(PARTS)


def test_embeddings_with_attached_modules_stay_float_as_nn_quantize():
    cfg = LmConfig.from_dict({**R.VARIANT, "norm_emb": True})
    plan = make_plan(Lm(cfg), "q4")
    assert "text_emb" not in plan.layers and "not a leaf" in plan.notes["text_emb"]
    assert "not a leaf" in plan.notes["depformer.slices.0.emb"]
