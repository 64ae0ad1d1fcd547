"""Hibiki-Zero's file mode against the `hibiki_zero` package's own loop, and its known-model row.

A tiny random Hibiki-Zero in the real repo's layout (`make_tiny_checkpoint.py --kind
hibiki-zero`: Kyutai's PyTorch tensor names, Mimi bundled) is put in a local hub cache as
`kyutai/hibiki-zero-3b-pytorch-bf16`, greedy through its config's `lm_gen_config`; the package's
`run.py: generate` translates two files in one batch (`hibiki_zero_reference.py`, in a process
of its own), and `moshi-mlx run` each file: the same text tokens up to the end-of-text, the
same audio within float tolerance, the same text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hub_cache import add_repo, hub_env
from pulse_audio import pulse

from moshi_mlx.cli import main
from moshi_mlx.commands import options, prompting
from moshi_mlx.jobs.known import MODELS, model_for_repo

__all__ = ["pulse"]  # a fixture used here

REPO = "kyutai/hibiki-zero-3b-pytorch-bf16"
GEN_SECONDS = 4.0  # the package's --gen-duration: it steps 50 frames, whatever it says
INPUTS = {"long": 1.5, "short": 0.9}  # seconds


def _signal(seconds: float, seed: int) -> np.ndarray:
    """A deterministic test signal: a tremolo tone, or a tone in noise."""
    t = np.arange(int(24000 * seconds)) / 24000
    if seed == 0:
        return (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal(len(t))
    return (0.2 * np.sin(2 * np.pi * 330 * t) + 0.05 * noise).astype(np.float32)


def _frames(wav: Path) -> int:
    return -(-sf.info(wav).frames // 1920)


def _probe(folder: Path, wav: Path, steps: int) -> list[int]:
    """Our greedy text tokens of the file mode, never stopping at an end of text."""
    from moshi_mlx.jobs.offline import EndOfStream, run_file
    from moshi_mlx.jobs.pipeline import Pipeline, Sampling
    from moshi_mlx.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(folder)
    pipeline = Pipeline(ckpt.lm, ckpt.mimi, None, Sampling(0.0, 25, 0.0, 250, seed=0))
    end = EndOfStream(-1, steps - _frames(wav) - 2, warmup_silence=True)
    return run_file(pipeline, wav, wav.with_name("probe.wav"), end_of_stream=end).transcript.tokens


def _say_end_of_text(folder: Path, tokens: list[int], after: int) -> int:
    """Relabel the text tokens so that the model says end-of-text (2) where it first says a
    token it had not said before, after step `after`: text tokens t and 2 swap their rows in
    the text head and both text embeddings (nothing before that step changes). Returns the
    step."""
    import mlx.core as mx

    s = next(
        i
        for i in range(after + 1, len(tokens))
        if tokens[i] > 3 and tokens[i] not in tokens[:i] and 2 not in tokens[: i + 1]
    )
    t = tokens[s]
    path = folder / "model.safetensors"
    weights = mx.load(str(path))
    order = list(range(weights["text_linear.weight"].shape[0]))
    order[2], order[t] = t, 2
    for name in ("text_linear.weight", "text_emb.weight", "depformer_text_emb.weight"):
        rows = list(range(weights[name].shape[0]))
        rows[: len(order)] = order
        weights[name] = weights[name][mx.array(rows)]
    mx.save_safetensors(str(path), weights, metadata={"format": "pt"})
    return s


@pytest.fixture(scope="module")
def zero(tmp_path_factory) -> dict:
    """The tiny checkpoint (greedy; it says end-of-text a few steps after the short input),
    the inputs, and what the package's loop made of them."""
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("zero")
    folder = make_tiny_checkpoint(tmp / "ckpt", seed=0, kind="hibiki-zero")
    config = json.loads((folder / "config.json").read_text())
    config["lm_gen_config"] = {"temp": 0.0, "temp_text": 0.0}  # greedy, in both loops
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    wavs = {}
    for i, (name, seconds) in enumerate(INPUTS.items()):
        wavs[name] = tmp / f"{name}.wav"
        sf.write(wavs[name], _signal(seconds, i), 24000, subtype="FLOAT")
    # after the warmup frame, the input and the end-of-input frame, and a few more steps
    after = 1 + _frames(wavs["short"]) + 3
    eos_step = _say_end_of_text(folder, _probe(folder, wavs["short"], 50), after)
    add_repo(tmp / "hub", REPO, {p.name: p for p in folder.iterdir() if p.is_file()})
    out = tmp / "kyutai"
    script = Path(__file__).with_name("hibiki_zero_reference.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp / "hub"), str(out), str(GEN_SECONDS)]
        + [str(w) for w in wavs.values()],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    decoded = np.load(out / "outputs.npz")
    refs = {}
    for i, name in enumerate(wavs):
        refs[name] = {
            "text_tokens": decoded["text"][i].tolist(),
            "audio": sf.read(out / f"{i}_{name}_mono.wav", dtype="float32")[0],
            "text": (out / f"{i}_{name}.txt").read_text(),
        }
    return {
        "folder": folder,
        "wavs": wavs,
        "kyutai": refs,
        "eos_step": eos_step,
        "hub": tmp / "hub",
    }


def run(capsys, *args) -> tuple[int, str, str]:
    status = main(["run", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def test_file_mode_matches_hibiki_zero_generate(capsys, zero, tmp_path):
    """Each file as the package's batch: the same text tokens, audio and text; where its
    output has no end-of-text (cut by the package at the last word), the same steps as ours
    up to --max-tail."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(
        str(zero["folder"] / "tokenizer_spm_48k_multi6_2.model")
    )
    ended = []
    for name, wav in zero["wavs"].items():
        ref = zero["kyutai"][name]
        said = sp.eos_id() in ref["text_tokens"]
        out = tmp_path / f"{name}.wav"
        tail = 3 if said else (len(ref["text_tokens"]) - 2 - _frames(wav)) * 0.08
        status, _, err = run(capsys, wav, out, "--checkpoint", zero["folder"], "--max-tail", tail)
        assert status == 0, err
        ours = json.loads(out.with_suffix(".json").read_text())
        assert ours["model"] == "hibiki-zero" and ours["sampling"]["text_temperature"] == 0.0
        audio = sf.read(out, dtype="float32")[0]
        if said:  # where their output is cut
            ended.append(name)
            eos = ref["text_tokens"].index(sp.eos_id())
            assert "stopped at the model's end of text" in err
            assert ours["tokens"] == ref["text_tokens"][:eos]
            assert audio.shape == ref["audio"].shape == (eos * 1920,)
            assert ref["text"] == sp.decode([t for t in ours["tokens"] if t > sp.pad_id()])
        else:
            assert "stopped at --max-tail" in err
            assert ours["tokens"] == ref["text_tokens"]
            audio = audio[: len(ref["audio"])]
        # (their file is 16-bit PCM: one step is 3e-5)
        np.testing.assert_allclose(audio, ref["audio"][: len(audio)], atol=2e-4)
    # the short input's translation ends after it: the end-of-input frame and the tail ran
    assert "short" in ended
    assert zero["kyutai"]["short"]["text_tokens"].index(sp.eos_id()) == zero["eos_step"]


def test_without_end_of_text_it_stops_at_max_tail(capsys, zero, tmp_path):
    out = tmp_path / "cut.wav"
    wav = zero["wavs"]["short"]
    status, _, err = run(capsys, wav, out, "--checkpoint", zero["folder"], "--max-tail", 0.16)
    assert status == 0 and "stopped at --max-tail 0.16 s" in err, err
    ours = json.loads(out.with_suffix(".json").read_text())
    frames = _frames(wav)
    # one warmup frame, the input, the end-of-input frame, 2 frames of tail (its end of text
    # would come 2 steps later)
    assert ours["steps"] == 1 + frames + 1 + 2 == zero["eos_step"] - 2
    assert sf.info(out).frames == (ours["steps"] - 2) * 1920  # (the warmup's silence dropped)
    kyutai = zero["kyutai"]["short"]["text_tokens"]
    assert ours["tokens"] == kyutai[: ours["steps"]]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    options.add_model_options(parser)
    prompting.add_prompt_options(parser)
    return parser.parse_args(list(argv))


def test_hibiki_zero_is_a_known_model(capsys, zero):
    from moshi_mlx.model.checkpoint import load_model, weights_layout

    row = MODELS["hibiki-zero"]
    assert row.repo == REPO and row.kind == "translation" and row.conditions is None
    assert model_for_repo(REPO) is row
    assert options.source_of(_args("--model", "hibiki-zero")) == REPO
    assert options.known_of(_args("--hf-repo", REPO)) is row
    # a folder: recognised from its config (no row named)
    lm = load_model(zero["folder"])
    assert weights_layout(zero["folder"]) == "pytorch"
    assert prompting.profile_of(None, lm) is row
    assert main(["models"]) == 0
    assert REPO in capsys.readouterr().out


def test_guidance_is_refused_by_name(capsys, zero, tmp_path):
    wav = zero["wavs"]["short"]
    for args in (("--model", "hibiki-zero"), ("--checkpoint", zero["folder"])):
        status, _, err = run(capsys, wav, tmp_path / "x.wav", *args, "--cfg-coef", "3")
        assert status in (1, 2) and err.count("\n") == 1 and "--cfg-coef" in err, err
        assert "Traceback" not in err
    assert (
        "hibiki-zero takes no --cfg-coef"
        in run(capsys, wav, tmp_path / "x.wav", "--model", "hibiki-zero", "--cfg-coef", "3")[2]
    )
    assert not (tmp_path / "x.wav").exists()


def test_tiny_script_writes_the_real_layout(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_checkpoint.py"
    env = {**os.environ, "PYTHONPATH": str(script.parents[1])}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "z"), "--kind", "hibiki-zero"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "z").iterdir())
    assert names == sorted(
        [
            "config.json",
            "mimi-pytorch-e351c8d8@125.safetensors",
            "mimi_config.json",
            "model.safetensors",
            "tokenizer_spm_48k_multi6_2.model",
        ]
    )
    from moshi_mlx.model.checkpoint import tensor_names

    names = tensor_names(tmp_path / "z" / "model.safetensors")
    assert "transformer.layers.0.self_attn.in_proj_weight" in names and "emb.31.weight" in names
    assert "depformer.layers.0.gating.8.linear_in.weight" in names  # 9 weight sets
    shutil.rmtree(tmp_path / "z")


def test_serve_chats_with_hibiki_zero(zero, tmp_path):
    """`moshi-mlx serve --checkpoint` Hibiki-Zero, a client as Kyutai's: the live per-frame
    pipeline answers, and what it said is what the pipeline says on what it heard."""
    import asyncio
    import time

    import aiohttp
    from test_serve_chat import _free_port, _talk

    from moshi_mlx.jobs.pipeline import Pipeline, Sampling
    from moshi_mlx.model.checkpoint import load_checkpoint

    port = _free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "moshi_mlx", "serve", "--checkpoint", str(zero["folder"]),
           "--port", str(port), "--seed", "7", "--record", str(tmp_path / "rec"),
           "--api-key", "secret"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "serving on" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        base = f"127.0.0.1:{port}"

        async def info() -> dict:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{base}/api/info?auth_id=secret") as r:
                    return (await r.json())["chat"]

        served = asyncio.run(info())
        assert served["kind"] == "translation" and served["sampling"]["text_temperature"] == 0
        pcm = sf.read(zero["wavs"]["long"], dtype="float32")[0]
        text, audio = asyncio.run(_talk(base, np.concatenate([pcm, np.zeros(24000, "f4")])))
        assert audio.size >= 5 * 1920  # (under load the lag rule skips frames)
        session = next((tmp_path / "rec").iterdir())
        while not (session / "session.json").is_file() and time.monotonic() < deadline + 20:
            time.sleep(0.1)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()
    recorded = json.loads((session / "transcript.json").read_text())
    ckpt = load_checkpoint(zero["folder"])
    pipeline = Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, Sampling(0.0, 25, 0.0, 250, seed=7))
    heard = sf.read(session / "user.wav", dtype="float32")[0]
    tokens = [pipeline.step(heard[i : i + 1920]).token for i in range(0, len(heard), 1920)]
    assert tokens == recorded["tokens"] and text.strip() == recorded["text"].strip()


@pytest.mark.parametrize("recipe", ["q8", "q4"])
def test_quantized_hibiki_zero(capsys, zero, tmp_path, recipe):
    """`moshi-mlx-quantize` of Kyutai's PyTorch layout, with its report: every layer quantized,
    the end-of-text embedding as the float model loads it, still Hibiki-Zero (its file mode)."""
    import mlx.core as mx

    from moshi_mlx.model.checkpoint import load_model, weights_layout
    from quantize.cli import main as quantize

    out = tmp_path / recipe
    assert quantize([str(zero["folder"]), str(out), "--recipe", recipe, "--report", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "audio mean" in printed.out and "stay in float" not in printed.err, printed.err
    report = json.loads((out / "quantization_report.json").read_text())
    (result,) = report["results"]
    assert result["name"] == recipe and len(result["streams"]) == 1 + 16
    top1 = np.mean([s["top1"] for k, s in result["streams"].items() if k.startswith("audio")])
    assert top1 > (0.9 if recipe == "q8" else 0.5)
    lm = load_model(out)
    assert weights_layout(out) == "mlx" and prompting.profile_of(None, lm).name == "hibiki-zero"
    emb = np.array(lm.text_emb(mx.array([2, 3])).astype(mx.float32))
    np.testing.assert_array_equal(emb[0], emb[1])  # (Kyutai's loader: 2 is heard as padding)
    status, _, err = run(capsys, zero["wavs"]["short"], tmp_path / "q.wav", "--checkpoint", out)
    assert status == 0 and ("end of text" in err or "--max-tail" in err), err


def test_bench_estimates_the_real_size():
    """`scripts/bench.py lm --model hibiki-zero --estimate`: 3.3 G parameters, about 6.7 GB in
    bfloat16; q4 with its KV cache fits a 16 GB Mac."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from bench_lm import _hibiki_zero, estimate

    rows = {r["mode"]: r for r in estimate(_hibiki_zero())}
    assert 6.0 < rows["bf16"]["weights_gb"] < 7.0 and 1.8 < rows["q4"]["weights_gb"] < 2.3
    assert rows["q4"]["kv_gb"] == pytest.approx(2 * 28 * 3000 * 8 * 128 * 2 / 1e9)
    assert rows["q4"]["fits"] and rows["bf16"]["fits"] and not rows["fp32"]["fits"]


def test_a_batch_of_files(capsys, zero, tmp_path):
    """`run A B OUT/`: each file as alone (the package's batch gave the same)."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(
        str(zero["folder"] / "tokenizer_spm_48k_multi6_2.model")
    )
    wavs = list(zero["wavs"].values())
    out = tmp_path / "out"
    status, _, err = run(capsys, *wavs, out, "--checkpoint", zero["folder"], "--max-tail", 3)
    assert status == 0, err
    assert err.count("wrote ") == 2
    for name, wav in zero["wavs"].items():
        ours = json.loads((out / f"{wav.stem}.json").read_text())["tokens"]
        ref = zero["kyutai"][name]["text_tokens"]
        if sp.eos_id() in ref:
            assert ours == ref[: ref.index(sp.eos_id())]
        else:
            n = min(len(ours), len(ref))
            assert ours[:n] == ref[:n]
    # two inputs of one name would write one output: refused before anything is loaded
    other = tmp_path / "again" / wavs[0].name
    other.parent.mkdir()
    shutil.copy(wavs[0], other)
    status, _, err = run(capsys, wavs[0], other, tmp_path / "o2", "--model", "hibiki-zero")
    assert status == 2 and "both write" in err and err.count("\n") == 1, err


def test_model_name_resolves_to_the_hub_repo(zero, tmp_path):
    """`--model hibiki-zero` with the repo in the hub cache (offline): the same translation."""
    out = tmp_path / "hub.wav"
    wav = zero["wavs"]["short"]
    done = subprocess.run(
        [sys.executable, "-m", "moshi_mlx", "run", str(wav), str(out), "--model", "hibiki-zero",
         "--max-tail", "3", "-q"],
        capture_output=True,
        text=True,
        env={**os.environ, **hub_env(zero["hub"])},
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ours = json.loads(out.with_suffix(".json").read_text())
    assert ours["checkpoint"] == REPO and ours["model"] == "hibiki-zero"
    ref = zero["kyutai"]["short"]["text_tokens"]
    assert ours["tokens"] == ref[: zero["eos_step"]]


def test_live_hibiki_zero_chat(pulse, zero, tmp_path):
    """`chat --checkpoint` Hibiki-Zero on (virtual) audio devices: the live pipeline runs it."""
    from test_chat_live import _chat

    wav = zero["wavs"]["long"]
    args = ["--checkpoint", zero["folder"], "--seed", 2, "--stats", "--max-lag", 1000]
    live = _chat(pulse, tmp_path / "rec", wav, args, tmp_path / "speaker.raw")
    assert live.returncode == 0, live.stderr
    assert live.summary["model"] == "hibiki-zero" and "cfg_coef" not in live.summary
    assert live.summary["steps"] > 10
