"""Float Moshi checkpoints in every source layout the converter reads, built once per session.

- `pytorch`: Kyutai's PyTorch repo layout (`kyutai/moshiko-pytorch-bf16`): their `LMModel`'s
  weights as released, plus Mimi and the SentencePiece model.
- `hf`: transformers' hub layout (`kmhf/hf-moshiko`) of the same weights, with a Mimi bundled as
  `audio_encoder.*` under the hub's names (a transformers `MimiModel` saved by `save_pretrained`).
- `mlx`: Kyutai's MLX bf16 repo layout (`kyutai/moshiko-mlx-bf16`), from `moshi_mlx.model.tiny`.

The configuration is Moshi's architecture at a tiny width where every layer's input width is a
multiple of 64, so q4 and q8 quantize every layer, as on the 7B model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import torch

import moshi_reference as R
from moshi_mlx.testing.tiny import make_tiny_checkpoint

# gated hidden widths: 2 * int(4.5 * 64) // 3 = 192 and 2 * 288 // 3 = 192
QCFG = {**R.TINY_MOSHI, "hidden_scale": 4.5, "depformer_dim": 64, "depformer_dim_feedforward": 288}
COMPANIONS = ("tokenizer-e351c8d8-checkpoint125.safetensors", "mimi_config.json")
TOKENIZER = "tokenizer_spm_32k_3.model"


@dataclass
class Sources:
    pytorch: Path
    hf: Path
    mlx: Path
    reference: object  # Kyutai's LMModel behind `pytorch` and `hf`
    hf_mimi: Path  # the transformers Mimi bundled in `hf`, as its own folder


_cache: list[Sources] = []  # one set per test session


def build_sources(root: Path, hf_mimi: Path) -> Sources:
    """The three source checkpoints, built under `root` on the session's first call.

    Args:
        hf_mimi: a transformers Mimi folder (`config.json` + `model.safetensors`, hub names).
    """
    if _cache:
        return _cache[0]
    mlx = make_tiny_checkpoint(root / "mlx", seed=5)
    model = R.make_kyutai_lm(QCFG, seed=7)
    pytorch = root / "pytorch"
    R.save_pytorch(model, QCFG, pytorch, dtype=torch.bfloat16)
    for name in (*COMPANIONS, TOKENIZER):
        shutil.copyfile(mlx / name, pytorch / name)
    config = {
        **QCFG,
        "moshi_name": "model.safetensors",
        "mimi_name": COMPANIONS[0],
        "mimi_config_name": COMPANIONS[1],
        "tokenizer_name": TOKENIZER,
    }
    (pytorch / "config.json").write_text(json.dumps(config))
    hf = root / "hf"
    hf.mkdir()
    # float32 here (the other sources are bfloat16): the converter's cast is exercised too
    tensors = {k: mx.array(v.float().numpy()) for k, v in R.hf_state(model, QCFG).items()}
    mimi = mx.load(str(hf_mimi / "model.safetensors"))
    tensors.update({f"audio_encoder.{k}": v for k, v in mimi.items()})
    mx.save_safetensors(str(hf / "model.safetensors"), tensors, metadata={"format": "pt"})
    hf_config = R.hf_config(QCFG).to_dict()
    hf_config["audio_encoder_config"] = json.loads((hf_mimi / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps(hf_config))
    _cache.append(Sources(pytorch, hf, mlx, model, hf_mimi))
    return _cache[0]
