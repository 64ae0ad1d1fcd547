"""Bad checkpoints give a clear CheckpointError: which file, which tensors, the likely cause."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from safetensors.numpy import load_file, save_file

import moshi_reference as R
from moshi_mlx import CheckpointError, LmConfig, load_model
from moshi_mlx.model.checkpoint import weights_layout


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    R.save_pytorch(R.make_kyutai_lm(R.TINY, seed=3), R.TINY, folder)
    return folder


def variant(good, tmp_path, edit) -> str:
    """A copy of the good checkpoint with its tensors edited; returns the weights file."""
    folder = tmp_path / "bad"
    shutil.copytree(good, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))
    return str(folder / "model.safetensors")


def test_good_checkpoint_loads(good):
    assert load_model(good) is not None and weights_layout(good) == "pytorch"


def test_missing_tensor(good, tmp_path):
    path = variant(good, tmp_path, lambda t: t.pop("depformer.layers.1.norm2.alpha"))
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert path in msg and "missing (1): depformer.layers.1.norm2.alpha" in msg
    assert "Kyutai PyTorch" in msg and "Likely cause" in msg


def test_unexpected_tensor(good, tmp_path):
    def add(t):
        t["transformer.layers.2.norm1.alpha"] = np.ones((1, 1, 64), np.float32)

    with pytest.raises(CheckpointError, match=r"unexpected \(1\): transformer.layers.2.norm1"):
        load_model(variant(good, tmp_path, add))


def test_config_of_another_model(good, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(good, folder)
    (folder / "config.json").write_text(json.dumps({**R.TINY, "num_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing \(\d+\): transformer.layers.2"):
        load_model(folder)


def test_wrong_shape(good, tmp_path):
    def shrink(t):
        t["text_linear.weight"] = t["text_linear.weight"][:, :32].copy()

    with pytest.raises(CheckpointError) as e:
        load_model(variant(good, tmp_path, shrink))
    assert "text_linear.weight: checkpoint (50, 32) vs model (50, 64)" in str(e.value)


def test_truncated_file(good, tmp_path):
    folder = tmp_path / "truncated"
    shutil.copytree(good, folder)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_model(folder)
    assert str(path) in str(e.value)


def test_unknown_format(tmp_path):
    save_file({"foo.weight": np.zeros((2, 2), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unknown checkpoint format.*foo.weight"):
        load_model(tmp_path / "model.safetensors")


def test_mimi_file_instead_of_moshi(tmp_path):
    save_file(
        {"encoder.model.0.conv.conv.weight": np.zeros((2, 1, 7), np.float32)},
        str(tmp_path / "tokenizer.safetensors"),
    )
    with pytest.raises(CheckpointError, match="Mimi"):
        load_model(tmp_path / "tokenizer.safetensors")


def test_bad_quantized_shapes(good, tmp_path):
    """A quantized layer whose packed width fits no bits / group size for this model."""
    ours = load_model(good)
    params = dict(tree_flatten(ours.parameters()))
    w, scales, biases = mx.quantize(params["text_linear.weight"][:40], group_size=32, bits=4)
    params.update(
        {"text_linear.weight": w, "text_linear.scales": scales, "text_linear.biases": biases}
    )
    folder = tmp_path / "q"
    folder.mkdir()
    mx.save_safetensors(str(folder / "model.safetensors"), params)
    (folder / "config.json").write_text(json.dumps(R.TINY))
    with pytest.raises(CheckpointError, match="quantized layer text_linear does not fit"):
        load_model(folder)


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="holds no Moshi weights"):
        load_model(tmp_path)


def test_bad_config_values():
    with pytest.raises(ValueError, match="expected 7 delays"):
        LmConfig.from_dict({**R.TINY, "delays": [0, 0, 1]})
    with pytest.raises(ValueError, match="schedule needs 3 entries"):
        LmConfig.from_dict({**R.TINY, "depformer_weights_per_step_schedule": [0, 1]})
