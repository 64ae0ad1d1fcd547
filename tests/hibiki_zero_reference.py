"""Kyutai's `hibiki_zero` 0.0.4 file loop (`run.py: generate`) on a local copy of a checkpoint.

    python tests/hibiki_zero_reference.py CACHE OUT_DIR GEN_SECONDS IN.wav [IN.wav ...]

runs the package's own `generate` command function on the inputs (one batch, as it does) with
the repo `kyutai/hibiki-zero-3b-pytorch-bf16` taken from the hub cache CACHE (offline), and
saves what it decoded (`decode_outputs`' inputs: text tokens and audio codes) in
OUT_DIR/outputs.npz beside the files it writes itself (`0_<stem>_mono.wav`, `.txt`).

What is changed, and only that: the package refuses to run without CUDA (`torch.cuda.
is_available()` is made true, and `--device cpu` is passed), and it loads the language model
in float16 (bfloat16 with `--bf16`), which CPU matmuls round differently from ours: the model is
loaded in float32 instead (the checkpoint's weights are bfloat16 values: exact in both). Its
`client_utils` imports IPython for the notebook helpers (`display_audio`) only: the module is
run from its own source without that import line, so IPython is not needed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

REPO = "kyutai/hibiki-zero-3b-pytorch-bf16"
NOTEBOOK_IMPORT = "from IPython.display import Audio, display\n"


def load_client_utils() -> None:
    """`hibiki_zero.client_utils` from its source, minus the notebook-only IPython import."""
    spec = importlib.util.find_spec("hibiki_zero.client_utils")
    source = Path(spec.origin).read_text()
    if NOTEBOOK_IMPORT not in source:
        raise RuntimeError("hibiki_zero.client_utils changed: review this reference")
    module = types.ModuleType("hibiki_zero.client_utils")
    module.__file__ = spec.origin
    exec(compile(source.replace(NOTEBOOK_IMPORT, ""), spec.origin, "exec"), module.__dict__)
    sys.modules["hibiki_zero.client_utils"] = module


def main(cache: str, out_dir: str, seconds: str, *inputs: str) -> None:
    import os

    # NO_TORCH_COMPILE: Kyutai's own switch (eager PyTorch; torch.compile would ask the faked
    # CUDA for its random state)
    os.environ.update(HF_HUB_CACHE=cache, HF_HUB_OFFLINE="1", NO_TORCH_COMPILE="1")
    import numpy as np
    import torch
    from moshi.models import loaders

    load_client_utils()
    from hibiki_zero import run

    torch.cuda.is_available = lambda: True  # the package's CUDA gate; it runs on --device cpu
    get_moshi = loaders.CheckpointInfo.get_moshi

    def float32_moshi(self, device="cpu", dtype=None, **kwargs):
        return get_moshi(self, device=device, dtype=torch.float32, **kwargs)

    loaders.CheckpointInfo.get_moshi = float32_moshi
    decoded = {}
    decode_outputs = run.decode_outputs

    def recorded(batch_codes, batch_text_tokens, mimi, text_tokenizer):
        decoded["codes"] = batch_codes.numpy()
        decoded["text"] = batch_text_tokens.numpy()
        return decode_outputs(batch_codes, batch_text_tokens, mimi, text_tokenizer)

    run.decode_outputs = recorded
    run.generate(
        files=[Path(p) for p in inputs],
        gen_duration=float(seconds),
        out_dir=Path(out_dir),
        tag=None,
        repeats=1,
        hf_repo=REPO,
        config_path=None,
        tokenizer=None,
        model_weight=None,
        mimi_weight=None,
        lora_weight=None,
        fuse_lora=True,
        bf16=False,
        device="cpu",
        seed=42,
    )
    np.savez(Path(out_dir) / "outputs.npz", **decoded)


if __name__ == "__main__":
    main(*sys.argv[1:])
