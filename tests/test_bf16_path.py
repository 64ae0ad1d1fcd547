"""The GPU's dtype path (bfloat16 activations and caches), run on the CPU against float32.

On Metal and CUDA the language model computes in bfloat16 (`lm_compute_dtype()`), with float,
8-bit or 4-bit weights; `MOSHI_MLX_LM_DTYPE=bfloat16` (or `load_model(dtype=...)`) runs that path
here. The same checkpoint (bfloat16 values, so both runs hold identical weights) is run in both
dtypes on Moshi's architecture at a tiny width.

Bounds. bfloat16 keeps 8 significant bits: each rounding moves a value by up to 2^-9 of itself
and neighbouring values are 2^-8 apart. Measured (48 and 96 steps, teacher-forced, this model): the
relative error of the logits (Frobenius norm over all valid positions) is 0.0069-0.0086 (1.8-2.2
x 2^-8) with float weights and 0.014-0.020 (3.5-5.1 x 2^-8) with q8/q4 weights, whose dequantized
weights are rounded to bfloat16 once more; the largest error of one logit is 0.022 (float) and
0.063 (quantized), with logits of standard deviation 0.4-0.6. The bounds are about twice those:
relative 4 x 2^-8 (float) and 8 x 2^-8 (quantized), absolute 0.05 and 0.12. Streaming (96
steps, 864 decisions), one decision's logits differ by at most 0.017 (4.4 x 2^-8, float) and
0.031 (8 x 2^-8, quantized) relative, 0.021 and 0.056 absolute: bounds 6 and 12 x 2^-8.
A greedy decision whose float32 top-2 gap exceeds twice the absolute bound cannot flip in
bfloat16, so greedy tokens must agree on every such decision.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from moshi_app import FRAME, REPO, read, speech_wav, tiny_checkpoint
from pulse_audio import pulse

from mimi_mlx.nn.backend import LM_DTYPE_ENV, lm_compute_dtype
from moshi_mlx import LmConfig, MoshiGenerator, load_checkpoint, load_model
from moshi_mlx.cli import main
from moshi_mlx.jobs import pipeline as pipeline_module
from moshi_mlx.model import depformer as depformer_module
from moshi_mlx.testing.tiny import TINY_LM, save_random_lm

__all__ = ["pulse", "speech_wav", "tiny_checkpoint"]  # fixtures used here

U = 2.0**-8  # spacing of bfloat16 values relative to their size
REL_BOUND = {"float": 4 * U, "q8": 8 * U, "q4": 8 * U}
ABS_BOUND = {"float": 0.05, "q8": 0.12, "q4": 0.12}
ROW_BOUND = {"float": 6 * U, "q8": 12 * U, "q4": 12 * U}  # one decision's logits
BITS = {"float": None, "q8": 8, "q4": 4}
STEPS = 96


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Tiny Moshi checkpoints in Kyutai's MLX layout: float, q8 and q4 weights."""
    cfg = LmConfig.from_dict(TINY_LM)
    folders = {}
    for kind, bits in BITS.items():
        folder = tmp_path_factory.mktemp(f"bf16_{kind}")
        name = save_random_lm(cfg, folder, seed=0, quantize_bits=bits).name
        (folder / "config.json").write_text(json.dumps({**TINY_LM, "moshi_name": name}))
        folders[kind] = folder
    return folders


def user_codes(steps: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TINY_LM["card"], (1, 8, steps))


