"""`--lora FILE` on the commands: `run` with an adapter on a base gives what the fine-tune folder
gives (bit for bit), and what Kyutai's own fused model (`get_moshi_lm(..., lora_weights=...,
fuse_lora=True)`, saved and run the same way) gives: the same greedy tokens and audio. Bad
adapters and options are one-line errors, before anything is loaded where they can be."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import lora_reference as L
import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
import torch
from moshi_app import speech_wav
from safetensors import safe_open
from safetensors.torch import save_file

import moshi_reference as R
from moshi_mlx import LmConfig, load_model
from moshi_mlx.cli import main
from moshi_mlx.testing.tiny import TINY_LM, make_tiny_checkpoint
from moshi_mlx.testing.tiny_lora import LORA_FILE, lora_config, save_random_lora

__all__ = ["speech_wav"]  # fixtures used here

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

RANK, SCALING = 4, 1.5


def _with_weights(tiny, folder, state: dict[str, torch.Tensor]):
    """A copy of the tiny checkpoint folder (Mimi, tokenizer, config) holding `state` as its
    language model (Kyutai's PyTorch release layout)."""
    shutil.copytree(tiny, folder)
    save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory):
    """{name: folder}: the base (Kyutai's weights), moshi-finetune's output for it, the base
    whose config.json names the adapter, and Kyutai's fused model."""
    root = tmp_path_factory.mktemp("lora_cli")
    tiny = make_tiny_checkpoint(root / "tiny", seed=0)
    base = R.make_kyutai_lm(TINY_LM, seed=41)
    folders = {"base": _with_weights(tiny, root / "base", R.kyutai_state(base))}
    run = root / "run" / "checkpoint_000100" / "consolidated"  # moshi-finetune's output
    save_random_lora(LmConfig.from_dict(TINY_LM), run / LORA_FILE, RANK, seed=42)
    (run / "config.json").write_text(json.dumps({**TINY_LM, **lora_config(RANK, SCALING)}))
    folders["adapter"] = run / LORA_FILE
    named = shutil.copytree(folders["base"], root / "named")
    shutil.copy(run / LORA_FILE, named / LORA_FILE)
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(
        json.dumps({**config, **lora_config(RANK, SCALING, LORA_FILE)})
    )
    folders["named"] = named
    kyutai = L.kyutai_with_lora(
        folders["base"] / "model.safetensors", TINY_LM, run / LORA_FILE, RANK, SCALING, True
    )
    folders["kyutai"] = _with_weights(tiny, root / "kyutai", R.kyutai_state(kyutai))
    return folders


def run(capsys, *args) -> tuple[int, str]:
    status = main(["run", *map(str, args)])
    return status, capsys.readouterr().err


def greedy(capsys, speech, out, *args) -> tuple[np.ndarray, list[int], dict]:
    status, err = run(capsys, speech, out, "--temperature", 0, *args)
    assert status == 0, err
    info = json.loads(out.with_suffix(".json").read_text())
    return sf.read(out, dtype="float32")[0], info["tokens"], info


def test_run_lora_equals_the_fine_tune_folder_and_kyutai(capsys, fine_tune, speech_wav, tmp_path):
    f = fine_tune
    audio, tokens, info = greedy(
        capsys, speech_wav, tmp_path / "a.wav", "--checkpoint", f["base"], "--lora", f["adapter"]
    )
    assert len(set(tokens)) > 3  # greedy decoding of random weights is not trivially constant
    assert info["lora"] == str(f["adapter"].resolve())
    # the folder naming its adapter: the same model, bit for bit
    named = greedy(capsys, speech_wav, tmp_path / "n.wav", "--checkpoint", f["named"])
    np.testing.assert_array_equal(named[0], audio)
    assert named[1] == tokens
    # Kyutai's loader fusing the same adapter: the same tokens, the same audio
    kyutai = greedy(capsys, speech_wav, tmp_path / "k.wav", "--checkpoint", f["kyutai"])
    assert kyutai[1] == tokens
    np.testing.assert_allclose(kyutai[0], audio, atol=1e-4)
    # the adapter matters
    assert greedy(capsys, speech_wav, tmp_path / "b.wav", "--checkpoint", f["base"])[1] != tokens
    # another scaling is another model, recorded; the session replays it
    scaled = greedy(
        capsys, speech_wav, tmp_path / "s.wav", "--checkpoint", f["base"],
        "--lora", f["adapter"], "--lora-scaling", 0.5,
    )  # fmt: skip
    assert scaled[1] != tokens and scaled[2]["lora_scaling"] == 0.5
    session = tmp_path / "session.json"
    session.write_text(json.dumps(scaled[2]))
    replay = greedy(capsys, speech_wav, tmp_path / "r.wav", "--session", session)
    assert replay[1] == scaled[1]


