"""Benchmark Kyutai's TTS (kyutai/tts-1.6b-en_fr's config, random weights): time to first audio,
real-time factor and peak memory, ours (float, q8, q4) against Kyutai's PyTorch `TTSModel`.

    python scripts/bench.py tts                       # the full config (16 layers; ~8 GB each)
    python scripts/bench.py tts --layers 2 --modes float,q8 --words 12

Random weights in Kyutai's PyTorch layout (bf16 values) with a real-size random Mimi are written
once to `--workdir`, quantized with `moshi-mlx-quantize`, then each implementation speaks the same
text in a fresh process (its peak resident memory is its own): Kyutai's `TTSModel.generate` with
Mimi decoding every frame as it comes (their streaming script's loop, float32 on CPU), and our
`TextToSpeech.audio`. Time to first audio counts from the start of generation (voices already
loaded) to the first decoded 80 ms frame; the real-time factor is generation time / audio time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("float", "q8", "q4", "kyutai")
WORDS = (
    "The quick brown fox jumps over the lazy dog while the sun sets slowly behind the hills "
    "and the birds sing their evening songs in the old oak trees near the river"
).split()


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--layers", type=int, default=16, help="temporal layers (real: 16)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES)
    )
    parser.add_argument("--words", type=int, default=12, help="words of text to speak")
    parser.add_argument("--num-codebooks", type=int, default=32, help="audio codebooks (8..32)")
    parser.add_argument(
        "--workdir",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "moshi-bench"),
        help="where the random checkpoints are written (and reused)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--write", default=None, help=argparse.SUPPRESS)
    return parser


def _text(words: int) -> str:
    return " ".join((WORDS * (1 + words // len(WORDS)))[:words]) + "."


def _peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e9


def _write(args: argparse.Namespace, mode: str) -> Path:
    """The float checkpoint (Kyutai's PyTorch layout) or its quantization, written once."""
    workdir = Path(args.workdir)
    float_dir = workdir / f"tts-{args.layers}l-float"
    if mode == "float":
        if not (float_dir / "config.json").is_file():
            _write_float(args.layers, float_dir)
        return float_dir
    out = workdir / f"tts-{args.layers}l-{mode}"
    if not (out / "config.json").is_file():
        from quantize.convert import convert

        convert(_write(args, "float"), out, mode, progress=False, force=True)
    return out


def _write_float(layers: int, folder: Path) -> None:
    import gc

    import mlx.core as mx
    import torch
    from mlx.utils import tree_flatten, tree_unflatten

    sys.path.insert(0, str(ROOT / "tests"))
    import moshi_reference as R
    from mimi_mlx.config import MimiConfig
    from mimi_mlx.export import save_mimi_kyutai
    from mimi_mlx.model import Mimi

    cfg = R.tts_1_6b(layers)
    model = R.make_kyutai_lm(cfg, seed=0, bf16_exact=True)
    R.save_pytorch(model, cfg, folder, dtype=torch.bfloat16)
    del model
    gc.collect()
    mx.random.seed(1)  # a real-size Mimi, random (fan-in scaled) weights
    mimi = Mimi(MimiConfig())
    weights = []
    for name, p in tree_flatten(mimi.parameters()):
        if p.ndim >= 2:
            fan_in = 1 if name.endswith(".embedding") else p.size // p.shape[0]
            weights.append((name, mx.random.normal(p.shape) * fan_in**-0.5))
    mimi.update(tree_unflatten(weights))
    from mimi_mlx.constants import KYUTAI_FILE
    from moshi_mlx.testing.tiny_parts import write_tiny_tokenizer

    save_mimi_kyutai(mimi, folder / KYUTAI_FILE)
    write_tiny_tokenizer(folder, R.TTS_TOKENIZER)
    config = json.loads((folder / "config.json").read_text())
    config.update(mimi_name=KYUTAI_FILE, tokenizer_name=R.TTS_TOKENIZER)
    (folder / "config.json").write_text(json.dumps(config))
    voice = R.random_voices(512, 1, seed=2, length=125)[0]
    (folder / "voices").mkdir(exist_ok=True)
    mx.save_safetensors(
        str(folder / "voices" / "bench.safetensors"), {"speaker_wavs": mx.array(voice)}
    )


def _ours(args: argparse.Namespace, folder: Path) -> dict:
    from moshi_mlx import load_checkpoint
    from moshi_mlx.jobs.tts import TextToSpeech, TtsSettings, load_voice

    start = time.perf_counter()
    tts = TextToSpeech(load_checkpoint(folder))
    load_s = time.perf_counter() - start
    voice = load_voice(folder.parent / f"tts-{args.layers}l-float/voices/bench.safetensors", tts)
    settings = TtsSettings(seed=0, num_codebooks=args.num_codebooks)
    start = time.perf_counter()
    first, frames = None, 0
    for _ in tts.audio(_text(args.words), [voice], settings):
        frames += 1
        first = first or time.perf_counter() - start
    return {
        "load_s": load_s,
        "first_s": first,
        "gen_s": time.perf_counter() - start,
        "frames": frames,
    }


def _kyutai(args: argparse.Namespace, folder: Path) -> dict:
    import sentencepiece
    import torch
    from moshi.models import loaders
    from moshi.models.tts import StateMachine, TokenIds, TTSModel
    from moshi.utils.compile import no_compile

    config = json.loads((folder / "config.json").read_text())
    start = time.perf_counter()
    lm_kwargs = dict(config)
    for key in ("moshi_name", "mimi_name", "tokenizer_name", "model_type", "tts_config",
                "model_id", "lm_gen_config", "mimi_config_name"):  # fmt: skip
        lm_kwargs.pop(key, None)
    lm = loaders.get_moshi_lm(
        folder / "model.safetensors", lm_kwargs, device="cpu", dtype=torch.float32
    )
    from safetensors.torch import load_file

    mimi = loaders.get_mimi(None, device="cpu")  # our writer stores no `_initialized` flags
    missing, _ = mimi.load_state_dict(load_file(folder / config["mimi_name"]), strict=False)
    assert all(k.endswith("_initialized") for k in missing), missing[:3]
    for name, buffer in mimi.named_buffers():
        if name.endswith("_initialized"):
            buffer.fill_(1)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / config["tokenizer_name"]))
    load_s = time.perf_counter() - start
    machine = StateMachine(TokenIds(lm.text_card + 1), second_stream_ahead=2, max_padding=8)
    tts = TTSModel(
        lm=lm, mimi=mimi, tokenizer=sp, voice_suffix="", voice_repo="", machine=machine,
        delay_steps=int(config["tts_config"]["audio_delay"] * 12.5), temp=0.6,
        n_q=args.num_codebooks,
    )  # fmt: skip
    mimi.set_num_codebooks(args.num_codebooks)
    entries = tts.prepare_script([_text(args.words)], padding_between=1)
    attributes = tts.make_condition_attributes(
        [folder / "voices" / "bench.safetensors"], cfg_coef=2.0
    )
    times: dict = {"first": None, "frames": 0}
    start = time.perf_counter()

    def on_frame(frame):
        if (frame != -1).all():
            mimi.decode(frame[:, 1:, :])
            times["frames"] += 1
            times["first"] = times["first"] or time.perf_counter() - start

    with torch.no_grad(), no_compile(), mimi.streaming(1):
        tts.generate([entries], [attributes], on_frame=on_frame)
    gen_s = time.perf_counter() - start
    return {"load_s": load_s, "first_s": times["first"], "gen_s": gen_s, "frames": times["frames"]}