def greedy_run(model, user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy streaming: text (T,) and Moshi's audio frames (8, T - 1), time-aligned."""
    gen = MoshiGenerator(model, text_temperature=0, audio_temperature=0)
    texts, frames = [], []
    for s in range(user.shape[-1]):
        text, frame = gen.step(user[:, :, s])
        texts.append(int(text[0].item()))
        if frame is not None:
            frames.append(np.array(frame[0]))
    return np.array(texts), np.stack(frames, axis=1)


def as_codes(texts: np.ndarray, audio: np.ndarray, user: np.ndarray) -> mx.array:
    T = audio.shape[1]
    return mx.array(np.concatenate([texts[None, None, :T], audio[None], user[:, :, :T]], 1))


def decisions(out) -> tuple[np.ndarray, np.ndarray]:
    """Every valid greedy decision's float logits (N, V) of text, and of audio."""
    text = np.array(out.text_logits.astype(mx.float32))[np.array(out.text_mask)]
    audio = np.array(out.logits.astype(mx.float32))[np.array(out.mask)]
    return text, audio


def top2_gap(logits: np.ndarray) -> np.ndarray:
    top = np.sort(logits, axis=-1)[..., -2:]
    return top[..., 1] - top[..., 0]


@pytest.mark.parametrize("kind", list(BITS))
def test_teacher_forced_logits_within_bounds(checkpoints, kind):
    """bfloat16 logits stay within the stated bounds of float32's, and their greedy choice agrees
    wherever float32's top-2 gap exceeds twice the bound."""
    fp32 = load_model(checkpoints[kind], dtype=mx.float32)
    bf16 = load_model(checkpoints[kind], dtype=mx.bfloat16)
    user = user_codes(STEPS + 1)
    texts, audio = greedy_run(fp32, user)  # a sequence float32 itself would generate
    codes = as_codes(texts, audio, user)
    ref, got = decisions(fp32.forward(codes)), decisions(bf16.forward(codes))
    for what, a, b in zip(("text", "audio"), ref, got, strict=True):
        rel = np.linalg.norm(b - a) / np.linalg.norm(a)
        worst = np.abs(b - a).max()
        assert 0 < rel < REL_BOUND[kind], f"{what}: relative error {rel:.4f}"
        assert worst < ABS_BOUND[kind], f"{what}: largest error {worst:.4f}"
        clear = top2_gap(a) > 2 * ABS_BOUND[kind]
        assert clear.sum() >= 12, f"{what}: only {clear.sum()} clear decisions"
        np.testing.assert_array_equal(b[clear].argmax(-1), a[clear].argmax(-1))
    assert np.array_equal(ref[0].argmax(-1), texts[: len(ref[0])])  # float32's own choices


class Recorder:
    """A greedy sampler that records every decision's logits; with `forced`, it returns those
    tokens instead of its own choice (float32's stream, fed to the bfloat16 model)."""

    def __init__(self, forced: list[int] | None = None):
        self.logits: list[np.ndarray] = []
        self.forced = forced

    def __call__(self, logits: mx.array, rng) -> mx.array:
        self.logits.append(np.array(logits.astype(mx.float32))[0])
        token = self.forced[len(self.logits) - 1] if self.forced else int(self.logits[-1].argmax())
        return mx.array([token], dtype=mx.int32)


def streamed(model, user: np.ndarray, forced: list[int] | None = None) -> np.ndarray:
    """The logits (N, V) of every decision a streaming session makes, in order."""
    gen = MoshiGenerator(model)
    gen.text_sampler = gen.audio_sampler = recorder = Recorder(forced)
    for s in range(user.shape[-1]):
        mx.eval(*[a for a in gen.step(user[:, :, s]) if a is not None])
    return recorder.logits


@pytest.mark.parametrize("kind", list(BITS))
def test_streamed_decisions_within_bounds(checkpoints, kind):
    """The streaming step (ring caches, compiled depth decoder, sampling hooks) in bfloat16, fed
    float32's own greedy stream: every decision's logits within the bounds, and bfloat16's greedy
    choice equal to float32's wherever float32's top-2 gap exceeds twice the bound."""
    fp32 = load_model(checkpoints[kind], dtype=mx.float32)
    bf16 = load_model(checkpoints[kind], dtype=mx.bfloat16)
    user = user_codes(STEPS, seed=1)
    ref = streamed(fp32, user)
    tokens = [int(r.argmax()) for r in ref]
    got = streamed(bf16, user, forced=tokens)
    # the text and 8 codebooks a step, less the 7 acoustic codebooks of time -1 (delay 1),
    # which the generator does not sample at the first step
    assert len(got) == len(ref) == STEPS * 9 - 7
    rel = max(np.linalg.norm(b - a) / np.linalg.norm(a) for a, b in zip(ref, got, strict=True))
    worst = max(np.abs(b - a).max() for a, b in zip(ref, got, strict=True))
    assert worst < ABS_BOUND[kind], f"largest error {worst:.4f}"
    assert rel < ROW_BOUND[kind], f"largest relative error of one decision {rel:.4f}"
    clear = [i for i, a in enumerate(ref) if top2_gap(a) > 2 * ABS_BOUND[kind]]
    assert len(clear) >= 50, f"only {len(clear)} clear decisions"
    assert [int(got[i].argmax()) for i in clear] == [tokens[i] for i in clear]


@pytest.mark.parametrize("kind", list(BITS))
def test_no_float32_left_in_the_step(checkpoints, kind, monkeypatch):
    """Every weight, every linear layer's input and output, the step's outputs and every KV
    cache (temporal and depth decoder) are bfloat16: nothing upcasts silently."""
    monkeypatch.setenv(LM_DTYPE_ENV, "bfloat16")
    assert lm_compute_dtype() == mx.bfloat16
    model = load_model(checkpoints[kind])  # the backend's dtype, forced to bfloat16
    assert model.dtype == mx.bfloat16
    for name, p in _flat(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            assert p.dtype == mx.bfloat16, name

    seen = []
    for cls in (nn.Linear, nn.QuantizedLinear):
        original = cls.__call__

        def spy(self, x, _original=original):
            y = _original(self, x)
            seen.append((type(self).__name__, x.dtype, y.dtype))
            return y

        monkeypatch.setattr(cls, "__call__", spy)
    depth_caches = []
    make = depformer_module.DepFormer._caches

    def keep(self):
        caches = make(self)
        depth_caches.append(caches)
        return caches

    monkeypatch.setattr(depformer_module.DepFormer, "_caches", keep)

    gen = MoshiGenerator(model, seed=0)
    out, text_logits = model.step(gen._inputs())
    assert out.dtype == text_logits.dtype == mx.bfloat16
    gen.reset()
    for s in range(3):
        text, frame = gen.step(user_codes(1, seed=s)[:, :, 0])
        mx.eval(text, frame)
    assert len(seen) > 20
    assert all(x == y == mx.bfloat16 for _, x, y in seen), sorted(set(seen))
    caches = model.transformer._caches
    assert all(c.keys.dtype == c.values.dtype == mx.bfloat16 for c in caches)
    assert depth_caches and all(
        c.keys.dtype == c.values.dtype == mx.bfloat16 for cs in depth_caches for c in cs
    )
    assert text.dtype == frame.dtype == mx.int32


def _flat(tree):
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


def test_pipeline_runs_mimi_in_float32_and_the_lm_in_bfloat16(tiny_checkpoint, monkeypatch):
    """The GPU's split: Mimi's weights and audio in float32, the language model in bfloat16."""
    monkeypatch.setenv(LM_DTYPE_ENV, "bfloat16")
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.lm.dtype == mx.bfloat16
    assert {p.dtype for _, p in _flat(ckpt.mimi.parameters())} == {mx.float32}
    pipe = pipeline_module.Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer)
    rng = np.random.default_rng(0)
    results = [pipe.step((0.1 * rng.standard_normal(FRAME)).astype(np.float32)) for _ in range(12)]
    audio = np.concatenate([r.audio for r in results])
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    assert np.abs(audio[FRAME:]).max() > 0 and not audio[:FRAME].any()  # audio lags 1 step
    assert all(0 <= r.token < TINY_LM["text_card"] for r in results)


def test_run_in_bfloat16(tiny_checkpoint, speech_wav, tmp_path, monkeypatch, capsys):
    """`moshi-mlx run` end to end with the language model in bfloat16 (the pipeline it builds
    is inspected)."""
    monkeypatch.setenv(LM_DTYPE_ENV, "bfloat16")
    built = []
    original = pipeline_module.Pipeline.__init__

    def spy(self, lm, mimi, *args, **kwargs):
        built.append((lm.dtype, {p.dtype for _, p in _flat(mimi.parameters())}))
        original(self, lm, mimi, *args, **kwargs)

    monkeypatch.setattr(pipeline_module.Pipeline, "__init__", spy)
    out = tmp_path / "answer.wav"
    status = main(["run", str(speech_wav), str(out), "--checkpoint", str(tiny_checkpoint), "-q"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert built == [(mx.bfloat16, {mx.float32})]
    answer = read(out)
    assert len(answer) == len(read(speech_wav)) and np.isfinite(answer).all()
    assert np.abs(answer[FRAME:]).max() > 0.01
    assert json.loads(out.with_suffix(".json").read_text())["steps"] > 40


def test_chat_in_bfloat16(pulse, tiny_checkpoint, speech_wav, tmp_path):
    """The live chat on (virtual) audio devices with the language model in bfloat16: it keeps
    up, ends cleanly on Ctrl-C and records what it said."""
    folder = tmp_path / "rec"
    cmd = [sys.executable, "-m", "moshi_mlx", "chat", "--checkpoint", str(tiny_checkpoint)]
    cmd += ["--seed", "1", "--stats", "--max-lag", "1000", "--record", str(folder)]
    env = {**pulse.env, LM_DTYPE_ENV: "bfloat16"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline and not any("[stats]" in x for x in lines):
            lines.append(proc.stderr.readline())
        pulse.play_into_mic(speech_wav).wait(timeout=30)
        proc.send_signal(signal.SIGINT)
        err = "".join(lines) + proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "session:" in err
    summary = json.loads((folder / "session.json").read_text())
    assert summary["steps"] > 20  # several seconds, even on a loaded machine
    said = read(folder / "moshi.wav")
    assert np.isfinite(said).all() and np.abs(said).max() > 0.01
