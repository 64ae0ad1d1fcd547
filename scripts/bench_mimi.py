"""`bench.py mimi`: full-size Mimi, 8 codebooks, ours (MLX) against Kyutai's PyTorch `moshi`.

Both models hold the same random weights (the reference's initialisation, saved in Kyutai's
layout and read by our loader). Reported: batch encode and decode of 10 s, and streaming
`encode_step` + `decode_step` per 80 ms frame (median over many frames).

Each implementation runs in its own child process of this one run, so each gets its own BLAS:
MLX with the BLAS its wheel bundles, MLX with Debian's OpenBLAS preloaded (Linux, when
installed), and PyTorch with its own (preloading OpenBLAS into PyTorch slows it down).
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

import numpy as np

FRAME = 1920
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=10.0, help="batch audio length (default 10)")
    p.add_argument("--frames", type=int, default=40, help="streaming frames timed (default 40)")
    p.add_argument("--num-quantizers", type=int, default=8, help="codebooks (default 8)")
    p.add_argument("--no-reference", action="store_true", help="skip the PyTorch reference")


def _timed(fn, repeats: int = 3) -> float:
    """Best of `repeats` wall times in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _stream_ms(encode_step, decode_step, audio: np.ndarray, frames: int) -> tuple[float, float]:
    """Median ms per frame of encode_step and of decode_step, after 5 warm-up frames."""
    enc, dec = [], []
    for i in range(frames + 5):
        start = (i * FRAME) % (audio.shape[-1] - FRAME)
        frame = audio[..., start : start + FRAME]
        t0 = time.perf_counter()
        codes = encode_step(frame)
        t1 = time.perf_counter()
        decode_step(codes)
        t2 = time.perf_counter()
        if i >= 5:
            enc.append(t1 - t0)
            dec.append(t2 - t1)
    return 1e3 * statistics.median(enc), 1e3 * statistics.median(dec)


def _measure_ours(folder: Path, audio: np.ndarray, n_q: int, frames: int) -> dict:
    import mlx.core as mx

    from mimi_mlx import load_mimi

    mimi = load_mimi(folder)
    codes = np.array(mimi.encode(audio, num_quantizers=n_q))

    def enc_step(frame):
        c = mimi.encode_step(frame, num_quantizers=n_q)
        mx.eval(c)
        return c

    encode = _timed(lambda: mx.eval(mimi.encode(audio, num_quantizers=n_q)))
    decode = _timed(lambda: mx.eval(mimi.decode(codes)))
    step = _stream_ms(enc_step, lambda c: mx.eval(mimi.decode_step(c)), audio, frames)
    return {"encode": encode, "decode": decode, "enc_step": step[0], "dec_step": step[1]}


def _measure_torch(folder: Path, audio: np.ndarray, n_q: int, frames: int) -> dict:
    import torch
    from moshi.models import loaders

    mimi = loaders.get_mimi(str(folder / "tokenizer-e351c8d8-checkpoint125.safetensors"))
    mimi.set_num_codebooks(n_q)
    x = torch.from_numpy(audio)
    with torch.no_grad():
        codes = mimi.encode(x)
        encode = _timed(lambda: mimi.encode(x))
        decode = _timed(lambda: mimi.decode(codes))
        with mimi.streaming(1):
            step = _stream_ms(
                lambda f: mimi.encode(torch.from_numpy(f)), mimi.decode, audio, frames
            )
    return {
        "encode": encode,
        "decode": decode,
        "enc_step": step[0],
        "dec_step": step[1],
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
    }


def _child(kind: str, folder: Path, args: argparse.Namespace, preload: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    cmd = [
        sys.executable,
        __file__,
        kind,
        str(folder),
        str(args.seconds),
        str(args.frames),
        str(args.num_quantizers),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _make_weights(folder: Path, n_q: int) -> None:
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = loaders.get_mimi(None, num_codebooks=n_q).eval()
    names = {"in_projs.0.weight": "in_proj_weight", "out_projs.0.weight": "out_proj.weight"}
    state = {}
    for k, v in ref.state_dict().items():
        for old, new in names.items():
            k = k.replace(old, new)
        state[k] = v.contiguous()
    save_file(state, str(folder / "tokenizer-e351c8d8-checkpoint125.safetensors"))


def _audio(seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(seconds * 24000) // FRAME * FRAME
    return (0.1 * rng.standard_normal((1, 1, n))).astype(np.float32)


def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp())
    _make_weights(folder, args.num_quantizers)
    rows = [("MLX (ours), the wheel's BLAS", _child("ours", folder, args, None))]
    if sys.platform == "linux" and Path(OPENBLAS).is_file():
        rows.append(("MLX (ours), OpenBLAS preloaded", _child("ours", folder, args, OPENBLAS)))
    if not args.no_reference:
        ref = _child("torch", folder, args, None)
        rows.append((f"PyTorch {ref['version']} ({ref['threads']} threads)", ref))

    n_q = args.num_quantizers
    print(
        f"Mimi full size, float32, {n_q} codebooks, {args.seconds:g} s batch, {args.frames} frames"
    )
    print(
        f"{'':34} {'encode':>9} {'decode':>9} {'enc step':>10} {'dec step':>10} "
        f"{'per frame':>10} {'vs PyTorch':>10}"
    )
    base = rows[-1][1] if not args.no_reference else None
    for name, r in rows:
        per_frame = r["enc_step"] + r["dec_step"]
        ratio = f"{per_frame / (base['enc_step'] + base['dec_step']):9.2f}x" if base else ""
        print(
            f"{name:34} {r['encode']:7.2f} s {r['decode']:7.2f} s {r['enc_step']:7.1f} ms"
            f" {r['dec_step']:7.1f} ms {per_frame:7.1f} ms {ratio:>10}"
        )
    best = min(r["enc_step"] + r["dec_step"] for name, r in rows if name.startswith("MLX"))
    print(f"best MLX streaming: {best:.1f} ms per 80 ms frame (real-time factor {80 / best:.2f})")
    return 0


if __name__ == "__main__":  # a child: measure one implementation, print JSON
    kind, folder, seconds, frames, n_q = sys.argv[1:6]
    audio = _audio(float(seconds))
    measure = _measure_ours if kind == "ours" else _measure_torch
    print(json.dumps(measure(Path(folder), audio, int(n_q), int(frames))))