def _worker(args: argparse.Namespace) -> None:
    folder = (
        Path(args.workdir)
        / f"tts-{args.layers}l-{'float' if args.worker == 'kyutai' else args.worker}"
    )
    row = _kyutai(args, folder) if args.worker == "kyutai" else _ours(args, folder)
    print(json.dumps({"mode": args.worker, **row, "peak_rss_gb": _peak_rss_gb()}))


def _child(args: argparse.Namespace, flag: str, mode: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, __file__, flag, mode, "--workdir", str(args.workdir)]
    cmd += ["--layers", str(args.layers), "--words", str(args.words)]
    cmd += ["--num-codebooks", str(args.num_codebooks)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def measure(args: argparse.Namespace) -> list[dict]:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    print(
        f"Kyutai TTS config, {args.layers} temporal layers, {args.num_codebooks} codebooks, "
        f"random weights; text of {args.words} words"
    )
    rows = []
    for mode in modes:
        out = _child(args, "--write", "float" if mode == "kyutai" else mode)
        if out.returncode != 0:
            print(f"{mode:>7}: writing the checkpoint failed\n{out.stderr[-2000:]}")
            continue
        out = _child(args, "--worker", mode)
        if out.returncode != 0:
            print(f"{mode:>7}: failed\n{out.stderr[-2000:]}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        audio_s = row["frames"] * 0.08
        row["rtf"] = row["gen_s"] / audio_s if audio_s else float("nan")
        rows.append(row)
        name = "PyTorch" if mode == "kyutai" else f"ours {mode}"
        print(
            f"{name:>12}: first audio {row['first_s']:6.2f} s   real-time factor {row['rtf']:5.2f}"
            f"   ({audio_s:.1f} s of audio in {row['gen_s']:.1f} s)   peak RSS "
            f"{row['peak_rss_gb']:5.2f} GB   load {row['load_s']:.1f} s",
            flush=True,
        )
    return rows


def run(args: argparse.Namespace) -> int:
    if args.write:
        print(_write(args, args.write))
    elif args.worker:
        _worker(args)
    else:
        measure(args)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = configure_parser(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