def test_bad_lora_options_are_one_line(capsys, fine_tune, speech_wav, tmp_path):
    f = fine_tune
    other = tmp_path / "other" / LORA_FILE  # an adapter of another (wider) model
    save_random_lora(LmConfig.from_dict({**TINY_LM, "dim": 96}), other, RANK, seed=1)
    quantized = make_tiny_checkpoint(tmp_path / "q8", seed=0, quantize_bits=8)
    out = tmp_path / "x.wav"
    cases = [
        (("--lora", tmp_path / "none.safetensors"), 2, "--lora: no such file"),
        (("--lora-scaling", 2), 2, "--lora-scaling needs --lora FILE"),
        (("--lora", f["adapter"], "--lora-scaling", -1), 2, "must be a finite number"),
        (("--lora", other), 1, "lora_B.weight @ "),
        (("--lora", f["base"] / "config.json"), 1, "config.json"),
        (("--lora", tmp_path), 1, "holds no lora.safetensors"),
    ]
    for args, status, message in cases:
        got, err = run(capsys, speech_wav, out, "--checkpoint", f["base"], *args)
        assert got == status and message in err and err.count("\n") == 1, (args, err)
        assert "Traceback" not in err and not out.exists()
    # a quantized base keeps the adapter beside its weights (unfused): it runs
    got, err = run(capsys, speech_wav, out, "--checkpoint", quantized, "--lora", f["adapter"])
    assert got == 0, err


def test_chat_and_serve_take_lora(capsys, fine_tune, tmp_path):
    for command in ("chat", "serve"):
        assert main([command, "--help"]) == 0
        assert "--lora FILE" in capsys.readouterr().out
    # serve refuses a missing adapter before binding its port, and one with no chat model
    missing = tmp_path / "none.safetensors"
    assert main(["serve", "--checkpoint", str(fine_tune["base"]), "--lora", str(missing)]) == 2
    assert "--lora: no such file" in capsys.readouterr().err
    stt_only = ["serve", "--stt", str(fine_tune["base"]), "--lora", str(fine_tune["adapter"])]
    assert main(stt_only) == 2
    assert "speech-to-speech model" in capsys.readouterr().err


def test_tiny_lora_kind(tmp_path):
    """`make_tiny_checkpoint.py --kind lora`: a folder that loads fused with no flag; moshi-
    finetune's output beside it fuses the same adapter into the bare base; Kyutai's names."""
    from make_tiny_checkpoint import main as make

    folder = tmp_path / "ft"
    assert make([str(folder), "--kind", "lora"]) == 0
    config = json.loads((folder / "config.json").read_text())
    assert {k: config[k] for k in ("lora", "lora_name", "lora_rank", "lora_scaling")} == {
        "lora": True, "lora_name": LORA_FILE, "lora_rank": 4, "lora_scaling": 1.5,
    }  # fmt: skip
    finetune = json.loads((folder / "consolidated" / "config.json").read_text())
    assert finetune["lora_rank"] == 4 and finetune["dim"] == TINY_LM["dim"]
    base = shutil.copytree(folder, tmp_path / "base")
    bare = {k: v for k, v in config.items() if not k.startswith("lora")}
    (base / "config.json").write_text(json.dumps(bare))
    codes = mx.array(R.random_codes(TINY_LM, B=1, T=12, seed=5))
    fused = np.array(load_model(folder).forward(codes).text_logits)
    flagged = load_model(base, lora=folder / "consolidated")  # moshi-finetune's folder
    np.testing.assert_array_equal(np.array(flagged.forward(codes).text_logits), fused)
    plain = np.array(load_model(base).forward(codes).text_logits)
    assert np.abs(plain - fused).max() > 1e-2 * np.abs(plain).max()
    kyutai = L.kyutai_lora_shapes(R.make_kyutai_lm(TINY_LM, seed=0), 4)
    with safe_open(str(folder / LORA_FILE), "np") as f:
        assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == kyutai


def test_transcribe_and_speak_take_lora(capsys, speech_wav, tmp_path):
    """A fine-tuned STT: `transcribe --lora` on the base gives what the fine-tune folder gives."""
    from moshi_mlx.testing.tiny_lora import make_tiny_lora_checkpoint

    folder = make_tiny_lora_checkpoint(tmp_path / "stt-ft", seed=3, kind="stt")
    base = shutil.copytree(folder, tmp_path / "stt")
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(
        json.dumps({k: v for k, v in config.items() if not k.startswith("lora")})
    )
    adapter = folder / "consolidated" / LORA_FILE
    outputs = []
    for args in (
        ("--checkpoint", folder),
        ("--checkpoint", base, "--lora", adapter),
        ("--checkpoint", base),
    ):
        status = main(["transcribe", str(speech_wav), "--format", "json", "-q", *map(str, args)])
        out, err = capsys.readouterr()
        assert status == 0, err
        data = json.loads(out)
        outputs.append((data["text"], data["tokens"]))
    assert outputs[0] == outputs[1] and outputs[0][1] != outputs[2][1]
    assert main(["speak", "--help"]) == 0 and "--lora FILE" in capsys.readouterr().out
