"""The accuracy report: KL and top-1 per stream and recipe, per-layer weight error, as a table
and as JSON; on random codes and on the Mimi codes of an audio file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from quantize_sources import build_sources

from quantize import accuracy_report, convert, weight_errors
from quantize.cli import main
from quantize.report import compare


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_refs):
    return build_sources(tmp_path_factory.mktemp("quantize_sources"), tiny_refs.hf_dir)


@pytest.fixture(scope="module")
def quantized(sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    return {
        r: convert(sources.pytorch, root / r, r, progress=False).output
        for r in ("q4", "q8", "q4-mlp")
    }


def test_compare_is_kl_and_top1():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 7)).astype(np.float32)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    mask = np.ones(5, bool)
    same = compare([(lp, mask)], [(lp, mask)])["text"]
    assert same.kl == 0 and same.top1 == 1 and same.positions == 5
    other = logits.copy()
    other[:, 0] += 10  # token 0 first everywhere
    lq = other - np.log(np.exp(other).sum(-1, keepdims=True))
    p = np.exp(lp)
    expected = np.mean(np.sum(p * (lp - lq), axis=-1))
    stats = compare([(lp, mask)], [(lq, mask)])["text"]
    assert stats.kl == pytest.approx(expected, rel=1e-5)
    assert stats.top1 == np.mean(lp.argmax(-1) == 0)
    half = np.array([True, False, True, False, True])
    assert compare([(lp, half)], [(lq, mask)])["text"].positions == 3


def test_weight_errors_match_the_theory(sources, quantized):
    """Affine quantization of N(0, s) weights: each group of g spans about 2 x 2.1 s (g = 32)
    or 2 x 2.4 s (g = 64); the rounding error is step / sqrt(12) with step = span / (2^bits - 1):
    about 0.079 s at 4 bits, 0.0054 s at 8 bits, where bf16 scales and biases (relative
    precision 2^-9 on a bias of about 2.4 s) add as much again."""
    for recipe, low, high in (("q4", 0.06, 0.10), ("q8", 0.004, 0.012)):
        errors = weight_errors(sources.pytorch, quantized[recipe])
        assert len(errors) > 40
        values = np.array(list(errors.values()))
        assert low < values.min() and values.max() < high, (recipe, values.min(), values.max())
    mixed = weight_errors(sources.pytorch, quantized["q4-mlp"])
    mlp = [e for p, e in mixed.items() if p.startswith("transformer.") and ".gating." in p]
    rest = [e for p, e in mixed.items() if not (p.startswith("transformer.") and ".gating." in p)]
    assert min(mlp) > 0.06 and max(rest) < 0.012


def test_report_table_and_json(sources, quantized, tmp_path):
    report = accuracy_report(sources.pytorch, list(quantized.values()), steps=16, batch=2)
    names = [r.name for r in report.results]
    assert names == ["q4", "q8", "q4-mlp"]
    streams = list(report.results[0].streams)
    assert streams == ["text", "audio 0", "audio 1", "audio 2"]
    kl = {r.name: r.mean_audio().kl for r in report.results}
    assert kl["q8"] < kl["q4-mlp"] < kl["q4"]
    sizes = {r.name: r.nbytes for r in report.results}
    assert sizes["q4"] < sizes["q4-mlp"] < sizes["q8"]
    table = report.table()
    for line_start in ("text", "audio 2", "audio mean", "size", "helium_mlp"):
        assert any(line.startswith(line_start) for line in table.splitlines()), line_start
    assert "q4-mlp" in table.splitlines()[1]
    report.save(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["shape"] == [2, 7, 16]
    first = data["results"][0]
    assert set(first["streams"]) == set(streams)
    assert first["weight_errors"]["transformer.layers.0.gating.linear_in"] > 0.06
    assert first["part_errors"]["helium_mlp"][1] >= first["part_errors"]["helium_mlp"][0]


def test_report_on_the_codes_of_an_audio_file(sources, tmp_path):
    wav = tmp_path / "noise.wav"
    sf.write(wav, 0.1 * np.random.default_rng(1).standard_normal(24000), 24000)
    q8 = convert(sources.mlx, tmp_path / "q8", "q8", progress=False).output
    report = accuracy_report(sources.mlx, [q8], audio=wav, steps=10)
    assert report.shape == (1, 17, 10)
    assert "noise.wav" in report.inputs
    stats = report.results[0].streams
    assert stats["audio 0"].positions == 10 and stats["audio 1"].positions == 9  # delay 1


def test_cli_report_after_conversion_and_on_its_own(sources, quantized, tmp_path, capsys):
    out = tmp_path / "q4"
    code = main([str(sources.pytorch), str(out), "--recipe", "q4", "--report", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "audio mean" in printed
    saved = json.loads((out / "quantization_report.json").read_text())
    assert saved["results"][0]["name"] == "q4"
    args = ["report", str(sources.pytorch), str(quantized["q8"]), str(quantized["q4"])]
    code = main([*args, "--json", str(tmp_path / "both.json"), "--steps", "8"])
    printed = capsys.readouterr().out
    assert code == 0 and "q8" in printed and "q4" in printed
    both = json.loads((tmp_path / "both.json").read_text())
    assert [r["name"] for r in both["results"]] == ["q8", "q4"]
