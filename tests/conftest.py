"""Shared fixtures: reference Mimi models with bug-catching random weights, in both layouts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from live_audio_report import pytest_terminal_summary  # noqa: F401  (a hook: loud skips)

import mimi_reference as R


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_each_module():
    """Give back what a module's models held: MLX keeps freed buffers in its cache, and the
    suite's peak memory would otherwise be the sum of the modules' (CI has 12 GB)."""
    yield
    import gc

    import mlx.core as mx

    gc.collect()
    mx.clear_cache()


@dataclass
class MimiRefs:
    """One set of random weights in Kyutai's model, transformers' model and ours (both loaders)."""

    config: dict
    kyutai: object  # moshi.models.compression.MimiModel
    hf: object  # transformers.MimiModel
    kyutai_dir: Path
    hf_dir: Path
    speech: np.ndarray  # float32 at 24 kHz


def _build(tmp: Path, config: dict, seed: int, seconds: float) -> MimiRefs:
    audio = R.speech(seconds, tmp / "speech.wav")
    kyutai = R.make_kyutai_mimi(config, seed, audio)
    kyutai_dir = tmp / "kyutai"
    R.save_kyutai(kyutai, config, kyutai_dir, with_config=config is not R.full_config())
    hf = R.make_hf_mimi(kyutai, config, tmp / "hf")
    return MimiRefs(config, kyutai, hf, kyutai_dir, tmp / "hf", audio)


@pytest.fixture(scope="session")
def tiny_refs(tmp_path_factory) -> MimiRefs:
    return _build(tmp_path_factory.mktemp("tiny_mimi"), R.TINY, seed=0, seconds=4.0)


@pytest.fixture(scope="session")
def full_refs(tmp_path_factory) -> MimiRefs:
    return _build(tmp_path_factory.mktemp("full_mimi"), R.full_config(), seed=1, seconds=4.0)


@pytest.fixture(scope="session")
def tiny_mimi(tiny_refs):
    from mimi_mlx import load_mimi

    return load_mimi(tiny_refs.kyutai_dir)
