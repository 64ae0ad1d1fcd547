"""Kyutai's TTS language model (cross-attention over voices, demuxed second text stream, summed
lookup-table conditions, every codebook generated) against Kyutai's PyTorch `LMModel`.

The reference's strong random weights are saved in Kyutai's released PyTorch layout and loaded
through our real loader; teacher-forced logits must agree within 1e-4 relative (float32).
"""

from __future__ import annotations

import gc

import mlx.core as mx
import numpy as np
import pytest
import torch

import moshi_reference as R
from moshi_mlx import load_model


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.nanmax(np.abs(a - b)) / np.nanmax(np.abs(b)))


def tts_codes(cfg: dict, B: int, T: int, seed: int) -> np.ndarray:
    """(B, 1 + n_q, T): muxed text tokens `(second + 1) * num + first` (second may be -1: none),
    a few "no input" (-1) tokens, and audio codes."""
    rng = np.random.default_rng(seed)
    num = cfg["text_card"] + 1
    first = rng.integers(0, cfg["text_card"], (B, 1, T))
    second = rng.integers(-1, cfg["text_card"], (B, 1, T))
    text = (second + 1) * num + first
    text[0, 0, 3] = -1
    audio = rng.integers(0, cfg["card"], (B, cfg["n_q"], T))
    audio[-1, 2, 2:4] = -1
    return np.concatenate([text, audio], axis=1).astype(np.int64)


def our_conditions(voices: list[list[np.ndarray]], cfgs: list[str | None]) -> list[dict]:
    """Our condition rows: the same voice slots as Kyutai's (`kyutai_voice_condition`)."""
    rows = []
    for v, c in zip(voices, cfgs, strict=True):
        tc = R.kyutai_voice_condition(v)
        cond = (tc.tensor[0].numpy(), tc.mask[0].numpy())
        rows.append({"control": "ok", "cfg": c, "speaker_wavs": cond})
    return rows


def check_forward(ours, reference, cfg: dict, codes: np.ndarray, voices, cfgs) -> None:
    expected = R.kyutai_forward(reference, codes, R.kyutai_tts_conditions(reference, voices, cfgs))
    out = ours.forward(mx.array(codes), our_conditions(voices, cfgs))
    np.testing.assert_array_equal(np.array(out.mask), expected[3])
    np.testing.assert_array_equal(np.array(out.text_mask), expected[1])
    assert rel(np.array(out.text_logits), expected[0]) < 1e-4
    assert rel(np.array(out.logits), expected[2]) < 1e-4
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = R.TINY_TTS
    reference = R.make_kyutai_lm(cfg, seed=21)
    folder = tmp_path_factory.mktemp("tiny_tts")
    R.save_pytorch(reference, cfg, folder)
    return cfg, reference, load_model(folder)


def test_tiny_tts_forward_matches_kyutai(tiny):
    cfg, reference, ours = tiny
    assert ours.cfg.cross_attention and ours.cfg.demux_second_text_stream
    assert ours.cfg.num_user_codebooks == 0
    codes = tts_codes(cfg, B=2, T=30, seed=3)  # longer than the context (20): the ring wraps
    one = R.random_voices(24, 1, seed=4)
    two = R.random_voices(24, 2, seed=5)
    out = check_forward(ours, reference, cfg, codes, [one, two], ["2.0", None])
    # each condition matters: another voice, another cfg value, no second text stream
    other = our_conditions([two, two], ["2.0", None])
    assert (
        rel(np.array(ours.forward(mx.array(codes), other).logits[0]), np.array(out.logits[0]))
        > 1e-3
    )
    other = our_conditions([one, two], ["3.5", None])
    assert (
        rel(
            np.array(ours.forward(mx.array(codes), other).text_logits[0]),
            np.array(out.text_logits[0]),
        )
        > 1e-3
    )
    plain = codes.copy()
    plain[:, 0] = np.where(plain[:, 0] >= 0, plain[:, 0] % (cfg["text_card"] + 1), -1)
    demux = np.array(
        ours.forward(mx.array(plain), our_conditions([one, two], ["2.0", None])).text_logits
    )
    assert rel(demux, np.array(out.text_logits)) > 1e-3


def test_tts_config_accepted_and_validated():
    from moshi_mlx.model.config import LmConfig

    cfg = LmConfig.from_dict({k: v for k, v in R.tts_1_6b(16).items()})
    assert cfg.cross_attention and cfg.demux_second_text_stream and cfg.num_weight_sets == 11
    bad = {**R.TINY_TTS, "fuser": {**R.TINY_TTS["fuser"], "cross": []}}
    with pytest.raises(ValueError, match="cross_attention"):
        LmConfig.from_dict(bad)


@pytest.mark.slow
def test_tts_real_widths_two_layers_match_kyutai(tmp_path):
    """`kyutai/tts-1.6b-en_fr` at real widths with 2 temporal layers, bf16 weights (exact)."""
    cfg = R.tts_1_6b(num_layers=2)
    reference = R.make_kyutai_lm(cfg, seed=23, bf16_exact=True)
    codes = tts_codes(cfg, B=1, T=5, seed=6)
    voices, cfgs = [R.random_voices(512, 2, seed=7, length=125)], ["2.0"]
    expected = R.kyutai_forward(reference, codes, R.kyutai_tts_conditions(reference, voices, cfgs))
    R.save_pytorch(reference, cfg, tmp_path, dtype=torch.bfloat16)
    del reference
    gc.collect()
    ours = load_model(tmp_path)
    assert ours.cfg.dim == 2048 and ours.cfg.dep_q == 32
    out = ours.forward(mx.array(codes), our_conditions(voices, cfgs))
    assert rel(np.array(out.text_logits), expected[0]) < 1e-4
    assert rel(np.array(out.logits), expected[2]) < 1e-4
