"""The streaming generator: teacher-forcing consistency, long sessions in bounded memory,
sampling with an explicit seed, reset, batches, input checks."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import moshi_reference as R
from mimi_mlx.nn import kv_cache
from moshi_mlx import MoshiGenerator, Rng, Sampler, load_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen")
    R.save_pytorch(R.make_kyutai_lm(R.TINY, seed=5), R.TINY, folder)
    return load_model(folder)


def user_codes(steps: int, B: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, R.TINY["card"], (B, 3, steps))


def run(gen: MoshiGenerator, user: np.ndarray):
    texts, frames = [], []
    for s in range(user.shape[-1]):
        text, frame = gen.step(user[:, :, s])
        texts.append(np.array(text))
        frames.append(None if frame is None else np.array(frame))
    return np.stack(texts, axis=1), frames


def greedy(model, **kw) -> MoshiGenerator:
    return MoshiGenerator(model, text_temperature=0, audio_temperature=0, **kw)


@pytest.mark.parametrize("grow_block", [256, 5])
def test_greedy_stream_equals_teacher_forced_argmax(model, monkeypatch, grow_block):
    """Our user-stream alignment is that of `Lm.forward`: feeding back what the generator made
    (text, Moshi's audio, the user's frames at their own times) reproduces every greedy token,
    also long after the ring caches have wrapped (context 12), and while they grow (blocks of 5:
    5, 10, 12 slots)."""
    monkeypatch.setattr(kv_cache, "GROW_BLOCK", grow_block)
    steps, max_delay = 120, 2
    user = user_codes(steps)
    texts, frames = run(greedy(model), user)
    assert all(f is None for f in frames[:max_delay])
    T = steps - max_delay
    audio = np.stack(frames[max_delay:], axis=2)  # (1, dep_q, T): frame for time t
    codes = np.concatenate([texts[:, None, :T], audio, user[:, :, :T]], axis=1)
    out = model.forward(mx.array(codes))
    np.testing.assert_array_equal(np.array(out.text_logits[:, 0].argmax(-1)), texts[:, :T])
    mask = np.array(out.mask)
    predicted = np.array(out.logits.argmax(-1))
    np.testing.assert_array_equal(predicted[mask], audio[mask])
    assert mask.sum() > 0.9 * mask.size
    assert model.transformer._caches[0].keys.shape[2] == R.TINY["context"]


def test_ring_grows_by_blocks_up_to_its_capacity(model, monkeypatch):
    monkeypatch.setattr(kv_cache, "GROW_BLOCK", 5)
    gen = greedy(model)
    sizes = []
    for s in range(14):
        mx.eval(gen.step(user_codes(1, seed=s)[:, :, 0])[0])
        sizes.append(model.transformer._caches[0].keys.shape[2])
    assert sizes == [5] * 5 + [10] * 5 + [12] * 4


def test_long_session_bounded_memory(model):
    """Thousands of steps: the caches keep their size, positions keep counting, memory is flat."""
    gen = MoshiGenerator(model, seed=1)
    user = user_codes(3000, seed=2)
    for s in range(3000):
        text, frame = gen.step(user[:, :, s])
        mx.eval(text, frame)
        if s == 500:
            memory = mx.get_active_memory()
    assert mx.get_active_memory() <= memory * 1.05 + (1 << 20)
    caches = model.transformer._caches
    assert all(c.keys.shape[2] == R.TINY["context"] for c in caches)  # a ring of the context
    assert caches[0].offset == 3000
    assert len(gen._audio) <= 3 and len(gen._user) <= 4
    assert 0 <= int(frame.min()) and int(frame.max()) < R.TINY["card"]


def test_seed_reset_and_sampling_options(model):
    user = user_codes(40, seed=3)
    gen = MoshiGenerator(model, seed=42)
    first = run(gen, user)
    gen.reset()
    again = run(gen, user)
    np.testing.assert_array_equal(first[0], again[0])  # reset: a new session, same seed
    other = run(MoshiGenerator(model, seed=43), user)
    assert not np.array_equal(first[0], other[0])
    # top-k 1 and a tiny nucleus are greedy whatever the temperature
    greedy_texts = run(greedy(model), user)[0]
    top1 = MoshiGenerator(model, text_top_k=1, audio_top_k=1, seed=0)
    np.testing.assert_array_equal(run(top1, user)[0], greedy_texts)
    nucleus = MoshiGenerator(model, top_p=1e-6, seed=0)
    np.testing.assert_array_equal(run(nucleus, user)[0], greedy_texts)


def test_batch_rows_are_independent(model):
    user = user_codes(30, B=2, seed=4)
    both = run(greedy(model, batch_size=2), user)
    alone = run(greedy(model), user[1:])
    np.testing.assert_array_equal(both[0][1:], alone[0])
    for f, g in zip(both[1], alone[1], strict=True):
        assert (f is None) == (g is None)
        if f is not None:
            np.testing.assert_array_equal(f[1:], g)


def test_user_code_shapes(model):
    gen = greedy(model)
    text, frame = gen.step(mx.zeros((1, 3, 1), dtype=mx.int32))  # (B, n, 1) works
    assert text.shape == (1,) and frame is None
    gen.step(np.zeros((1, 8), dtype=np.int64))  # extra codebooks are ignored
    _, frame = gen.step(np.zeros((1, 3), dtype=np.int64))
    assert frame.shape == (1, 3) and frame.dtype == mx.int32
    with pytest.raises(ValueError, match="user codes must be"):
        gen.step(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="user codes must be"):
        gen.step(np.zeros((1, 2)))


def test_sampler_top_k_and_top_p():
    logits = mx.log(mx.array([[0.05, 0.4, 0.3, 0.2, 0.05]] * 2000))
    rng = Rng(0)
    top2 = np.array(Sampler(1.0, top_k=2)(logits, rng))
    assert set(top2.tolist()) == {1, 2}
    assert abs((top2 == 1).mean() - 0.4 / 0.7) < 0.05
    nucleus = np.array(Sampler(1.0, top_k=None, top_p=0.8)(logits, rng))
    assert set(nucleus.tolist()) == {1, 2, 3}  # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.2
    full = np.array(Sampler(1.0, top_k=None)(logits, rng))
    assert set(full.tolist()) == {0, 1, 2, 3, 4}
    assert (np.array(Sampler(0.0)(logits, rng)) == 1).all()
    a = np.array(Sampler(0.8, top_k=3)(logits, Rng(7)))
    np.testing.assert_array_equal(a, np.array(Sampler(0.8, top_k=3)(logits, Rng(7))))
