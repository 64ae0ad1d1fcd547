"""One 80 ms step of Moshi's language model: ours against Kyutai's `moshi_mlx` 0.3.0, in one run.

    python scripts/bench.py step                    # 7B layer counts at narrow widths, q4
    python scripts/bench.py step --precision float --dtype bfloat16 --rounds 3
    python scripts/bench.py step --no-kyutai        # ours only (compiled and not)

The model has the 7B's layer counts (32 temporal, 6 depth-decoder layers, 8 generated codebooks,
vocabularies 32000 and 2048) at narrow widths, where the work a step sends to the device, not the
arithmetic, sets its time. Random weights are written once in Kyutai's MLX layout and both
implementations load that same file, each in its own process, alternating `--rounds` times
(medians of each process's median). Each row: ms per step (build, evaluate, read the tokens back
as the apps do), the host time to build the step's graph, and the graph's node count.

Kyutai's package has the same import name as ours: it lives in its own virtualenv,
`.venv-kyutai/` at the repository root (created when missing: `python -m venv
--system-site-packages`, sharing this MLX, then `pip install --no-deps moshi_mlx==0.3.0`; on a
machine without network pass `--kyutai-wheel` with the downloaded wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KYUTAI_VERSION = "0.3.0"
PRECISIONS = {"float": 0, "q8": 8, "q4": 4}  # weights: bits (0: float, in the activation dtype)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="q4",
        help="weights: float, q8 or q4 (default q4, the app's)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="activations (default: the backend's, bfloat16 on a GPU)",
    )
    parser.add_argument("--dim", type=int, default=256, help="temporal width (7B: 4096)")
    parser.add_argument("--depformer-dim", type=int, default=128, help="depth width (7B: 1024)")
    parser.add_argument("--layers", type=int, default=32, help="temporal layers (7B: 32)")
    parser.add_argument("--depformer-layers", type=int, default=6, help="depth layers (7B: 6)")
    parser.add_argument(
        "--sampling",
        choices=["app", "topk"],
        default="topk",
        help="topk (default): both sample as ours (top-k 25 text, 250 audio); "
        "app: Kyutai's as its app does (top-p 0.95, a sort of each vocabulary)",
    )
    parser.add_argument(
        "--full-context",
        action="store_true",
        help="both rings full, as after a long session (ours: 3000 steps, Kyutai's: 4096, "
        "its max_seq_len); by default both start empty and grow",
    )
    parser.add_argument("--steps", type=int, default=30, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="processes per implementation")
    parser.add_argument("--no-kyutai", action="store_true", help="ours only, compiled and not")
    parser.add_argument(
        "--kyutai-venv",
        default=str(REPO / ".venv-kyutai"),
        metavar="DIR",
        help="virtualenv holding Kyutai's moshi_mlx (created when missing)",
    )
    parser.add_argument(
        "--kyutai-wheel",
        default=None,
        metavar="WHL",
        help="install Kyutai's moshi_mlx from this wheel (offline machines)",
    )
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "moshi-bench"))
    parser.add_argument("--worker", nargs=6, default=None, help=argparse.SUPPRESS)
    return parser  # fmt: skip


def model_config(args: argparse.Namespace) -> dict:
    """Kyutai's config.json keys for the 7B's structure at the requested widths."""
    head = 32  # head width of the narrow models (7B: 128 temporal, 64 depth)
    return {
        "dim": args.dim, "num_heads": max(1, args.dim // head), "num_layers": args.layers,
        "hidden_scale": 4.125, "text_card": 32000, "existing_text_padding_id": 3,
        "card": 2048, "n_q": 16, "dep_q": 8, "delays": [0] + ([0] + [1] * 7) * 2,
        "context": 3000, "max_period": 10000, "causal": True, "layer_scale": None,
        "gating": "silu", "norm": "rms_norm_f32", "positional_embedding": "rope",
        "depformer_dim": args.depformer_dim,
        "depformer_num_heads": max(1, args.depformer_dim // head),
        "depformer_num_layers": args.depformer_layers,
        "depformer_dim_feedforward": 3 * args.depformer_dim,  # gated hidden 2 x dim
        "depformer_causal": True, "depformer_layer_scale": None, "depformer_context": 8,
        "depformer_max_period": 10000, "depformer_gating": "silu", "depformer_pos_emb": "none",
        "depformer_multi_linear": True, "depformer_weights_per_step": True,
    }  # fmt: skip


def _checkpoint(args: argparse.Namespace, cfg: dict) -> Path:
    """Random weights in Kyutai's MLX layout, written once per configuration and precision."""
    from moshi_mlx import LmConfig
    from moshi_mlx.testing.tiny import save_random_lm

    bits = PRECISIONS[args.precision] or None
    tag = f"step-{args.dim}-{args.depformer_dim}-{args.layers}-{args.depformer_layers}"
    folder = Path(args.workdir) / f"{tag}-{f'q{bits}' if bits else 'float'}"
    name = f"model.q{bits}.safetensors" if bits else "model.safetensors"
    if not (folder / "config.json").is_file():
        save_random_lm(LmConfig.from_dict(cfg), folder, seed=0, quantize_bits=bits)
        (folder / "config.json").write_text(json.dumps({**cfg, "moshi_name": name}))
    return folder / name


