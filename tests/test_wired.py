"""Wired memory on Metal, with the device's facts mocked: the limit covers the model within the
recommended working set, comes back however the run ends, a model too big is announced before
loading; nothing happens on the CPU backend."""

from __future__ import annotations

import json
import struct

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from moshi_app import speech_wav, tiny_checkpoint

import moshi_reference as R
from mimi_mlx.config import MimiConfig
from mimi_mlx.model import Mimi
from mimi_mlx.nn.backend import LM_DTYPE_ENV
from moshi_mlx import Lm, LmConfig
from moshi_mlx.cli import main
from moshi_mlx.system import wired
from moshi_mlx.system.memory import estimate_bytes, kv_cache_bytes
from moshi_mlx.testing.tiny import QUANTIZATION

__all__ = ["speech_wav", "tiny_checkpoint"]  # fixtures used here

GB = 10**9
MAC_16GB = {"device_name": "Apple M2", "memory_size": 16 * 2**30, wired.WORKING_SET: 11453251584}


class Limits:
    """Stands in for `mx.set_wired_limit`: records the calls, returns the previous limit."""

    def __init__(self, current: int = 0):
        self.current, self.calls = current, []

    def __call__(self, limit: int) -> int:
        self.calls.append(limit)
        previous, self.current = self.current, limit
        return previous


def test_a_model_that_fits_is_wired_and_the_limit_restored():
    limits = Limits(current=123)
    with wired.wired_limit(5 * GB, MAC_16GB, limits) as limit:
        assert limit == 5 * GB and limits.current == 5 * GB
    assert limits.calls == [5 * GB, 123] and limits.current == 123


def test_a_model_too_big_gets_the_working_set_and_a_warning(capsys):
    limits = Limits()
    with wired.wired_limit(20 * GB, MAC_16GB, limits) as limit:
        assert limit == MAC_16GB[wired.WORKING_SET]
    assert limits.calls == [MAC_16GB[wired.WORKING_SET], 0]
    assert "only 11.5 GB stay resident" in capsys.readouterr().err


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_the_limit_comes_back_on_an_error_and_on_ctrl_c(error):
    limits = Limits(current=7)
    with pytest.raises(type(error)):
        with wired.wired_limit(GB, MAC_16GB, limits):
            raise error
    assert limits.calls == [GB, 7] and limits.current == 7


def test_nothing_happens_on_the_cpu(monkeypatch):
    assert wired.metal_info() is None  # this machine: MLX's CPU backend
    limits = Limits()
    monkeypatch.setattr(mx, "set_wired_limit", limits)
    with wired.wired_limit(5 * GB) as limit:
        assert limit == 0
    assert limits.calls == []
    assert wired.residency_warning(10**15, "anything") is None


def _header_only(path, model, floats: str) -> None:
    """A safetensors file whose header lists `model`'s tensors (no data: only headers are read),
    its float tensors stored as `floats` ("BF16" as Kyutai's MLX files, "F32" as Mimi's)."""
    header = {
        k: {
            "dtype": "U32" if v.dtype == mx.uint32 else floats,
            "shape": list(v.shape),
            "data_offsets": [0, 0],
        }
        for k, v in tree_flatten(model.parameters())
    }
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)


def test_the_kv_cache_counted_is_the_one_streaming_holds():
    """Grouped-query attention (`kv_repeat` 2, as Hibiki-Zero) caches half the heads: the size
    counted is the bytes the rings really hold once the context is full."""
    cfg = LmConfig.from_dict(R.VARIANT)
    assert cfg.kv_repeat == 2
    lm = Lm(cfg)
    for _ in range(cfg.context + 3):
        mx.eval(lm.transformer.step(mx.random.normal((1, 1, cfg.dim))))
    held = sum(c.keys.nbytes + c.values.nbytes for c in lm.transformer._caches)
    assert kv_cache_bytes(cfg, 4) == held
    assert wired.session_bytes(lm) == wired.arrays_bytes(lm) + held
    assert estimate_bytes([], cfg) == int(held * 1.15)  # MARGIN


@pytest.mark.parametrize(("bits", "fits"), [(8, False), (4, True)])
def test_7b_on_a_16_gb_mac_q8_is_announced_q4_fits(tmp_path, monkeypatch, bits, fits):
    """Kyutai's 7B in bfloat16 (as on Metal) with Mimi: q8 does not stay resident on a 16 GB Mac
    (about 11.6 GB with a full-context cache, against a working set of 11.45 GB: the warning
    suggests q4), q4 does (7.7 GB). The sizes come from the real shapes, lazily built."""
    monkeypatch.setenv(LM_DTYPE_ENV, "bfloat16")
    cfg = LmConfig()
    model = Lm(cfg)  # lazy: nothing is computed
    nn.quantize(model, group_size=QUANTIZATION[bits], bits=bits)
    weights, mimi = tmp_path / f"model.q{bits}.safetensors", tmp_path / "mimi.safetensors"
    _header_only(weights, model, "BF16")
    _header_only(mimi, Mimi(MimiConfig()), "F32")
    needed = estimate_bytes([weights], cfg, mimi)
    warning = wired.residency_warning(needed, f"kyutai/moshiko-mlx-q{bits}", MAC_16GB)
    if fits:
        assert warning is None, needed
    else:
        assert "more than the 11.5 GB this Mac keeps resident" in warning
        assert "kyutai/moshiko-mlx-q4" in warning


def test_run_announces_before_loading_and_wires_while_running(
    tiny_checkpoint, speech_wav, tmp_path, monkeypatch, capsys
):
    """`moshi-mlx run` on a (mocked) Mac whose working set is smaller than the model: the
    warning comes before loading, the limit is raised for the run and restored after it."""
    info = {**MAC_16GB, wired.WORKING_SET: 4 * 10**6}
    events = []
    monkeypatch.setattr(wired, "metal_info", lambda: info)
    warn = wired.residency_warning
    monkeypatch.setattr(wired, "residency_warning", lambda *a: events.append("warning") or warn(*a))
    limits = Limits(current=99)
    monkeypatch.setattr(mx, "set_wired_limit", lambda n: events.append("limit") or limits(n))
    from moshi_mlx.model import checkpoint

    load = checkpoint.load_files
    monkeypatch.setattr(
        checkpoint, "load_files", lambda *a, **k: events.append("load") or load(*a, **k)
    )
    out = tmp_path / "answer.wav"
    status = main(["run", str(speech_wav), str(out), "--checkpoint", str(tiny_checkpoint), "-q"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "this Mac keeps resident for the GPU" in err and "4 MB" in err
    assert events == ["warning", "load", "limit", "limit"]
    assert limits.calls == [4 * 10**6, 99]
