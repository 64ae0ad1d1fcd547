"""The generator's teacher forcing (`prefill`): any subset of the streams for some steps.

Proved on the tiny reference model (delays 0/1/2, a context of 12 that the ring wraps):
- a prefill of every stream, batched in one forward pass, leaves the same caches and the same
  subsequent tokens (greedy and sampled) as the same steps forced one at a time;
- after a prefill of T frames, the next step samples exactly what the teacher-forced
  `Lm.forward` predicts at time T (the prefill's frames are the model's past, with the acoustic
  codebooks of the last frames forced in the first steps after it);
- a text-only prefill samples Moshi's audio meanwhile, and is consumed step by step.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import moshi_reference as R
from moshi_mlx import MoshiGenerator, load_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefill")
    R.save_pytorch(R.make_kyutai_lm(R.TINY, seed=21), R.TINY, folder)
    return load_model(folder)


def frames(T: int, seed: int) -> np.ndarray:
    """(1, 1 + n_q, T) random text + Moshi audio + user audio frames."""
    return R.random_codes(R.TINY, B=1, T=T, seed=seed)


def gen(model, **kw) -> MoshiGenerator:
    kw.setdefault("text_temperature", 0)
    kw.setdefault("audio_temperature", 0)
    return MoshiGenerator(model, **kw)


def continue_(g: MoshiGenerator, user: np.ndarray):
    texts, out = [np.zeros((user.shape[0], 0), np.int32)], []
    for s in range(user.shape[-1]):
        text, frame = g.step(user[:, :, s])
        texts.append(np.array(text))
        out.append(None if frame is None else np.array(frame))
    return np.concatenate([texts[0]] + [t[:, None] for t in texts[1:]], axis=1), out


def caches(model) -> list[np.ndarray]:
    return [np.array(c.keys) for c in model.transformer._caches] + [
        np.array(c.values) for c in model.transformer._caches
    ]


def prefill(g: MoshiGenerator, codes: np.ndarray, batched: bool) -> None:
    g.prefill(text=codes[:, 0], audio=codes[:, 1:4], user=codes[:, 4:], batched=batched)


@pytest.mark.parametrize("start", [0, 5])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_batched_prefill_equals_forced_steps(model, start, temperature):
    """Also after a few free steps (start 5: the block's first steps sample the acoustic codebooks
    of earlier times, so those run one at a time) and with sampling (same seed, same draws)."""
    codes = frames(20, seed=1)
    before = np.random.default_rng(2).integers(0, R.TINY["card"], (1, 3, start))
    after = np.random.default_rng(3).integers(0, R.TINY["card"], (1, 3, 15))
    results = []
    for batched in (True, False):
        g = gen(model, text_temperature=temperature, audio_temperature=temperature, seed=4)
        continue_(g, before)
        prefill(g, codes, batched)
        assert g.step_index == start + 20
        state = caches(model)
        results.append((state, continue_(g, after)))
    (state_a, (texts_a, frames_a)), (state_b, (texts_b, frames_b)) = results
    for a, b in zip(state_a, state_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(texts_a, texts_b)
    for f, h in zip(frames_a, frames_b, strict=True):
        np.testing.assert_array_equal(f, h)


def test_prefill_is_the_models_past(model):
    """After T prefilled frames, step T samples the teacher-forced argmax of time T, and the
    frames that come out are the prefill's (its last acoustic codebooks were forced)."""
    T = 17
    codes = frames(T + 1, seed=5)
    out = model.forward(mx.array(codes))
    g = gen(model)
    prefill(g, codes[:, :, :T], batched=True)
    text, frame = g.step(codes[:, 4:, T])
    assert int(text[0]) == int(np.array(out.text_logits[0, 0, T]).argmax())
    # time T - 2's frame (max delay 2): all its codebooks are the prefill's
    np.testing.assert_array_equal(np.array(frame)[0], codes[0, 1:4, T - 2])
    # the semantic codebook (delay 0) of time T, sampled at step T after that text token
    codes[0, 0, T] = int(text[0])
    out = model.forward(mx.array(codes))
    assert int(np.array(g._audio[-1])[0, 0]) == int(np.array(out.logits[0, 0, T]).argmax())


def test_text_only_prefill_samples_the_audio(model):
    """A text prefill (Moshiko and Moshika take one, untrained): the text is forced, the audio
    sampled, step by step; the forced tokens come back as the text of those steps."""
    tokens = np.arange(5, 12)
    user = np.random.default_rng(6).integers(0, R.TINY["card"], (1, 3, 7))
    g = gen(model)
    g.prefill(text=tokens[None], user=user)
    assert g.step_index == 7 and not g._forced
    # the same as stepping with the text forced through a one-step prefill each time
    h = gen(model)
    for i in range(7):
        h.prefill(text=tokens[None, i : i + 1], user=user[:, :, i : i + 1])
    np.testing.assert_array_equal(np.array(g._audio[-1]), np.array(h._audio[-1]))
    np.testing.assert_array_equal(np.array(g._text), [tokens[-1]])


def test_prefill_checks_shapes(model):
    g = gen(model)
    with pytest.raises(ValueError, match="at least one"):
        g.prefill()
    with pytest.raises(ValueError, match="different lengths"):
        g.prefill(text=np.zeros((1, 3)), user=np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="audio must have shape"):
        g.prefill(audio=np.zeros((1, 2, 4)))