def _count_nodes(*arrays) -> int:
    """Operations in the lazy graph of `arrays` (MLX's DOT export, one label an operation)."""
    import mlx.core as mx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "graph.dot")
        mx.export_to_dot(path, *arrays)
        with open(path) as f:
            return sum('label ="' in line for line in f)


def _worker(
    folder: str, dtype_name: str, steps: int, warmup: int, compiled: str, full: bool
) -> None:
    """Measure ours in this process; print one JSON line."""
    os.environ["MOSHI_MLX_COMPILE"] = compiled
    import mlx.core as mx
    import numpy as np

    from mimi_mlx.nn import kv_cache
    from moshi_mlx import MoshiGenerator, load_model

    if full:  # the ring at its steady-state size from the first step
        kv_cache.GROW_BLOCK = 1 << 30

    model = load_model(folder, dtype={"float32": mx.float32, "bfloat16": mx.bfloat16}[dtype_name])
    gen = MoshiGenerator(model, seed=0)  # Kyutai's sampling defaults
    user = mx.zeros((1, model.cfg.num_user_codebooks), dtype=mx.int32)

    def frame() -> tuple[float, float]:
        start = time.perf_counter()
        text, audio = gen.step(user)
        built = time.perf_counter()
        int(text[0].item())  # as the pipeline: one host sync a frame
        if audio is not None:
            np.array(audio)
        return time.perf_counter() - start, built - start

    for _ in range(warmup):
        frame()
    async_eval = mx.async_eval
    mx.async_eval = lambda *a: None  # steps built but not started: their graph and build time
    builds = []
    for _ in range(3):
        start = time.perf_counter()
        text, audio = gen.step(user)
        builds.append(time.perf_counter() - start)
        nodes = _count_nodes(text, audio)
        mx.eval(text, audio)
    mx.async_eval = async_eval
    times = [frame()[0] for _ in range(steps)]
    print(json.dumps({
        "impl": "ours" + (" (not compiled)" if compiled == "0" else ""),
        "device": str(mx.default_device()), "dtype": dtype_name,
        "ms_per_step": 1000 * float(np.median(times)), "build_ms": 1000 * float(np.median(builds)),
        "nodes": nodes,
    }))  # fmt: skip


