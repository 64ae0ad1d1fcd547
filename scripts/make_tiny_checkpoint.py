"""Write a tiny random Moshi checkpoint folder in Kyutai's real repo layout.

    python scripts/make_tiny_checkpoint.py /tmp/tiny-moshi [--quantize 4|8] [--seed 0]
    python scripts/make_tiny_checkpoint.py /tmp/tiny-stt --kind stt   # Kyutai STT's layout

The folder works wherever a Kyutai repo id does (`load_model`, `load_checkpoint`, the apps):
config.json, the language model (Kyutai MLX layout), Mimi, and a SentencePiece tokenizer. The
weights are random, so Moshi makes noise, on any machine, without downloading anything.
"""

from __future__ import annotations

import argparse

from moshi_mlx.model.tiny import KINDS, make_tiny_checkpoint


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("folder", help="output folder (created if needed)")
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
        choices=KINDS,
        default="moshi",
        help="moshi (kyutai/moshiko-mlx-*) or stt (kyutai/stt-1b-en_fr-mlx, with the "
        "voice-activity heads)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = configure_parser(
        argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ).parse_args(argv)
    folder = make_tiny_checkpoint(
        args.folder, seed=args.seed, quantize_bits=args.quantize, kind=args.kind
    )
    what = "STT" if args.kind == "stt" else "Moshi"
    print(f"wrote a tiny random {what} checkpoint to {folder}")


if __name__ == "__main__":
    main()
