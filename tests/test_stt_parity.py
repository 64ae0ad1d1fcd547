"""Kyutai's STT against Kyutai's PyTorch `moshi` on the same random weights, end to end.

The reference is their `run_inference` (silence prefix, text delay + 1 s tail, the first frame
fed twice) with their streaming Mimi and `LMGen`; ours loads the same files through our loaders
(Kyutai's PyTorch layout, then the MLX layout written from our model). Our padding must give the
same samples, and our stream, fed the reference's Mimi codes (so that a codeword near-tie in
Mimi, tested on its own in test_mimi_parity, cannot hide or fake an LM difference), identical
greedy text tokens for the whole file and the extra heads' probabilities within 1e-4.
"""

from __future__ import annotations

import gc

import mlx.core as mx
import numpy as np
import pytest
import stt_reference as S
import torch
from mlx.utils import tree_flatten

import moshi_reference as R
from moshi_mlx import load_checkpoint
from moshi_mlx.jobs.stt import SttSettings, SttStream
from moshi_mlx.jobs.transcribe import padded_frames


def ours(ckpt, codes: np.ndarray, vad: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Our stream on the reference's codes (32, T): tokens (T,), heads (T, num_heads, 6)."""
    stream = SttStream(ckpt.lm, ckpt.mimi, ckpt.tokenizer, vad=vad)
    steps = []
    for t in range(codes.shape[1]):
        stream.submit_codes(mx.array(codes[None, :, t : t + 1]))
        steps.append(stream.collect()[0])
    heads = np.stack([s.heads for s in steps]) if vad else None
    return np.array([s.token for s in steps]), heads


def save_mlx_layout(ckpt, src, dst) -> None:
    """Kyutai's MLX layout: our parameter names, written from the loaded model."""
    import shutil

    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    mx.save_safetensors(str(dst / "model.safetensors"), dict(tree_flatten(ckpt.lm.parameters())))


def check(folder, wav, reference) -> object:
    """Our padding, tokens and heads against the reference's `kyutai_transcribe` output."""
    padded, codes, tokens, heads = reference
    ckpt = load_checkpoint(folder)
    assert ckpt.lm.cfg.model_type == "stt" and ckpt.lm.cfg.dep_q == 0
    assert len(ckpt.lm.extra_heads) == 4
    settings = SttSettings.of(ckpt.lm)
    frames = np.concatenate(list(padded_frames(wav, settings)))
    np.testing.assert_array_equal(frames, padded)  # run_inference's padding, sample for sample
    our_tokens, our_heads = ours(ckpt, codes)
    np.testing.assert_array_equal(our_tokens, tokens)
    assert our_heads.shape == heads.shape
    assert np.abs(our_heads - heads).max() < 1e-4
    return ckpt


def test_tiny_stt_matches_kyutai(tmp_path):
    wav = tmp_path / "speech.wav"
    audio = S.speech_and_noise(wav, seconds=30.0)
    mimi, mimi_cfg = S.make_mimi(audio)
    lm = R.make_kyutai_lm(S.TINY_STT, seed=21)
    folder = S.save_stt_repo(lm, S.TINY_STT, mimi, mimi_cfg, tmp_path / "pytorch")
    reference = S.kyutai_transcribe(lm, mimi, audio, S.STT_KEYS["stt_config"])
    tokens, heads = reference[2:]
    assert len(tokens) == (len(audio) + int(1.5 * 24000)) // 1920
    assert len(tokens) > 7 * S.TINY_STT["context"]  # the ring cache wraps many times
    assert len(np.unique(tokens)) > 10  # random weights, but not a constant output
    assert heads[:, 2, 0].std() > 0.01

    ckpt = check(folder, wav, reference)
    assert ckpt.format == "pytorch"
    mlx_folder = tmp_path / "mlx"
    save_mlx_layout(ckpt, folder, mlx_folder)
    assert check(mlx_folder, wav, reference).format == "mlx"


def test_silence_prefix_and_long_delay_match_kyutai(tmp_path):
    """The 2.6B model's padding (1 s of silence first, text 2.5 s behind), on a shorter file."""
    wav = tmp_path / "speech.wav"
    audio = S.speech_and_noise(wav, seconds=8.0)
    mimi, mimi_cfg = S.make_mimi(audio)
    lm = R.make_kyutai_lm(S.TINY_STT, seed=22)
    keys = S.STT_2B6_KEYS
    folder = S.save_stt_repo(lm, S.TINY_STT, mimi, mimi_cfg, tmp_path / "pytorch", keys)
    reference = S.kyutai_transcribe(lm, mimi, audio, keys["stt_config"])
    assert len(reference[2]) == (24000 + len(audio) + int(3.5 * 24000)) // 1920
    check(folder, wav, reference)


@pytest.mark.slow
def test_1b_widths_two_layers_match_kyutai(tmp_path):
    """`kyutai/stt-1b-en_fr`'s config at real widths with 2 layers, saved in bfloat16 as
    Kyutai's release is (the weights are bf16 values: exact); the tiny Mimi makes the codes.
    10 s of speech and noise (the 30 s of the tiny test would take minutes here)."""
    wav = tmp_path / "speech.wav"
    audio = S.speech_and_noise(wav, seconds=10.0)
    mimi, mimi_cfg = S.make_mimi(audio)
    cfg = S.stt_1b(num_layers=2)
    lm = R.make_kyutai_lm(cfg, seed=23, bf16_exact=True)
    reference = S.kyutai_transcribe(lm, mimi, audio, S.STT_KEYS["stt_config"])
    folder = S.save_stt_repo(lm, cfg, mimi, mimi_cfg, tmp_path / "pytorch", dtype=torch.bfloat16)
    del lm
    gc.collect()
    assert len(np.unique(reference[2])) > 10
    ckpt = check(folder, wav, reference)
    assert ckpt.lm.cfg.dim == 2048 and ckpt.lm.cfg.text_card == 8000