def kyutai_python(args: argparse.Namespace) -> Path:
    """The virtualenv's Python with Kyutai's moshi_mlx, creating the virtualenv when missing."""
    venv = Path(args.kyutai_venv)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.is_file():
        print(f"creating {venv} (Kyutai's moshi_mlx {KYUTAI_VERSION}, sharing this MLX) ...")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                       check=True)  # fmt: skip
    if _kyutai_version(python) != KYUTAI_VERSION:
        package = args.kyutai_wheel or f"moshi_mlx=={KYUTAI_VERSION}"
        out = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-deps", package],
            capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode != 0 or _kyutai_version(python) != KYUTAI_VERSION:
            raise SystemExit(
                f"could not install Kyutai's moshi_mlx {KYUTAI_VERSION} into {venv}: "
                f"{out.stderr.strip().splitlines()[-1:]} (offline? pass --kyutai-wheel, or "
                "--no-kyutai)"
            )
    return python


def _clean_env() -> dict:
    """This environment without our repository on the path (Kyutai's package has our name)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _kyutai_version(python: Path) -> str | None:
    code = "import moshi_mlx; print(moshi_mlx.__version__)"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                         env=_clean_env(), cwd=tempfile.gettempdir())  # fmt: skip
    return out.stdout.strip() if out.returncode == 0 else None


def _run_json(cmd: list[str], **kw) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by `args` (see `configure_parser`); returns an exit status."""
    if args.worker:
        folder, dtype_name, steps, warmup, compiled, full = args.worker
        _worker(folder, dtype_name, int(steps), int(warmup), compiled, full == "1")
        return 0
    import mlx.core as mx

    from mimi_mlx.nn.backend import device_description, lm_compute_dtype

    dtype_name = args.dtype or ("bfloat16" if lm_compute_dtype() == mx.bfloat16 else "float32")
    cfg = model_config(args)
    print(f"device {device_description()}")
    print(
        f"Moshi LM step: {args.layers} temporal layers x {args.dim}, {args.depformer_layers} "
        f"depth layers x {args.depformer_dim}, 8 codebooks; weights {args.precision}, "
        f"activations {dtype_name}; {args.steps} steps x {args.rounds} rounds; "
        f"Kyutai's sampling: {args.sampling}; rings: "
        f"{'full (3000 steps; Kyutai 4096)' if args.full_context else 'from empty (both)'}"
    )
    weights = _checkpoint(args, cfg)
    config_file = weights.parent / "config.json"
    ours = [sys.executable, str(Path(__file__).resolve()), "--worker", str(weights.parent),
            dtype_name, str(args.steps), str(args.warmup)]  # fmt: skip
    full = "1" if args.full_context else "0"
    impls = {"ours": ours + ["1", full]}
    if args.no_kyutai:
        impls["ours (not compiled)"] = ours + ["0", full]
    else:
        python = kyutai_python(args)
        bits = PRECISIONS[args.precision]
        impls[f"kyutai {KYUTAI_VERSION}"] = [
            str(python), str(Path(__file__).resolve().parent / "bench_step_kyutai.py"),
            str(config_file), str(weights), dtype_name, str(bits), str(args.steps),
            str(args.warmup), args.sampling, full,
        ]  # fmt: skip
    rows: dict[str, list[dict]] = {name: [] for name in impls}
    for _ in range(args.rounds):  # alternate, so both see the same machine load
        for name, cmd in impls.items():
            kyutai = name.startswith("kyutai")
            env = _clean_env() if kyutai else {**os.environ, "PYTHONPATH": str(REPO)}
            cwd = tempfile.gettempdir() if kyutai else str(REPO)
            rows[name].append(_run_json(cmd, env=env, cwd=cwd))
    summary = {}
    for name, runs in rows.items():
        ms = statistics.median(r["ms_per_step"] for r in runs)
        build = statistics.median(r["build_ms"] for r in runs)
        summary[name] = ms
        print(
            f"{name:>22}: {ms:7.1f} ms/step   graph build {build:5.1f} ms   "
            f"{runs[0]['nodes']:5d} graph nodes   ({runs[0]['device']}, {runs[0]['dtype']})"
        )
    first, *others = summary
    for other in others:
        print(f"{first} / {other}: {summary[first] / summary[other]:.2f}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = configure_parser(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
