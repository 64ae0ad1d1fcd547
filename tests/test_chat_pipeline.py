"""The per-frame pipeline the live chat and the offline mode share: sessions are independent,
overlapped submission changes nothing, one thread owns it, and long sessions keep constant memory.
"""

from __future__ import annotations

import json
import shutil
import threading

import mlx.core as mx
import numpy as np
import pytest
from moshi_app import FRAME, tiny_checkpoint

from moshi_mlx import load_checkpoint
from moshi_mlx.jobs.pipeline import Pipeline, Sampling

__all__ = ["tiny_checkpoint"]  # fixtures used here


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(FRAME)).astype(np.float32) for _ in range(n)]


def outputs(pipeline: Pipeline, inputs: list[np.ndarray], ahead: int = 0):
    pipeline.reset()  # pipelines here share one model: each session starts with a reset
    results = []
    for frame in inputs:
        pipeline.submit(frame)
        if pipeline.pending > ahead:
            results.append(pipeline.collect())
    while pipeline.pending:
        results.append(pipeline.collect())
    return [r.token for r in results], np.concatenate([r.audio for r in results])


def test_sessions_are_independent_and_reproducible(ckpt):
    inputs = frames(40)
    pipeline = Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, Sampling(seed=3))
    first = outputs(pipeline, inputs)
    pipeline.reset()
    second = outputs(pipeline, inputs)
    pipeline.reset()
    other = outputs(pipeline, frames(40, seed=1))  # a different conversation in between ...
    pipeline.reset()
    third = outputs(pipeline, inputs)  # ... leaves nothing behind
    fresh = outputs(Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, Sampling(seed=3)), inputs)
    for run in (second, third, fresh):
        assert run[0] == first[0]
        np.testing.assert_array_equal(run[1], first[1])
    assert other[0] != first[0]
    assert not first[1][:FRAME].any() and np.abs(first[1][FRAME:]).max() > 0  # audio lags 1 step


def test_submitting_ahead_changes_nothing(ckpt):
    inputs = frames(30)
    pipeline = Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, Sampling(seed=5))
    one = outputs(pipeline, inputs, ahead=0)
    pipeline.reset()
    three = outputs(pipeline, inputs, ahead=2)
    assert one[0] == three[0]
    np.testing.assert_array_equal(one[1], three[1])


def test_a_random_seed_is_drawn_and_reported(ckpt):
    a = Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, Sampling())
    b = Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, Sampling(seed=a.seed))
    inputs = frames(20)
    assert outputs(a, inputs)[0] == outputs(b, inputs)[0]


def test_only_the_owning_thread_may_use_it(ckpt):
    pipeline = Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, Sampling(seed=0))
    errors = []

    def other_thread():
        try:
            pipeline.step(np.zeros(FRAME, np.float32))
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert errors and "thread" in errors[0]
    with pytest.raises(ValueError, match="1920"):
        pipeline.submit(np.zeros(100, np.float32))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_a_long_session_runs_in_constant_memory(tiny_checkpoint, tmp_path):
    # The tiny model with short contexts (Moshi 50 steps, Mimi 50 frames at 25 Hz): 2000 steps
    # wrap every ring cache 40 or 80 times.
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "context": 50}))
    mimi = json.loads((folder / "mimi_config.json").read_text())
    mimi["transformer"]["context"] = 50
    (folder / "mimi_config.json").write_text(json.dumps(mimi))
    ckpt = load_checkpoint(folder)
    pipeline = Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, Sampling(seed=0))
    rng = np.random.default_rng(0)
    frame = np.zeros(FRAME, np.float32)
    memory = {}
    for step in range(2000):
        frame[:] = 0.1 * rng.standard_normal(FRAME)
        pipeline.submit(frame)
        if pipeline.pending > 1:
            result = pipeline.collect()
        if step in (300, 1999):
            mx.clear_cache()
            memory[step] = (mx.get_active_memory(), rss_bytes())
    assert np.isfinite(result.audio).all() and np.abs(result.audio).max() > 0
    (active_a, rss_a), (active_b, rss_b) = memory[300], memory[1999]
    print(
        f"active MLX memory {active_a} -> {active_b} bytes, RSS {rss_a >> 20} -> {rss_b >> 20} MB"
    )
    assert abs(active_b - active_a) < 64 * 1024
    assert rss_b - rss_a < 16 * 2**20
