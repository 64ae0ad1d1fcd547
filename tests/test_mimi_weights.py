"""Checkpoint loading errors and input validation: clear messages, never deep tracebacks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mimi_mlx import CheckpointError, load_mimi
from mimi_mlx.constants import KYUTAI_FILE


@pytest.fixture
def kyutai_copy(tiny_refs, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_refs.kyutai_dir, folder)
    return folder


def edit(folder, fn):
    path = folder / KYUTAI_FILE
    tensors = load_file(str(path))
    fn(tensors)
    save_file(tensors, str(path))


def test_missing_and_unexpected_tensors_are_listed(kyutai_copy):
    def change(t):
        del t["decoder_transformer.transformer.layers.1.linear2.weight"]
        t["decoder_transformer.transformer.layers.9.linear2.weight"] = np.zeros(3, np.float32)

    edit(kyutai_copy, change)
    with pytest.raises(CheckpointError) as e:
        load_mimi(kyutai_copy)
    msg = str(e.value)
    assert "missing (1): decoder_transformer.transformer.layers.1.linear2.weight" in msg
    assert "unexpected (1): decoder_transformer.transformer.layers.9.linear2.weight" in msg
    assert KYUTAI_FILE in msg


def test_wrong_shape_is_named(kyutai_copy):
    def change(t):
        t["encoder.model.0.conv.conv.weight"] = np.zeros((5, 1, 7), np.float32)

    edit(kyutai_copy, change)
    with pytest.raises(CheckpointError, match=r"encoder.init_conv.weight: checkpoint \(5, 7, 1\)"):
        load_mimi(kyutai_copy)


def test_other_model_size_without_config_fails_clearly(tiny_refs, tmp_path):
    """The tiny weights read with the default (full-size) configuration."""
    shutil.copy(tiny_refs.kyutai_dir / KYUTAI_FILE, tmp_path / KYUTAI_FILE)
    with pytest.raises(CheckpointError, match="does not match the Mimi configuration"):
        load_mimi(tmp_path / KYUTAI_FILE)


def test_truncated_file(kyutai_copy):
    path = kyutai_copy / KYUTAI_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_mimi(kyutai_copy)


def test_unknown_format(tmp_path):
    save_file(
        {"model.layers.0.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "x.safetensors")
    )
    with pytest.raises(CheckpointError, match="not a Mimi checkpoint"):
        load_mimi(tmp_path / "x.safetensors")


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_mimi(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="holds no Mimi checkpoint"):
        load_mimi(tmp_path)


def test_hub_repo_offline_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="pass a local folder or file"):
        load_mimi("kyutai/mimi")


def test_hf_layout_without_config_json(tiny_refs, tmp_path):
    shutil.copy(tiny_refs.hf_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_mimi(tmp_path / "model.safetensors")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.encode(np.zeros((1, 2, 1920), np.float32)), "Downmix stereo"),
        (lambda m: m.encode(np.zeros((1, 1, 0), np.float32)), "empty"),
        (lambda m: m.encode(np.zeros((1, 1, 1920), np.int16)), "floating point"),
        (lambda m: m.encode(np.zeros((1, 1, 1920), np.float32), num_quantizers=0), "1..32"),
        (lambda m: m.encode(np.zeros((1, 1, 1920), np.float32), num_quantizers=33), "1..32"),
        (lambda m: m.encode_step(np.zeros((1, 1, 1000), np.float32)), "multiple of\n? ?1920"),
        (lambda m: m.decode(np.full((1, 8, 3), 64)), r"0\.\.63"),
        (lambda m: m.decode(np.full((1, 8, 3), -1)), r"0\.\.63"),
        (lambda m: m.decode(np.zeros((1, 33, 3), np.int32)), "codebooks"),
        (lambda m: m.decode(np.zeros((1, 8, 3), np.float32)), "integers"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_mimi, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_mimi)


def test_hub_repo_id_from_the_local_cache(tiny_refs, tiny_mimi, tmp_path, monkeypatch):
    """`Mimi.from_pretrained("kyutai/mimi")` through huggingface_hub, served from its cache."""
    import huggingface_hub.constants

    from mimi_mlx import Mimi

    repo = tmp_path / "models--kyutai--mimi"
    shutil.copytree(tiny_refs.hf_dir, repo / "snapshots" / ("1" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    mimi = Mimi.from_pretrained("kyutai/mimi")
    audio = tiny_refs.speech[None, None, : 4 * 1920]
    np.testing.assert_array_equal(np.array(mimi.encode(audio)), np.array(tiny_mimi.encode(audio)))
