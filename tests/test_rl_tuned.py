"""Kyutai's RL-tuned checkpoints (`kyutai/moshika-rl-seamless`, `kyutai/personaplex-rl-seamless`):
known rows with their parents' defaults, and tiny copies of their layouts that load by folder and
from the hub cache under the row's repo id, and run as their parents do.

Their model cards say only that they are for Kyutai's (Moshi) and NVIDIA's (PersonaPlex) PyTorch
inference code, so the copies hold what the parents' PyTorch repos hold: the language model in
Kyutai's release names (`model.safetensors`, bfloat16), Mimi
(`tokenizer-e351c8d8-checkpoint125.safetensors`) and `tokenizer_spm_32k_3.model`, plus a
config.json for the tiny widths. The parents' copies are the tiny kinds
(`make_tiny_checkpoint`, Kyutai's MLX layout) holding the same weights.
"""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
import torch
from hub_cache import add_repo
from huggingface_hub import constants as hub_constants
from mlx.utils import tree_flatten
from moshi_app import speech_wav
from safetensors.torch import save_file

import moshi_reference as R
from moshi_mlx import load_model
from moshi_mlx.cli import main
from moshi_mlx.jobs.known import MODELS, TRAINED, model_for_repo
from moshi_mlx.model.checkpoint import weights_layout
from moshi_mlx.testing.tiny import TINY_KINDS, make_tiny_checkpoint

__all__ = ["speech_wav"]  # fixtures used here

# row -> (parent row, tiny kind of the parent, hub repo)
RL = {
    "moshika-rl": ("moshika", "moshi", "kyutai/moshika-rl-seamless"),
    "personaplex-rl": ("personaplex", "personaplex", "kyutai/personaplex-rl-seamless"),
}


def test_rows_have_their_parents_defaults():
    for name, (parent, _, repo) in RL.items():
        row, base = MODELS[name], MODELS[parent]
        assert row.repo == repo and row.repos == {"bf16": repo} and model_for_repo(repo) is row
        assert row.kind == "dialogue" and row.sampling == base.sampling
        assert (row.text_prompt, row.voice_prompt, row.voices) == (
            base.text_prompt, base.voice_prompt, base.voices,
        )  # fmt: skip
        assert "RL-tuned" in row.about and "gated" in row.about
    assert MODELS["personaplex-rl"].text_prompt == TRAINED


@pytest.fixture(scope="module", params=list(RL))
def copies(request, tmp_path_factory):
    """(row name, the RL repo's tiny copy, the parent's tiny copy with the same weights)."""
    name = request.param
    kind = RL[name][1]
    root = tmp_path_factory.mktemp(name)
    parent = make_tiny_checkpoint(root / "parent", seed=0, kind=kind)
    kyutai = R.make_kyutai_lm(TINY_KINDS[kind], seed=51, bf16_exact=True)
    rl = shutil.copytree(parent, root / "rl")
    state = {k: v.to(torch.bfloat16) for k, v in R.kyutai_state(kyutai).items()}
    save_file(state, str(rl / "model.safetensors"))  # Kyutai's release names, bfloat16
    ours = load_model(rl)
    assert weights_layout(rl) == "pytorch"
    weights = dict(tree_flatten(ours.parameters()))
    mx.save_safetensors(str(parent / "model.safetensors"), weights)  # Kyutai's MLX names
    return name, rl, parent


def test_loads_by_folder_as_its_parent(copies):
    name, rl, parent = copies
    codes = mx.array(R.random_codes(TINY_KINDS[RL[name][1]], B=1, T=10, seed=3))
    ours, theirs = load_model(rl), load_model(parent)
    assert weights_layout(parent) == "mlx" and ours.cfg == theirs.cfg
    np.testing.assert_array_equal(
        np.array(ours.forward(codes).logits), np.array(theirs.forward(codes).logits)
    )


def test_runs_from_the_hub_cache_as_its_parent(capsys, copies, speech_wav, tmp_path, monkeypatch):
    """`run --model NAME` (its repo, from the cache, offline) gives what `run --checkpoint
    PARENT` gives with the same seed and prompts: the parent's sampling defaults and prompts."""
    name, rl, parent = copies
    cache = tmp_path / "hub"
    add_repo(cache, RL[name][2], {p.name: p for p in rl.iterdir() if p.is_file()})
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    prompts = ("--prompt", "You enjoy a good conversation.", "--voice-prompt", speech_wav)
    outputs = {}
    for which, source in (("rl", ("--model", name)), ("parent", ("--checkpoint", parent))):
        out = tmp_path / f"{which}.wav"
        args = (speech_wav, out, *source, *prompts, "--seed", 7, "-q")
        assert main(["run", *map(str, args)]) == 0, capsys.readouterr().err
        info = json.loads(out.with_suffix(".json").read_text())
        outputs[which] = (sf.read(out, dtype="float32")[0], info)
    (audio, info), (parent_audio, parent_info) = outputs["rl"], outputs["parent"]
    assert info["model"] == name and info["checkpoint"] == RL[name][2]
    assert parent_info["model"] == {"moshika": "moshiko"}.get(RL[name][0], RL[name][0])
    assert info["sampling"] == parent_info["sampling"]
    assert info["tokens"] == parent_info["tokens"] and len(set(info["tokens"])) > 1
    np.testing.assert_array_equal(audio, parent_audio)
