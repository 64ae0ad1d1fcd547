"""One implementation of `bench.py step`: Kyutai's `moshi_mlx` 0.3.0, in its own virtualenv.

Run by `bench_step.py` with the virtualenv's Python, outside this repository (our package has the
same import name): it never imports our code. Kyutai's app path (their `local.py`): build `Lm`,
cast to the activation dtype, quantize, `load_weights`, `warmup`, then per frame
`LmGen.step(user)`, `text[0].item()` and `last_audio_tokens()`. Prints one JSON line.

    python bench_step_kyutai.py CONFIG.json WEIGHTS DTYPE BITS STEPS WARMUP SAMPLING FULL

SAMPLING `app`: their app's samplers (top-p 0.95, temperature 0.8, a sort of the whole
vocabulary); `topk`: ours (text top-k 25 at 0.7, audio top-k 250 at 0.8). FULL `1`: after
the warmup, every layer's ring is made full, as after a long session (Kyutai's holds
`max_seq_len` = 4096 steps and attends only the filled part before that).
"""

from __future__ import annotations

import json
import sys
import time


def _count_nodes(*arrays) -> int:
    import os
    import tempfile

    import mlx.core as mx

    fd, path = tempfile.mkstemp(suffix=".dot")
    os.close(fd)
    try:
        mx.export_to_dot(path, *arrays)
        with open(path) as f:
            return sum('label ="' in line for line in f)
    finally:
        os.unlink(path)


def main(argv: list[str]) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np

    import moshi_mlx
    from moshi_mlx import models, utils

    config, weights, dtype_name, bits, steps, warmup, sampling, full = argv
    bits, steps, warmup = int(bits), int(steps), int(warmup)
    if moshi_mlx.__version__ != "0.3.0":
        raise SystemExit(f"expected Kyutai's moshi_mlx 0.3.0, got {moshi_mlx.__version__}")
    dtype = {"bfloat16": mx.bfloat16, "float32": mx.float32}[dtype_name]
    with open(config) as f:
        cfg = models.LmConfig.from_config_dict(json.load(f))
    model = models.Lm(cfg)
    model.set_dtype(dtype)
    if bits:
        nn.quantize(model, bits=bits, group_size={8: 64, 4: 32}[bits])
    model.load_weights(weights, strict=True)
    model.warmup()
    gen = models.LmGen(
        model=model,
        max_steps=steps + warmup + 2,
        text_sampler=utils.Sampler(**({} if sampling == "app" else {"temp": 0.7, "top_k": 25})),
        audio_sampler=utils.Sampler(**({} if sampling == "app" else {"top_k": 250})),
        check=False,
    )
    user = mx.zeros((1, 8), dtype=mx.int32)

    def frame() -> None:
        text = gen.step(user)
        text[0].item()
        audio = gen.last_audio_tokens()
        if audio is not None:
            np.array(audio)

    for _ in range(warmup):
        frame()
    if full == "1":  # steady state: a full ring, every slot attended
        for layer_cache in model.transformer_cache:
            c = layer_cache.self_attn
            shape = (1, c.n_kv_heads, c.max_size, c.k_head_dim)
            c.keys, c.values = mx.zeros(shape, c.keys.dtype), mx.zeros(shape, c.values.dtype)
            c.offset = c._idx = c.max_size
    text = gen.step(user)  # lazy: the graph of one step (its host syncs already done)
    nodes = _count_nodes(text, gen.gen_sequence)
    mx.eval(text, gen.gen_sequence)
    times, build = [], []
    for _ in range(steps):
        start = time.perf_counter()
        text = gen.step(user)
        built = time.perf_counter()
        text[0].item()
        audio = gen.last_audio_tokens()
        if audio is not None:
            np.array(audio)
        times.append(time.perf_counter() - start)
        build.append(built - start)
    print(
        json.dumps(
            {
                "impl": f"kyutai moshi_mlx {moshi_mlx.__version__}",
                "device": str(mx.default_device()),
                "dtype": dtype_name,
                "sampling": sampling,
                "ms_per_step": 1000 * float(np.median(times)),
                "build_ms": 1000 * float(np.median(build)),
                "nodes": nodes,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
