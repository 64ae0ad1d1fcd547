"""`bench.py quantize`: converting Moshi 7B, and what each recipe gives up.

1. Conversion: random weights in Kyutai's PyTorch layout at the 7B's full size (15.4 GB of bf16,
   written tensor by tensor), converted with each recipe in a fresh process: wall time, peak
   resident memory (VmHWM) and output size. `--layers N` keeps N temporal layers (a quick run).
2. The accuracy report (KL and top-1 per stream, weight error per part) for the same recipes, on
   a model at the 7B's widths with `--report-layers` temporal layers (default 2): the float 7B
   does not fit this machine's memory in float32. Random weights: the figures compare recipes
   with each other; a trained model's logits are sharper and its KL values differ.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONVERT = """
import json, resource, sys, time
from pathlib import Path
from quantize import convert
start = time.perf_counter()
result = convert(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)
seconds = time.perf_counter() - start
status = Path("/proc/self/status")
if status.exists():  # Linux: this process image's peak (ru_maxrss includes the parent's)
    import re
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read_text()).group(1)) * 1024
else:  # macOS: bytes
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak": peak, "nbytes": result.nbytes,
                  "layers": len(result.plan.layers)}))
"""


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=32, help="temporal layers (default 32: 7B)")
    p.add_argument("--recipes", default="q4;q8;q4-mlp", help="';'-separated (default q4;q8;q4-mlp)")
    p.add_argument(
        "--report-layers", type=int, default=2, help="temporal layers of the report's model"
    )
    p.add_argument("--steps", type=int, default=16, help="report: time steps (default 16)")
    p.add_argument("--no-report", action="store_true", help="conversion figures only")
    p.add_argument("--workdir", type=Path, help="where to write (default: a temp folder)")
    p.add_argument("--json", type=Path, help="also save the figures here")


def _convert(source: Path, output: Path, recipe: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CONVERT, str(source), str(output), recipe],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"converting with {recipe} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _slug(recipe: str) -> str:
    return re.sub(r"[^\w.-]", "_", recipe)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def run(args: argparse.Namespace) -> int:
    from moshi_mlx import LmConfig
    from moshi_mlx.testing.synthetic import write_random_checkpoint
    from quantize import accuracy_report

    recipes = [r for r in args.recipes.split(";") if r]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_quantize_"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"conversion": {}, "report": None}
    try:
        cfg = LmConfig(num_layers=args.layers)
        source = work / f"moshi-{args.layers}l-pytorch"
        start = time.perf_counter()
        # rows of each matrix repeat every 256: as good as random for time and memory
        path = write_random_checkpoint(source, cfg, tile_rows=256, progress=True)
        written = time.perf_counter() - start
        print(f"source: {path} ({_gib(path.stat().st_size)}, written in {written:.0f} s)")
        print(f"\nconversion, {args.layers} temporal layers, Kyutai PyTorch layout, bf16")
        print(f"{'recipe':12}{'time':>10}{'peak memory':>14}{'output':>12}{'layers':>8}")
        for recipe in recipes:
            out = work / f"out-{_slug(recipe)}"
            r = _convert(source, out, recipe)
            figures["conversion"][recipe] = r
            print(
                f"{recipe:12}{r['seconds']:>9.1f}s{_gib(r['peak']):>14}"
                f"{_gib(r['nbytes']):>12}{r['layers']:>8}"
            )
            shutil.rmtree(out, ignore_errors=True)
        figures["source_bytes"] = path.stat().st_size
        shutil.rmtree(source, ignore_errors=True)

        if not args.no_report:
            small = LmConfig(num_layers=args.report_layers)
            source = work / "report-source"
            write_random_checkpoint(source, small, seed=1)  # fully random here
            outs = []
            for recipe in recipes:
                out = work / f"report-{_slug(recipe)}"
                _convert(source, out, recipe)
                outs.append(out)
            report = accuracy_report(source, outs, steps=args.steps, batch=1, names=recipes)
            print(f"\naccuracy report, 7B widths with {args.report_layers} temporal layers")
            print(report.table())
            figures["report"] = report.to_dict()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0
