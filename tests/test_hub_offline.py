"""Hub repo ids with the network off: which files a repo has comes from the local cache's
listing (or the hub's, once), never from asking for names that may not exist. Every repo layout
resolves from a cache in huggingface_hub's exact layout; nothing reaches the real hub."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_cache import add_repo, hub_env
from huggingface_hub import constants as hub_constants
from moshi_app import REPO, cli, speech_wav, tiny_checkpoint

import mimi_mlx.io.hub as hub
from mimi_mlx.checkpoint import HF_FILE, resolve_mimi_files
from mimi_mlx.constants import KYUTAI_FILE
from mimi_mlx.io.hub import CheckpointError
from moshi_mlx.model.checkpoint import config_from, resolve
from moshi_mlx.model.config import LmConfig

__all__ = ["speech_wav", "tiny_checkpoint"]  # fixtures used here

SPM = "tokenizer_spm_32k_3.model"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, used offline by this process."""
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return folder


def dummy(tmp_path: Path, name: str, text: str = "x") -> Path:
    path = tmp_path / "files" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_kyutai_mlx_repo_without_config_json(cache, tmp_path):
    """kyutai/moshiko-mlx-q4 has no config.json: offline, after an earlier online run (which
    left `.no_exist` markers) and after a bare `hf download`, it resolves from the cache."""
    files = {n: dummy(tmp_path, n, n) for n in ("model.q4.safetensors", KYUTAI_FILE, SPM)}
    for missing in (("config.json", "model.safetensors", "model.q8.safetensors"), ()):
        repo = "kyutai/moshiko-mlx-q4" if missing else "kyutai/moshika-mlx-q4"
        snap = add_repo(cache, repo, files, missing=missing)
        found = resolve(repo)
        assert found.weights == [snap / "model.q4.safetensors"] and found.config is None
        assert config_from(found) == LmConfig()  # the 7B model
        assert found.get(KYUTAI_FILE) == snap / KYUTAI_FILE and found.get(SPM) == snap / SPM
        assert found.get("config.json") is None
        assert resolve_mimi_files(repo) == (snap / KYUTAI_FILE, None)  # Mimi of a Moshi repo


def test_transformers_repos(cache, tmp_path):
    """kmhf/hf-moshiko (sharded, config.json) and kyutai/mimi (transformers' Mimi)."""
    config = {"architectures": ["MoshiForConditionalGeneration"], "model_type": "moshi"}
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"weight_map": {"a": shards[0], "b": shards[1]}}
    files = {
        "config.json": dummy(tmp_path, "hf-config.json", json.dumps(config)),
        "model.safetensors.index.json": dummy(tmp_path, "index.json", json.dumps(index)),
        **{s: dummy(tmp_path, s, s) for s in shards},
    }
    snap = add_repo(cache, "kmhf/hf-moshiko", files)
    found = resolve("kmhf/hf-moshiko")
    assert found.layout == "hf" and found.weights == [snap / s for s in shards]
    mimi = {"config.json": dummy(tmp_path, "m.json", '{"model_type": "mimi"}')}
    mimi[HF_FILE] = dummy(tmp_path, "m.safetensors")
    snap = add_repo(cache, "kyutai/mimi", mimi, missing=(KYUTAI_FILE,))
    assert resolve_mimi_files("kyutai/mimi") == (snap / HF_FILE, snap / "config.json")


def test_repos_whose_config_names_the_files(cache, tmp_path):
    """STT/TTS-style repos: config.json names every file (`moshi_name`, `mimi_name`,
    `tokenizer_name`); only those are looked for."""
    config = {
        "moshi_name": "model.safetensors",
        "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
        "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
    }
    names = ("model.safetensors", config["mimi_name"], config["tokenizer_name"])
    files = {n: dummy(tmp_path, n, n) for n in names}
    files["config.json"] = dummy(tmp_path, "stt.json", json.dumps(config))
    snap = add_repo(cache, "kyutai/stt-1b-en_fr", files)
    found = resolve("kyutai/stt-1b-en_fr")
    assert found.weights == [snap / "model.safetensors"] and found.config == config
    assert found.get(config["tokenizer_name"]) == snap / config["tokenizer_name"]
    assert resolve_mimi_files("kyutai/stt-1b-en_fr")[0] == snap / config["mimi_name"]


def test_a_partly_cached_repo_says_what_to_download(cache, tmp_path):
    add_repo(cache, "kyutai/partial", {"config.json": dummy(tmp_path, "c.json", "{}")})
    with pytest.raises(CheckpointError, match=r"in the local cache .*`hf download kyutai/partial`"):
        resolve("kyutai/partial")
    with pytest.raises(CheckpointError, match=r"`hf download nobody/nothing`.*HF_HUB_OFFLINE=1"):
        resolve("nobody/nothing")


def test_malformed_config_json_is_named(cache, tmp_path):
    add_repo(cache, "kyutai/bad", {"config.json": dummy(tmp_path, "bad.json", '{"dim": 1,')})
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        resolve("kyutai/bad")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match=f"{folder / 'config.json'} is not valid JSON"):
        resolve(folder)
    with pytest.raises(CheckpointError, match=f"{folder / 'config.json'} is not valid JSON"):
        resolve_mimi_files(folder)


def test_unreachable_hub_falls_back_to_the_cache_at_once(tmp_path, monkeypatch, caplog):
    """Online but no network: one quick attempt (said beforehand), then the local cache."""
    folder = tmp_path / "hub"
    files = {n: dummy(tmp_path, n, n) for n in ("model.q4.safetensors", KYUTAI_FILE, SPM)}
    snap = add_repo(folder, "kyutai/moshiko-mlx-q4", files)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    caplog.set_level(logging.INFO, logger=hub.log.name)
    start = time.perf_counter()
    assert resolve("kyutai/moshiko-mlx-q4").weights == [snap / "model.q4.safetensors"]
    assert time.perf_counter() - start < 5
    said = [r.getMessage() for r in caplog.records if r.name == hub.log.name]
    assert said == ["asking the hub which files kyutai/moshiko-mlx-q4 holds ..."]


def test_no_network_and_not_cached_is_quick_and_one_line(tmp_path):
    """`moshi-mlx-quantize kyutai/moshiko-pytorch-bf16 out` with no network: no retries, no page
    of warnings; the error names the download command and HF_HUB_OFFLINE=1."""
    env = {**hub_env(tmp_path / "hub", offline=False), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "quantize", "kyutai/moshiko-pytorch-bf16", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, **env},
    )  # fmt: skip
    assert time.perf_counter() - start < 20
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "`hf download kyutai/moshiko-pytorch-bf16`" in done.stderr
    assert "HF_HUB_OFFLINE=1" in done.stderr and "Retrying" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_moshi_mlx_default_model_from_the_cache(tiny_checkpoint, speech_wav, tmp_path):
    """`moshi-mlx run` with its default repo id, cached once: offline, and with the hub
    unreachable, it runs without a single hub file being asked for by name."""
    files = {p.name: p for p in tiny_checkpoint.iterdir() if p.is_file()}
    add_repo(tmp_path / "hub", "kyutai/moshiko-mlx-q4", files)
    for offline in (True, False):
        out = tmp_path / f"out-{offline}.wav"
        done = cli(
            "run", speech_wav, out, "-q", "--seed", "1", env=hub_env(tmp_path / "hub", offline)
        )
        assert done.returncode == 0, done.stderr
        data = json.loads(out.with_suffix(".json").read_text())
        assert data["checkpoint"] == "kyutai/moshiko-mlx-q4"
