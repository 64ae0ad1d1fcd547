"""Benchmark Kyutai's STT 1B: real-time factor and peak memory, ours against Kyutai's PyTorch.

    python scripts/bench.py stt                       # the 1B config (16 layers)
    python scripts/bench.py stt --layers 4 --steps 10 # a smaller run

Each row runs in its own process (its peak resident memory is its own) on random weights:
ours in float32, q8 and q4 (Kyutai's MLX layout, written once to `--workdir`), then Kyutai's
PyTorch `LMModel` + `LMGen` in float32. A step is one 80 ms frame for every file of the batch:
Mimi's streaming encoder (full size, random weights) then the language model, with greedy text.
The real-time factor is the step time over 80 ms: below 1 is faster than real time; with a
batch of 8 files, throughput is 8 frames per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_lm import _peak_rss

MODES = ("fp32", "q8", "q4", "pytorch")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--layers", type=int, default=16, help="temporal layers (1B: 16)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated rows")
    parser.add_argument("--batches", default="1,8", help="files per step (comma-separated)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--workdir",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "stt-bench"),
        help="where the random checkpoints are written (and reused)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    return parser


def stt_config(layers: int) -> dict:
    """`kyutai/stt-1b-en_fr`'s config.json (the network keys and the STT keys)."""
    from moshi_mlx.testing.tiny import STT_KEYS

    return {
        "dim": 2048, "text_card": 8000, "existing_text_padding_id": 3, "n_q": 32, "dep_q": 0,
        "card": 2048, "num_heads": 16, "num_layers": layers, "hidden_scale": 4.125,
        "causal": True, "layer_scale": None, "context": 750, "max_period": 100000,
        "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
        "depformer_dim": 1024, "depformer_num_heads": 16, "depformer_num_layers": 6,
        "depformer_multi_linear": True, "depformer_pos_emb": "none",
        "depformer_weights_per_step": True, "extra_heads_num_heads": 4, "extra_heads_dim": 6,
        "delays": [0] * 33, **STT_KEYS,
    }  # fmt: skip


def _checkpoint(layers: int, mode: str, workdir: Path) -> Path:
    """Write (once) random weights in Kyutai's MLX layout, one tensor at a time."""
    from moshi_mlx.model.config import LmConfig
    from moshi_mlx.testing.tiny import save_random_lm

    folder = workdir / f"stt-{layers}l-{mode}"
    if not (folder / "config.json").is_file():
        cfg = stt_config(layers)
        bits = {"q8": 8, "q4": 4}.get(mode)
        weights = save_random_lm(LmConfig.from_dict(cfg), folder, seed=0, quantize_bits=bits)
        (folder / "config.json").write_text(json.dumps({**cfg, "moshi_name": weights.name}))
    return folder


def _ours(args: argparse.Namespace) -> dict:
    import mlx.core as mx
    import numpy as np

    from mimi_mlx import Mimi, MimiConfig
    from moshi_mlx import load_model
    from moshi_mlx.jobs.stt import SttStream

    folder = _checkpoint(args.layers, args.worker, Path(args.workdir))
    lm = load_model(folder, dtype=mx.float32)
    mimi = Mimi(MimiConfig())  # full size, random weights
    mx.eval(mimi.parameters())

    class NoText:  # the tokenizer only names pieces: random tokens need none
        def piece(self, token):
            return None

        def decode(self, tokens):
            return ""

    stream = SttStream(lm, mimi, NoText(), batch_size=args.batch)
    frames = 0.1 * np.random.default_rng(0).standard_normal((args.batch, 1920)).astype("f")
    return _time(args, lambda: stream.step(frames), stream.flush)


def _pytorch(args: argparse.Namespace) -> dict:
    import torch
    from moshi.models import loaders
    from moshi.models.lm import LMGen, LMModel

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from moshi_mlx.testing.tiny import STT_FILES, STT_KEYS

    cfg = {k: v for k, v in stt_config(args.layers).items() if k not in {**STT_KEYS, **STT_FILES}}
    lm = LMModel(device="cpu", dtype=torch.float32, **cfg).eval()
    mimi = loaders.get_mimi(None, device="cpu", num_codebooks=32).eval()
    gen = LMGen(lm, use_sampling=False, temp=0.0, temp_text=0.0)
    frames = 0.1 * torch.randn(args.batch, 1, 1920)
    with torch.no_grad(), mimi.streaming(args.batch), gen.streaming(args.batch):
        return _time(args, lambda: gen.step_with_extra_heads(mimi.encode(frames)), lambda: None)


def _time(args, step, finish) -> dict:
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        step()
        finish()  # (ours: wait for the result, as a transcriber reading every token does)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    ms = 1000 * sum(times) / len(times)
    return {"ms_per_step": ms, "rtf": ms / 80, "peak_rss_gb": _peak_rss() / 1e9}


def run(args: argparse.Namespace) -> int:
    if args.worker:
        row = _pytorch(args) if args.worker == "pytorch" else _ours(args)
        print(json.dumps(row))
        return 0
    print(f"Kyutai STT 1B config, {args.layers} layers; ms per step (one 80 ms frame per file)")
    batches = [int(b) for b in args.batches.split(",")]
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in MODES:
            raise SystemExit(f"unknown row {mode!r}; choose from {', '.join(MODES)}")
        if mode != "pytorch":  # written in a child process, so this one stays small
            _checkpoint_in_child(args, mode)
        base = None
        for batch in batches:
            cmd = [sys.executable, __file__, "--worker", mode, "--batch", str(batch),
                   "--layers", str(args.layers), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--workdir", args.workdir]  # fmt: skip
            env = dict(os.environ)
            if mode == "pytorch":  # PyTorch with its own BLAS, MLX with the preloaded one
                env.pop("LD_PRELOAD", None)
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(f"{mode:>8} batch {batch}: failed\n{out.stderr[-1500:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            per_file = r["ms_per_step"] / batch
            if batch == 1:
                base = per_file
            gain = f"  throughput x{base / per_file:.1f} of one file" if base and batch > 1 else ""
            print(
                f"{mode:>8} batch {batch}: {r['ms_per_step']:8.1f} ms/step  RTF {r['rtf']:.2f}"
                f"  peak RSS {r['peak_rss_gb']:.2f} GB{gain}",
                flush=True,
            )
    return 0


def _checkpoint_in_child(args: argparse.Namespace, mode: str) -> None:
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; from bench_stt import _checkpoint; "
        "from pathlib import Path; _checkpoint(int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))"
    )
    here = str(Path(__file__).resolve().parent)
    subprocess.run(
        [sys.executable, "-c", code, here, str(args.layers), mode, args.workdir], check=True
    )


def main(argv: list[str] | None = None) -> None:
    parser = configure_parser(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
