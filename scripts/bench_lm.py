"""Benchmark Moshi's language model: load time, ms per streaming step, peak resident memory.

    python scripts/bench_lm.py                      # the full 7B config, every precision that fits
    python scripts/bench_lm.py --layers 2 --modes q4,q8 --steps 5
    python scripts/bench_lm.py --model hibiki-zero --estimate   # memory from the shapes only
    python scripts/bench_lm.py --model hibiki-zero --layers 4 --modes q4   # speed (fewer layers)

`--estimate` runs nothing: the weights of each precision (the parameters' shapes after MLX's
`nn.quantize`, as Kyutai's files hold them), the temporal transformer's KV cache over its whole
context (grouped-query heads counted as such), the depth decoder's and Mimi's, against a 16 GB
Mac (Metal's recommended working set there is about 2/3 of it: 10.7 GB).

Random weights in Kyutai's MLX layout are written once per (config, precision) to `--workdir`
(built one tensor at a time: the full-precision 7B never sits in memory), then each precision is
measured in a fresh process so its peak resident memory is its own. Precisions: `fp32` and
`bf16` (float weights, float32 or bfloat16 activations), `q8` (8 bits, group 64) and `q4`
(4 bits, group 32), quantized with `nn.quantize` as Kyutai's MLX files are, with the backend's
activations (`lm_compute_dtype()`: float32 on the CPU, bfloat16 on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = ("fp32", "bf16", "q8", "q4")
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "q8": 1.0 + 4 / 64, "q4": 0.5 + 4 / 32}


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--model",
        choices=tuple(CONFIGS),
        default="moshi",
        help="the architecture: moshi (Kyutai's 7B) or hibiki-zero (3B, 28 layers)",
    )
    parser.add_argument("--layers", type=int, default=None, help="temporal layers (7B: 32)")
    parser.add_argument(
        "--estimate", action="store_true", help="memory from the shapes only (nothing runs)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated precisions")
    parser.add_argument("--steps", type=int, default=5, help="timed streaming steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument(
        "--workdir",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "moshi-bench"),
        help="where the random checkpoints are written (and reused)",
    )
    parser.add_argument("--force", action="store_true", help="run precisions that may not fit")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    return parser


def _hibiki_zero():
    from moshi_mlx import LmConfig
    from moshi_mlx.model.hibiki_zero import HIBIKI_ZERO_3B

    return LmConfig.from_dict(HIBIKI_ZERO_3B)


def _moshi():
    from moshi_mlx import LmConfig

    return LmConfig()  # Kyutai's 7B Moshiko


CONFIGS = {"moshi": _moshi, "hibiki-zero": _hibiki_zero}


def _config(layers: int | None, model: str = "moshi"):
    cfg = CONFIGS[model]()
    if layers is not None:
        cfg.num_layers = layers
    return cfg


def _num_params(cfg) -> int:
    from mlx.utils import tree_flatten

    from moshi_mlx import Lm

    return sum(v.size for _, v in tree_flatten(Lm(cfg).parameters()))  # lazy: nothing computed


def _checkpoint(cfg, mode: str, workdir: Path) -> Path:
    """Write (once) random weights for `mode` in Kyutai's MLX layout, one tensor at a time."""
    from moshi_mlx.testing.tiny import save_random_lm

    precision = "q8" if mode == "q8" else "q4" if mode == "q4" else "bf16"
    folder = workdir / f"{_name(cfg)}-{cfg.num_layers}l-{precision}"
    bits = {"q8": 8, "q4": 4}.get(precision)
    if not (folder / "config.json").is_file():
        weights = save_random_lm(cfg, folder, seed=0, quantize_bits=bits)
        config = {**cfg.to_dict(), "moshi_name": weights.name}
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _write_in_subprocess(args: argparse.Namespace, mode: str) -> Path:
    """Write the random checkpoint from a child process, so this one stays small."""
    cmd = [sys.executable, __file__, "--write", mode, "--workdir", str(args.workdir)]
    cmd += ["--model", args.model]
    if args.layers is not None:
        cmd += ["--layers", str(args.layers)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"writing the {mode} checkpoint failed:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _worker(args: argparse.Namespace) -> None:
    """Measure one precision in this process; print one JSON line."""
    import mlx.core as mx

    from mimi_mlx.nn.backend import lm_compute_dtype
    from moshi_mlx import MoshiGenerator, load_model

    mode = args.worker
    folder = Path(args.workdir) / args.checkpoint
    # fp32 / bf16: float weights in that dtype; q8 / q4: the backend's activations (as the apps)
    dtype = {"fp32": mx.float32, "bf16": mx.bfloat16}.get(mode, lm_compute_dtype())
    start = time.perf_counter()
    model = load_model(folder, dtype=dtype)
    load_s = time.perf_counter() - start
    gen = MoshiGenerator(model, seed=0)
    user = mx.zeros((1, model.cfg.num_user_codebooks), dtype=mx.int32)
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        text, audio = gen.step(user)
        mx.eval(text, audio if audio is not None else text)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    peak_rss = _peak_rss()
    print(
        json.dumps(
            {
                "mode": mode,
                "dtype": str(dtype).split(".")[-1],
                "load_s": load_s,
                "ms_per_step": 1000 * sum(times) / len(times),
                "peak_rss_gb": peak_rss / 1e9,
                "peak_mlx_gb": mx.get_peak_memory() / 1e9,
            }
        )
    )


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM: reset by exec, unlike ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes


def _available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return float("inf")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by `args` (see `configure_parser`); returns an exit status."""
    if args.write:
        print(_checkpoint(_config(args.layers, args.model), args.write, Path(args.workdir)))
    elif args.worker:
        _worker(args)
    elif args.estimate:
        estimate(_config(args.layers, args.model))
    else:
        measure(args)
    return 0


def _name(cfg) -> str:
    from moshi_mlx.model.hibiki_zero import is_hibiki_zero

    return "hibiki-zero" if is_hibiki_zero(cfg) else "moshi"


MAC_16GB_WORKING_SET = 16e9 * 2 / 3  # Metal's recommended working set on a 16 GB Mac


def weights_gb(cfg, mode: str) -> float:
    """The language model's weights in `mode`, from the parameters' shapes (nothing computed):
    q8 / q4 as MLX's `nn.quantize` packs them (group 64 / 32, bf16 scales and biases)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from moshi_mlx import Lm
    from moshi_mlx.testing.tiny import QUANTIZATION

    lm = Lm(cfg)  # lazy random weights
    bits = {"q8": 8, "q4": 4}.get(mode)
    if bits is not None:
        nn.quantize(lm, group_size=QUANTIZATION[bits], bits=bits)
    size = {"fp32": 4, "bf16": 2, "q8": 2, "q4": 2}[mode]  # float tensors: scales, norms
    total = 0
    for _, v in tree_flatten(lm.parameters()):
        total += v.nbytes if v.dtype == mx.uint32 else v.size * size
    return total / 1e9


def _mimi_params() -> int:
    from mlx.utils import tree_flatten

    from mimi_mlx.config import MimiConfig
    from mimi_mlx.model import Mimi

    return sum(v.size for _, v in tree_flatten(Mimi(MimiConfig()).parameters()))  # lazy


def estimate(cfg) -> list[dict]:
    """Memory at the real size from the shapes: weights per precision + caches + Mimi."""
    from moshi_mlx.system.memory import kv_cache_bytes

    params = _num_params(cfg)
    t = cfg.transformer_config()
    print(
        f"{_name(cfg)}: {cfg.num_layers} temporal layers (dim {cfg.dim}, {t.num_heads} heads, "
        f"{t.num_heads // t.kv_repeat} key/value heads), {params / 1e9:.2f} G parameters, "
        f"context {t.context}"
    )
    mimi_gb = _mimi_params() * 4 / 1e9  # Mimi computes in float32
    rows = []
    for mode in MODES:
        act = 4 if mode == "fp32" else 2  # the apps on Metal: bfloat16 activations
        kv = kv_cache_bytes(cfg, act) / 1e9
        d = cfg.depformer_config(0)
        dep_kv = 2 * d.num_layers * cfg.dep_q * d.num_heads * d.head_dim * act / 1e9
        w = weights_gb(cfg, mode)
        total = w + kv + dep_kv + mimi_gb
        fits = total * 1.15 < MAC_16GB_WORKING_SET / 1e9  # (memory.MARGIN: activations)
        rows.append({"mode": mode, "weights_gb": w, "kv_gb": kv, "total_gb": total, "fits": fits})
        print(
            f"{mode:>5}: weights {w:5.2f} GB + KV cache {kv:4.2f} GB ({t.context} steps, "
            f"{'float32' if act == 4 else 'bfloat16'}) + depth decoder {dep_kv * 1e3:.1f} MB "
            f"+ Mimi {mimi_gb:.2f} GB = {total:5.2f} GB: "
            + ("fits" if fits else "does not fit")
            + f" a 16 GB Mac ({MAC_16GB_WORKING_SET / 1e9:.1f} GB for Metal, with 15% slack)"
        )
    return rows


def measure(args: argparse.Namespace) -> list[dict]:
    """Measure each requested precision in its own process; print and return the rows."""
    from moshi_mlx.system.memory import kv_cache_bytes

    cfg = _config(args.layers, args.model)
    params = _num_params(cfg)
    workdir = Path(args.workdir)
    print(f"{_name(cfg)} LM: {cfg.num_layers} temporal layers, {params / 1e9:.2f} G parameters")
    kv_gb = kv_cache_bytes(cfg, 4) / 1e9
    print(
        f"(the ring KV cache grows with the session up to {cfg.context} steps: +{kv_gb:.1f} GB "
        "in float32 at full context, not included below)"
    )
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in MODES:
            raise SystemExit(f"unknown precision {mode!r}; choose from {', '.join(MODES)}")
        need = params * BYTES_PER_PARAM[mode] / 1e9
        if need > 0.9 * _available_gb() and not args.force:
            print(f"{mode:>5}: skipped, needs about {need:.1f} GB ({_available_gb():.1f} GB free)")
            continue
        start = time.perf_counter()
        folder = _write_in_subprocess(args, mode)
        write_s = time.perf_counter() - start
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            mode,
            "--workdir",
            str(workdir),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--checkpoint",
            folder.name,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{mode:>5}: failed\n{out.stderr[-2000:]}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["write_s"] = write_s
        rows.append(row)
        print(
            f"{mode:>5} ({row['dtype']} activations): {row['ms_per_step']:9.1f} ms/step   "
            f"load {row['load_s']:6.1f} s   "
            f"peak RSS {row['peak_rss_gb']:5.2f} GB   (MLX peak {row['peak_mlx_gb']:.2f} GB)",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = configure_parser(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
