"""`bench.py mimi`: full-size Mimi, 8 codebooks, ours (MLX) against Kyutai's PyTorch `moshi`.

Both models hold the same random weights (the reference's initialisation, saved in Kyutai's
layout and read by our loader). Reported: batch encode and decode of 10 s, and streaming
`encode_step` + `decode_step` per 80 ms frame (median over many frames).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

FRAME = 1920


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
        frame = audio[..., (i * FRAME) % (audio.shape[-1] - FRAME) :][..., :FRAME]
        t0 = time.perf_counter()
        codes = encode_step(frame)
        t1 = time.perf_counter()
        decode_step(codes)
        t2 = time.perf_counter()
        if i >= 5:
            enc.append(t1 - t0)
            dec.append(t2 - t1)
    return 1e3 * statistics.median(enc), 1e3 * statistics.median(dec)


def run(args: argparse.Namespace) -> int:
    import mlx.core as mx
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_file

    from mimi_mlx import load_mimi

    n_q = args.num_quantizers
    torch.manual_seed(0)
    ref = loaders.get_mimi(None, num_codebooks=n_q).eval()
    tmp = Path(tempfile.mkdtemp())
    state = {
        k.replace("in_projs.0.weight", "in_proj_weight").replace(
            "out_projs.0.weight", "out_proj.weight"
        ): v.contiguous()
        for k, v in ref.state_dict().items()
    }
    save_file(state, str(tmp / "tokenizer-e351c8d8-checkpoint125.safetensors"))
    t0 = time.perf_counter()
    ours = load_mimi(tmp)
    load_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    audio = 0.1 * rng.standard_normal((1, 1, int(args.seconds * 24000) // FRAME * FRAME))
    audio = audio.astype(np.float32)
    codes = np.array(ours.encode(audio, num_quantizers=n_q))

    rows = []

    def ours_encode():
        mx.eval(ours.encode(audio, num_quantizers=n_q))

    def ours_decode():
        mx.eval(ours.decode(codes))

    def ours_enc_step(frame):
        c = ours.encode_step(frame, num_quantizers=n_q)
        mx.eval(c)
        return c

    def ours_dec_step(c):
        mx.eval(ours.decode_step(c))

    ours.reset()
    rows.append(
        (
            "MLX (ours)",
            _timed(ours_encode),
            _timed(ours_decode),
            *_stream_ms(ours_enc_step, ours_dec_step, audio, args.frames),
        )
    )
    if not args.no_reference:
        x = torch.from_numpy(audio)
        tc = torch.from_numpy(codes).long()
        with torch.no_grad():
            enc_s = _timed(lambda: ref.encode(x))
            dec_s = _timed(lambda: ref.decode(tc))
            with ref.streaming(1):
                step = _stream_ms(
                    lambda f: ref.encode(torch.from_numpy(f)), ref.decode, audio, args.frames
                )
        rows.append(
            (
                f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)",
                enc_s,
                dec_s,
                *step,
            )
        )

    print(f"Mimi full size, {n_q} codebooks, MLX device {mx.default_device()}, load {load_s:.2f} s")
    print(
        f"{'':34} {'encode ' + str(args.seconds) + ' s':>14} {'decode':>10}"
        f" {'enc step':>10} {'dec step':>10} {'enc+dec/frame':>14}"
    )
    for name, enc_s, dec_s, enc_ms, dec_ms in rows:
        print(
            f"{name:34} {enc_s * 1e3:11.0f} ms {dec_s * 1e3:7.0f} ms {enc_ms:7.1f} ms"
            f" {dec_ms:7.1f} ms {enc_ms + dec_ms:11.1f} ms"
        )
    if len(rows) == 2:
        (_, a1, a2, a3, a4), (_, b1, b2, b3, b4) = rows
        print(
            f"{'ratio ours / PyTorch':34} {a1 / b1:13.2f}x {a2 / b2:9.2f}x {a3 / b3:9.2f}x"
            f" {a4 / b4:9.2f}x {(a3 + a4) / (b3 + b4):13.2f}x"
        )
    realtime = 80.0 / (rows[0][3] + rows[0][4])
    print(f"streaming real-time factor (ours): {realtime:.2f}x (>1 keeps up with 80 ms frames)")
    return 0
