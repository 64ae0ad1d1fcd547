"""PersonaPlex against NVIDIA's generator re-stated on Kyutai's PyTorch `LMModel` (dep_q 16).

Same strong random weights in Kyutai's model (saved in the PersonaPlex tensor layout: Kyutai's
PyTorch names, 16 depth-decoder weight sets) and in ours through our real loader:
- teacher-forced logits of all 16 depth-decoder steps equal (tiny; 7B widths with 2 layers);
- the prompt phases feed the model exactly the token streams NVIDIA's `step_system_prompts`
  builds from its constants and the tokenizer (voice codes, silence, "<system> ... <system>",
  silence; their first frame dropped), through one batched prefill;
- greedy conversation tokens after the prompts equal NVIDIA's loop (which runs all 16 depth
  steps), and equal between our 8 and 16 depth steps;
- a voice preset (NVIDIA's saved embeddings and token ring, converted by `quantize voices`)
  gives the same conversation as NVIDIA's preset replay.
"""

from __future__ import annotations

import gc
import json
import tarfile

import mlx.core as mx
import numpy as np
import pytest
import torch

import moshi_reference as R
import personaplex_reference as P
from moshi_mlx import MoshiGenerator, load_model
from moshi_mlx.jobs.prompts import (
    load_voice_preset,
    prefill_prompt,
    system_prompt,
    wrap_with_system_tags,
)
from moshi_mlx.model.checkpoint import config_from, resolve
from moshi_mlx.model.config import LmConfig
from moshi_mlx.model.lm import delay_codes
from moshi_mlx.model.tokenizer import TextTokenizer
from moshi_mlx.testing.tiny_parts import _train_tokenizer
from quantize.convert_voices import convert_voices


def rel(a, b) -> float:
    return float(np.nanmax(np.abs(a - b)) / np.nanmax(np.abs(b)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("personaplex")
    reference = P.make_lm(P.TINY, seed=31)
    R.save_pytorch(reference, P.TINY, folder)
    _train_tokenizer(folder / "tokenizer", vocab_size=200)
    return reference, load_model(folder), TextTokenizer(folder / "tokenizer.model")


def greedy(model, **kw) -> MoshiGenerator:
    return MoshiGenerator(model, text_temperature=0, audio_temperature=0, **kw)


def converse(gen: MoshiGenerator, user: np.ndarray):
    texts, frames = [], []
    for i in range(user.shape[1]):
        text, frame = gen.step(user[None, :, i])
        texts.append(int(text[0]))
        frames.append(None if frame is None else np.array(frame)[0])
    return texts, frames


def model_inputs(prompt, model) -> np.ndarray:
    """(T, 17) what our steps feed the model during the prefill: start tokens, then the
    delayed prompt frames."""
    codes = np.concatenate([prompt.text[None], prompt.audio, prompt.user])[None]
    delayed = np.array(delay_codes(mx.array(codes), model.cfg.delays, model.initial_tokens))
    start = np.array(model.initial_tokens)[:, None]
    return np.concatenate([start, delayed[0, :, :-1]], axis=1).T


def check_conversation(ours, nvidia) -> None:
    texts, frames = ours
    ref_texts, ref_frames = nvidia
    # NVIDIA returns the text with the audio (max_delay 1 later); ours returns it at once
    assert texts[:-1] == ref_texts[1:]
    assert [f is None for f in frames] == [f is None for f in ref_frames]
    for f, g in zip(frames, ref_frames, strict=True):
        np.testing.assert_array_equal(f, g)


def test_recognised_from_its_tensors(tiny, tmp_path):
    reference, ours, _ = tiny
    assert ours.cfg.dep_q == 16 and ours.cfg.num_generated == 8
    assert ours.cfg.num_user_codebooks == 8 and len(ours.depformer.slices) == 16
    # NVIDIA's repo: a stub config.json; the 16-step depth decoder says PersonaPlex
    names = ["emb.0.weight", "linears.15.weight", "depformer_in.15.weight"]
    from safetensors.numpy import save_file

    save_file({n: np.zeros((1, 1), np.float32) for n in names}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "moshi"}))
    cfg = config_from(resolve(tmp_path))
    assert cfg == LmConfig.personaplex_7b() and cfg.num_generated == 8 and cfg.dim == 4096


def test_tiny_forward_matches_kyutai(tiny):
    reference, ours, _ = tiny
    codes = R.random_codes(P.TINY, B=2, T=50, seed=1)  # longer than the context (40)
    text_logits, _, logits, mask = R.kyutai_forward(reference, codes)
    out = ours.forward(mx.array(codes))
    assert out.logits.shape == logits.shape == (2, 16, 50, 2048)
    np.testing.assert_array_equal(np.array(out.mask), mask)
    assert rel(np.array(out.text_logits), text_logits) < 1e-4
    assert rel(np.array(out.logits), logits) < 1e-4


@pytest.mark.parametrize("depformer_steps", [8, 16])
def test_prompts_and_conversation_match_nvidia(tiny, depformer_steps):
    reference, ours, tokenizer = tiny
    rng = np.random.default_rng(2)
    voice = rng.integers(0, 2048, (8, 9))
    tokens = tokenizer.encode(wrap_with_system_tags("You are a patient French teacher."))
    assert len(tokens) > 5
    user = rng.integers(0, 2048, (8, 20))
    nvidia = P.run_nvidia(reference, voice, tokens, user)

    prompt = system_prompt(tokens, voice)
    # the streams the model sees during the prompts: exactly NVIDIA's
    assert nvidia.prompt_inputs == len(prompt.text) == 9 + 6 + len(tokens) + 6 - 1
    np.testing.assert_array_equal(
        model_inputs(prompt, ours), np.stack(nvidia.inputs[: nvidia.prompt_inputs])
    )
    # and what it then says
    gen = greedy(ours, depformer_steps=depformer_steps)
    prefill_prompt(gen, prompt)
    check_conversation(converse(gen, user), nvidia.result)


