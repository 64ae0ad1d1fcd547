"""Write a tiny random Moshi (or TTS) checkpoint folder in Kyutai's real repo layout.

    python scripts/make_tiny_checkpoint.py /tmp/tiny-moshi [--quantize 4|8] [--seed 0]
    python scripts/make_tiny_checkpoint.py /tmp/tiny-stt --kind stt   # Kyutai STT's layout
    python scripts/make_tiny_checkpoint.py /tmp/tiny-personaplex --kind personaplex
    python scripts/make_tiny_checkpoint.py /tmp/tiny-hibiki --kind hibiki
    python scripts/make_tiny_checkpoint.py /tmp/tiny-zero --kind hibiki-zero   # PyTorch layout
    python scripts/make_tiny_checkpoint.py /tmp/tiny-tts --kind tts   # + voices/tiny, voices/tiny2
    python scripts/make_tiny_checkpoint.py /tmp/tiny-llm --kind llm   # mlx-lm's format (Qwen2)
    python scripts/make_tiny_checkpoint.py /tmp/tiny-ft --kind lora   # a LoRA fine-tune of Moshi
    python scripts/make_tiny_checkpoint.py /tmp/tiny-pp-ft --kind personaplex --lora

The folder works wherever a Kyutai repo id does (`load_model`, `load_checkpoint`, the apps):
config.json, the language model (Kyutai MLX layout), Mimi, and a SentencePiece tokenizer. The
weights are random, so Moshi makes noise, on any machine, without downloading anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mimi_mlx.io.cli_support import OneLineParser, run_cli
from moshi_mlx.testing.tiny import KINDS, make_tiny_checkpoint

TINY_VOICES = ("NATF0", "NATM0")  # PersonaPlex presets of the tiny checkpoint (random voices)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("folder", help="output folder (created if needed; must be empty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument(
        "--quantize",
        type=int,
        choices=(4, 8),
        default=None,
        help="write model.q4 (group 32) or model.q8 (group 64) instead of float weights",
    )
    parser.add_argument(
        "--kind",
        choices=(*KINDS, "llm", "lora"),
        default="moshi",
        help="moshi (kyutai/moshiko-mlx-*), stt (kyutai/stt-1b-en_fr-mlx, with the "
        "voice-activity heads), tts (kyutai/tts-1.6b-en_fr, with two voices tiny and tiny2), "
        "personaplex (16 depth steps, voice presets in voices/), hibiki (conditioned "
        "translation model), hibiki-zero (kyutai/hibiki-zero-3b-pytorch-bf16's layout), llm (a "
        "text chat model in mlx-lm's format, for `assistant`) or "
        "lora (moshi with --lora)",
    )
    parser.add_argument(
        "--lora",
        action="store_true",
        help="a LoRA fine-tune: a random adapter (rank 4, scaling 1.5) that config.json names "
        "(lora.safetensors: the folder loads fused), and moshi-finetune's own output of it in "
        "consolidated/ (lora.safetensors and config.json) for --lora FILE on any base",
    )
    parser.add_argument(
        "-f", "--force", action="store_true", help="write into a folder that is not empty"
    )
    return parser


def write_tiny_voices(folder: Path, seed: int) -> list[Path]:
    """PersonaPlex voice presets (NVIDIA's format, as `quantize voices` writes it) for random
    voices of the tiny model, in `folder/voices/`."""
    from safetensors.numpy import save_file

    from moshi_mlx import load_model
    from moshi_mlx.jobs.prompts import make_voice_preset

    lm = load_model(folder)
    (folder / "voices").mkdir(exist_ok=True)
    written = []
    for i, name in enumerate(TINY_VOICES):
        voice = np.random.default_rng(seed + i).integers(0, lm.cfg.card, (8, 25))
        path = folder / "voices" / f"{name}.safetensors"
        save_file(make_voice_preset(lm, voice), str(path), metadata={"format": "personaplex-voice"})
        written.append(path)
    return written


def _run(args: argparse.Namespace) -> None:
    folder = Path(args.folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not args.force:
        raise ValueError(f"{folder} is not empty (use --force to write the checkpoint into it)")
    if args.kind == "llm":
        from moshi_mlx.testing.tiny_llm import make_tiny_llm

        make_tiny_llm(folder, seed=args.seed)
        print(f"wrote a tiny random mlx-lm chat model to {folder}")
        return
    kind, lora = ("moshi", True) if args.kind == "lora" else (args.kind, args.lora)
    if lora:
        if args.quantize is not None:
            raise ValueError("a LoRA goes on float weights: --lora takes no --quantize")
        from moshi_mlx.testing.tiny_lora import make_tiny_lora_checkpoint

        folder = make_tiny_lora_checkpoint(folder, seed=args.seed, kind=kind)
    else:
        folder = make_tiny_checkpoint(
            folder, seed=args.seed, quantize_bits=args.quantize, kind=kind
        )
    if kind == "personaplex":
        write_tiny_voices(folder, args.seed)
    what = {"stt": "STT", "tts": "TTS", "moshi": "Moshi"}.get(kind, kind)
    print(f"wrote a tiny random {what} checkpoint to {folder}")
    if lora:
        print(
            f"with a LoRA fine-tune: {folder / 'lora.safetensors'} (named by its config.json), "
            f"and moshi-finetune's output {folder / 'consolidated'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(
        OneLineParser(prog="make_tiny_checkpoint.py", description=__doc__.splitlines()[0])
    )
    return run_cli(parser, argv, _run, (ValueError, OSError), "MOSHI_MLX_DEBUG")


if __name__ == "__main__":
    sys.exit(main())
