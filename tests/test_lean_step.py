"""The compiled streaming step (`mimi_mlx.nn.compiled`: the temporal layers, the depth decoder's
slices) gives exactly the uncompiled step's tokens, through ring wrap-around and new weights, with
a smaller graph. (Its speed is measured in `scripts/bench.py step`, never asserted here.)"""

from __future__ import annotations

import os
import tempfile

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

import moshi_reference as R
from moshi_mlx import MoshiGenerator, load_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two tiny checkpoints (ring context 12: the temporal caches wrap during the tests)."""
    out = []
    for seed in (5, 6):
        folder = tmp_path_factory.mktemp(f"lean{seed}")
        R.save_pytorch(R.make_kyutai_lm(R.TINY, seed=seed), R.TINY, folder)
        out.append(folder)
    return out


def load(folder, compiled: bool, dtype=mx.float32):
    old = os.environ.get("MOSHI_MLX_COMPILE")
    os.environ["MOSHI_MLX_COMPILE"] = "1" if compiled else "0"
    try:
        return load_model(folder, dtype=dtype)
    finally:
        if old is None:
            del os.environ["MOSHI_MLX_COMPILE"]
        else:
            os.environ["MOSHI_MLX_COMPILE"] = old


def session(model, steps: int = 40, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Sampled (not greedy) text and audio of a session with a fixed seed."""
    user = np.random.default_rng(seed).integers(0, R.TINY["card"], (1, 3, steps))
    gen = MoshiGenerator(model, seed=seed)
    texts, frames = [], []
    for s in range(steps):
        text, frame = gen.step(user[:, :, s])
        texts.append(np.array(text))
        if frame is not None:
            frames.append(np.array(frame))
    return np.stack(texts), np.stack(frames)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_compiled_step_gives_the_same_tokens(folders, dtype):
    compiled, plain = load(folders[0], True, dtype), load(folders[0], False, dtype)
    a, b = session(compiled), session(plain)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert compiled.transformer._compiled is not None and plain.transformer._compiled is None
    assert len(compiled.depformer._compiled) == R.TINY["dep_q"]
    assert compiled.transformer._caches[0].offset == 40  # past the ring's 12 slots


def test_compiled_step_sees_new_weights(folders):
    """Weights loaded after the step was compiled are used (they are inputs of the graphs)."""
    model, other = load(folders[0], True), load(folders[1], False)
    session(model)  # compiled with the first weights
    model.update(tree_unflatten(tree_flatten(other.parameters())))
    a, b = session(model), session(other)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _nodes(model) -> int:
    gen = MoshiGenerator(model, seed=0)
    for _ in range(3):
        mx.eval(*gen.step(np.zeros((1, 3), np.int64)))
    async_eval, mx.async_eval = mx.async_eval, lambda *a: None
    try:
        text, frame = gen.step(np.zeros((1, 3), np.int64))
    finally:
        mx.async_eval = async_eval
    with tempfile.TemporaryDirectory() as tmp:
        mx.export_to_dot(f"{tmp}/g.dot", text, frame)
        with open(f"{tmp}/g.dot") as f:
            count = sum('label ="' in line for line in f)
    mx.eval(text, frame)
    return count


def test_compiled_step_sends_fewer_operations(folders):
    compiled, plain = _nodes(load(folders[0], True)), _nodes(load(folders[0], False))
    assert compiled < 0.95 * plain, (compiled, plain)
