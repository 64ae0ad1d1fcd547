"""`moshi-mlx-quantize` on Kyutai's TTS: from Kyutai's PyTorch layout (with the tensor their model
creates but never uses), cross-attention layers quantized too, the output speaks, and the
accuracy report covers it (conditions included)."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np

import moshi_reference as R
from moshi_mlx import load_checkpoint
from moshi_mlx.jobs.tts import TextToSpeech, TtsSettings, load_voice
from quantize.convert import convert
from quantize.report import accuracy_report


def test_tts_converts_with_cross_attention_and_speaks(tmp_path):
    cfg = R.TINY_TTS
    reference = R.make_kyutai_lm(cfg, seed=41)
    source = R.save_tts_folder(reference, cfg, tmp_path / "float")
    assert "depformer_text_emb.low_rank.weight" in mx.load(str(source / "model.safetensors"))
    done = convert(source, tmp_path / "q4", "q4", progress=False)
    cross = [p for p in done.plan.layers if ".cross_attention." in p]
    assert len(cross) == 2 * cfg["num_layers"]  # in_proj and out_proj of every layer
    config = json.loads((done.output / "config.json").read_text())
    assert config["model_type"] == "tts" and config["tts_config"] == cfg["tts_config"]

    tts = TextToSpeech(load_checkpoint(done.output))
    voice = load_voice(source / "voices" / "v0.0000tiny@1.safetensors", tts)
    frames = list(tts.frames("Hello there, how are you?", [voice], TtsSettings(temperature=0)))
    codes = np.stack([f.codes for f in frames if f.codes.size])
    assert (codes >= 0).all() and len(codes) > 10
    assert [w.text for f in frames for w in f.words] == ["Hello", "there,", "how", "are", "you?"]

    report = accuracy_report(source, [done.output], steps=24, batch=2)
    (result,) = report.results
    assert set(result.streams) == {"text"} | {f"audio {k}" for k in range(cfg["dep_q"])}
    assert 0 < result.mean_audio().kl < 0.05 and result.mean_audio().top1 > 0.5
    assert any(".cross_attention." in p for p in result.weight_errors)
