"""Rows of a streaming batch restarted apart: a row that starts a new stream mid-batch gives
what a fresh stream of its own gives (the shared transformer, compiled and not, across ring
wrap-around; Mimi's encoder, exactly), while the other rows go on unchanged."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mimi_mlx.nn.transformer import Transformer, TransformerConfig

STEPS, RESTART = 60, 37  # the context (16) wraps several times before and after the restart


def transformer(monkeypatch, compiled: bool, embedding: str) -> Transformer:
    monkeypatch.setenv("MOSHI_MLX_COMPILE", "1" if compiled else "0")
    cfg = TransformerConfig(
        d_model=32, num_heads=4, num_layers=2, dim_feedforward=64, context=16,
        positional_embedding=embedding, gating="silu", norm="rms_norm", kv_repeat=2,
    )  # fmt: skip
    model = Transformer(cfg, compile_steps=True)
    mx.random.seed(1)
    model.update(_random_like(model.parameters()))  # not the init's zeros and ones
    return model


def _random_like(tree):
    if isinstance(tree, dict):
        return {k: _random_like(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_random_like(v) for v in tree]
    return 0.3 * mx.random.normal(tree.shape)


def stream(model: Transformer, xs: mx.array) -> np.ndarray:
    """Step a fresh stream through xs (B, T, d) one token at a time -> (B, T, d)."""
    model.reset()
    return np.concatenate([np.array(model.step(xs[:, t : t + 1])) for t in range(xs.shape[1])], 1)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "uncompiled"])
@pytest.mark.parametrize("embedding", ["rope", "sin", "rope_concat"])
def test_a_restarted_row_equals_a_fresh_stream(monkeypatch, compiled, embedding):
    model = transformer(monkeypatch, compiled, embedding)
    rng = np.random.default_rng(0)
    xs = mx.array(rng.standard_normal((2, STEPS, 32)).astype(np.float32))
    model.reset()
    outs = []
    for t in range(STEPS):
        if t == RESTART:
            model.restart_rows([1])
        outs.append(np.array(model.step(xs[:, t : t + 1])))
    got = np.concatenate(outs, 1)
    if compiled:
        assert model._compiled_rows is not None and model._compiled is not None
    alone = stream(model, xs[1:, RESTART:])
    np.testing.assert_allclose(got[1, RESTART:], alone[0], atol=2e-5, rtol=1e-4)
    row0 = stream(model, xs[:1])  # the other row goes on as if nothing happened
    np.testing.assert_allclose(got[0], row0[0], atol=2e-5, rtol=1e-4)
    # and the restart changed row 1 (it no longer sees its old keys)
    assert np.abs(got[1, RESTART:] - stream(model, xs[1:])[0, RESTART:]).max() > 1e-2


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "uncompiled"])
def test_rows_added_and_dropped_mid_stream(monkeypatch, compiled):
    model = transformer(monkeypatch, compiled, "rope")
    rng = np.random.default_rng(1)
    xs = mx.array(rng.standard_normal((3, STEPS, 32)).astype(np.float32))
    model.reset()
    outs = {0: [], 1: [], 2: []}
    for t in range(STEPS):
        if t == 20:
            model.resize_batch(3)  # two fresh rows join
        if t == 45:
            model.resize_batch(2)  # the last one leaves
        B = 1 if t < 20 else 3 if t < 45 else 2
        y = np.array(model.step(xs[:B, t : t + 1]))
        for b in range(B):
            outs[b].append(y[b, 0])
    row0 = stream(model, xs[:1])[0]
    np.testing.assert_allclose(np.stack(outs[0]), row0, atol=2e-5, rtol=1e-4)
    row1 = stream(model, xs[1:2, 20:])[0]
    np.testing.assert_allclose(np.stack(outs[1]), row1, atol=2e-5, rtol=1e-4)
    row2 = stream(model, xs[2:3, 20:45])[0]
    np.testing.assert_allclose(np.stack(outs[2]), row2, atol=2e-5, rtol=1e-4)


def test_reset_forgets_the_restarts(monkeypatch):
    model = transformer(monkeypatch, True, "rope")
    xs = mx.array(np.random.default_rng(2).standard_normal((2, 8, 32)).astype(np.float32))
    stream(model, xs)
    model.restart_rows([0])
    assert model._starts is not None
    model.reset()
    assert model._starts is None


FRAME = 1920


def encode_stream(mimi, audio: np.ndarray, n_q: int = 8) -> np.ndarray:
    """Codes of a fresh stream through audio (B, 1, n * FRAME), frame by frame."""
    mimi.reset()
    n = audio.shape[-1] // FRAME
    f = [np.array(mimi.encode_step(audio[..., i * FRAME : (i + 1) * FRAME], n_q)) for i in range(n)]
    return np.concatenate(f, -1)


def test_mimi_row_restarted_mid_stream_gives_a_fresh_streams_codes(tiny_refs, tiny_mimi):
    speech = tiny_refs.speech
    first, second = speech[: 20 * FRAME], speech[20 * FRAME : 33 * FRAME][::-1].copy()
    noise = np.random.default_rng(3).uniform(-0.5, 0.5, 7 * FRAME).astype(np.float32)
    row1 = np.concatenate([noise, second])  # 7 frames of another stream, then the new one
    audio = np.stack([first, row1])[:, None]
    tiny_mimi.reset()
    codes = []
    for i in range(20):
        if i == 7:
            tiny_mimi.restart_encoder_rows([1])
        codes.append(np.array(tiny_mimi.encode_step(audio[..., i * FRAME : (i + 1) * FRAME], 8)))
    codes = np.concatenate(codes, -1)
    alone = encode_stream(tiny_mimi, second[None, None])
    np.testing.assert_array_equal(codes[1, :, 7:], alone[0])
    np.testing.assert_array_equal(codes[1, :, 7:], np.array(tiny_mimi.encode(second, 8))[0])
    np.testing.assert_array_equal(codes[0], encode_stream(tiny_mimi, first[None, None])[0])
    assert (codes[1, :, 7:] != encode_stream(tiny_mimi, row1[None, None])[0, :, 7:]).any()


def test_mimi_rows_added_and_dropped(tiny_refs, tiny_mimi):
    speech = tiny_refs.speech
    a, b = speech[: 16 * FRAME], speech[16 * FRAME : 26 * FRAME][::-1].copy()
    tiny_mimi.reset()
    got_a, got_b = [], []
    for i in range(16):
        if i == 5:
            tiny_mimi.resize_encoder_batch(2)
        if i == 13:
            tiny_mimi.resize_encoder_batch(1)
        rows = [a[i * FRAME : (i + 1) * FRAME]]
        if 5 <= i < 13:
            rows.append(b[(i - 5) * FRAME : (i - 4) * FRAME])
        c = np.array(tiny_mimi.encode_step(np.stack(rows)[:, None], 8))
        got_a.append(c[0])
        if len(rows) == 2:
            got_b.append(c[1])
    want_a = encode_stream(tiny_mimi, a[None, None])[0]
    np.testing.assert_array_equal(np.concatenate(got_a, -1), want_a)
    want_b = encode_stream(tiny_mimi, b[None, None, : 8 * FRAME])[0]
    np.testing.assert_array_equal(np.concatenate(got_b, -1), want_b)