def test_prompt_without_voice_or_text(tiny):
    """Phases left out: NVIDIA's first frame is then the first silence frame (still dropped)."""
    reference, ours, _ = tiny
    user = np.random.default_rng(3).integers(0, 2048, (8, 12))
    nvidia = P.run_nvidia(reference, None, None, user)
    prompt = system_prompt(None, None)
    assert len(prompt.text) == 11
    np.testing.assert_array_equal(model_inputs(prompt, ours), np.stack(nvidia.inputs[:11]))
    gen = greedy(ours)
    prefill_prompt(gen, prompt)
    check_conversation(converse(gen, user), nvidia.result)


def test_voice_preset_matches_nvidia_replay(tiny, tmp_path):
    reference, ours, tokenizer = tiny
    rng = np.random.default_rng(4)
    voice = rng.integers(0, 2048, (8, 7))
    embeddings, cache = P.save_voice_preset(reference, voice)
    assert embeddings.shape == (6, 1, 1, 64) and cache.shape == (1, 17, 4)
    # NVIDIA's voices.tgz layout, converted once by our converter
    (tmp_path / "voices").mkdir()
    torch.save({"embeddings": embeddings, "cache": cache}, tmp_path / "voices" / "NATF1.pt")
    with tarfile.open(tmp_path / "voices.tgz", "w:gz") as tar:
        tar.add(tmp_path / "voices", arcname="voices")
    (path,) = convert_voices(tmp_path / "voices.tgz", tmp_path / "out")
    assert path.name == "NATF1.safetensors"
    preset = load_voice_preset(path, ours.cfg.delays)

    tokens = tokenizer.encode(wrap_with_system_tags("Be brief."))
    user = rng.integers(0, 2048, (8, 12))
    nvidia = P.run_nvidia(reference, None, tokens, user, preset=(embeddings, cache))
    gen = greedy(ours)
    prefill_prompt(gen, system_prompt(tokens, preset))
    check_conversation(converse(gen, user), nvidia.result)
    # the same as the voice's codes themselves
    direct = P.run_nvidia(reference, voice, tokens, user)
    assert direct.result[0] == nvidia.result[0]


@pytest.mark.slow
def test_7b_widths_two_layers_match_nvidia(tmp_path):
    """NVIDIA's config at real widths (2 temporal layers, 1 depth layer of its 16 weight sets:
    1.2 G parameters, 4.8 GB in float32), saved in bfloat16 as their release is (the weights are
    bf16 values: exact)."""
    cfg = P.seven_b()
    reference = P.make_lm(cfg, seed=41, bf16_exact=True)
    codes = R.random_codes(cfg, B=1, T=5, seed=5)
    forward = R.kyutai_forward(reference, codes)
    rng = np.random.default_rng(6)
    voice, user = rng.integers(0, 2048, (8, 3)), rng.integers(0, 2048, (8, 8))
    tokens = [607, 4831, 578, 1000, 934, 4831, 578]  # "<system> ... <system>" in NVIDIA's ids
    nvidia = P.run_nvidia(reference, voice, tokens, user)
    R.save_pytorch(reference, cfg, tmp_path, dtype=torch.bfloat16)
    del reference
    gc.collect()

    ours = load_model(tmp_path)
    assert ours.cfg.dim == 4096 and ours.cfg.dep_q == 16 and ours.cfg.num_generated == 8
    out = ours.forward(mx.array(codes))
    assert rel(np.array(out.text_logits), forward[0]) < 1e-4
    assert rel(np.array(out.logits), forward[2]) < 1e-4
    prompt = system_prompt(tokens, voice)
    np.testing.assert_array_equal(
        model_inputs(prompt, ours), np.stack(nvidia.inputs[: nvidia.prompt_inputs])
    )
    gen = greedy(ours)
    prefill_prompt(gen, prompt)
    check_conversation(converse(gen, user), nvidia.result)


def test_voice_recordings_are_normalised_to_minus_24_lufs(tiny_refs, tiny_mimi, tmp_path):
    """NVIDIA's voice prompt: 24 kHz, -24 LUFS; so a quiet and a loud take give the same codes
    (at another sample rate too), and a silent one is refused."""
    import pyloudnorm
    import soundfile as sf
    import soxr

    from mimi_mlx.io.audio import AudioError
    from moshi_mlx.jobs.prompts import normalize_loudness, voice_codes

    speech = tiny_refs.speech[: 24000 * 2]
    normalized = normalize_loudness(speech, 24000)
    assert abs(pyloudnorm.Meter(24000).integrated_loudness(normalized) - -24.0) < 0.01
    sf.write(tmp_path / "loud.wav", 0.9 * speech / np.abs(speech).max(), 24000, subtype="FLOAT")
    quiet = soxr.resample(0.05 * speech / np.abs(speech).max(), 24000, 48000)
    sf.write(tmp_path / "quiet.wav", quiet, 48000, subtype="FLOAT")
    loud_codes = voice_codes(tmp_path / "loud.wav", tiny_mimi)
    assert loud_codes.shape == (8, 25)  # 2 s at 12.5 frames a second
    same = voice_codes(tmp_path / "quiet.wav", tiny_mimi) == loud_codes
    assert same[0].mean() > 0.9  # the first codebook; resampling moves a few deep codes
    sf.write(tmp_path / "silent.wav", np.zeros(24000), 24000)
    with pytest.raises(AudioError, match="silent"):
        voice_codes(tmp_path / "silent.wav", tiny_mimi)
