"""What the `moshi-mlx` subcommands share: argument validators, the model and sampling options,
and loading a checkpoint after a memory check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mimi_mlx.cli_support import one_line, quiet_hub_logs

DEFAULT_REPO = "kyutai/moshiko-mlx-q4"
VOICES = {"moshiko": "kyutai/moshiko-mlx-q4", "moshika": "kyutai/moshika-mlx-q4"}


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in 0..2**63-1, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def add_model_options(sub: argparse.ArgumentParser) -> None:
    model = sub.add_argument_group("model")
    which = model.add_mutually_exclusive_group()
    which.add_argument(
        "--hf-repo",
        metavar="REPO",
        help=f"hub repo id (default {DEFAULT_REPO}; from the local cache when offline)",
    )
    which.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="local checkpoint folder (Kyutai's layout) or weights file",
    )
    which.add_argument(
        "--voice",
        choices=sorted(VOICES),
        help="moshiko (kyutai/moshiko-mlx-q4) or moshika (kyutai/moshika-mlx-q4)",
    )
    sampling = sub.add_argument_group("sampling (temperature 0: greedy)")
    sampling.add_argument(
        "--temperature",
        type=non_negative,
        metavar="T",
        help="text and audio temperature (default 0.7 text, 0.8 audio)",
    )
    sampling.add_argument(
        "--text-temperature", type=non_negative, metavar="T", help="(default 0.7)"
    )
    sampling.add_argument(
        "--audio-temperature", type=non_negative, metavar="T", help="(default 0.8)"
    )
    sampling.add_argument(
        "--text-top-k", type=positive_int, default=25, metavar="K", help="(default 25)"
    )
    sampling.add_argument(
        "--audio-top-k", type=positive_int, default=250, metavar="K", help="(default 250)"
    )
    sampling.add_argument(
        "--top-p", type=probability, metavar="P", help="nucleus sampling, in (0, 1]"
    )
    sampling.add_argument(
        "--seed",
        type=seed,
        metavar="N",
        help="random seed (default: a random one, reported so the session can be replayed)",
    )


def source_of(args: argparse.Namespace) -> str:
    """The checkpoint the options name: --checkpoint, --hf-repo, --voice, else the default."""
    if args.checkpoint:
        return args.checkpoint
    if args.hf_repo:
        return args.hf_repo
    return VOICES[args.voice] if args.voice else DEFAULT_REPO


def sampling_of(args: argparse.Namespace):
    """The sampling settings the options name (specific temperatures beat --temperature)."""
    from ..jobs.pipeline import Sampling

    default = Sampling()

    def pick(specific, fallback):
        if specific is not None:
            return specific
        return args.temperature if args.temperature is not None else fallback

    return Sampling(
        text_temperature=pick(args.text_temperature, default.text_temperature),
        text_top_k=args.text_top_k,
        audio_temperature=pick(args.audio_temperature, default.audio_temperature),
        audio_top_k=args.audio_top_k,
        top_p=args.top_p,
        seed=args.seed,
    )


def load(source: str):
    """Load a checkpoint after checking that it fits in memory.

    Raises:
        CheckpointError: not found (offline and not cached: says what to download).
        MemoryCheckError: it would not fit.
    """
    from mimi_mlx.hub import CheckpointError, looks_like_repo_id

    from ..model.checkpoint import MIMI_FILE, config_from, load_checkpoint, resolve
    from ..model.memory import check_memory, estimate_bytes
    from ..model.wired import residency_warning

    quiet_hub_logs()
    is_repo = looks_like_repo_id(source) and not Path(source).expanduser().exists()
    try:
        files = resolve(source)
        mimi = None
        if files.layout == "kyutai":
            mimi = files.get((files.config or {}).get("mimi_name", MIMI_FILE))
        needed = estimate_bytes(files.weights, config_from(files), mimi)
        check_memory(needed, source)
        warning = residency_warning(needed, source)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        return load_checkpoint(source)
    except CheckpointError as e:
        if is_repo:
            raise CheckpointError(
                f"{one_line(e)} A local folder is passed with --checkpoint DIR (for example "
                f"after `huggingface-cli download {source} --local-dir DIR`)."
            ) from e
        raise


def resident(pipeline):
    """Context: the pipeline's models stay resident on Metal while it runs (no-op elsewhere)."""
    from ..model.wired import session_bytes, wired_limit

    return wired_limit(session_bytes(pipeline.lm, pipeline.mimi))


def pipeline(args: argparse.Namespace, source: str):
    from ..jobs.pipeline import Pipeline

    if sys.stderr.isatty():  # (errors stay one line where stderr is read by a program)
        print(f"loading {source} ...", file=sys.stderr, flush=True)
    ckpt = load(source)

    if ckpt.tokenizer is None:
        print("warning: the checkpoint has no text tokenizer: no transcript", file=sys.stderr)
    return Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, sampling_of(args))
