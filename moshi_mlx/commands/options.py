"""What the `moshi-mlx` subcommands share: argument validators, the model and sampling options,
and loading a checkpoint after a memory check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mimi_mlx.io.cli_support import one_line, positive_int, quiet_hub_logs, seed

from ..jobs.known import DEFAULT_MODEL, MODELS, KnownModel, known_model, model_for_repo

DEFAULT_REPO = MODELS[DEFAULT_MODEL].repo
DIALOGUE_KINDS = ("dialogue", "translation")  # what `chat` and `run` drive


def model_name(text: str) -> str:
    """`--model` values: the known models `chat` and `run` drive (one-line error otherwise)."""
    from ..jobs.known import UnknownModelError

    try:
        return known_model(text, DIALOGUE_KINDS).name
    except UnknownModelError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return value


def positive(text: str) -> float:
    value = non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
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
    names = [n for n, m in MODELS.items() if m.kind in DIALOGUE_KINDS]
    which.add_argument(
        "--model",
        type=model_name,
        metavar="NAME",
        help=f"a known model: {', '.join(names)} (default {DEFAULT_MODEL}); "
        "`moshi-mlx models` lists them with their repos",
    )
    which.add_argument(
        "--voice",
        choices=("moshiko", "moshika"),
        help="(deprecated) the same as --model moshiko / --model moshika",
    )
    model.add_argument(
        "--precision",
        choices=("q4", "q8", "bf16"),
        help="with --model: which of its hub repos (default: the model's, q4 for Moshi)",
    )
    add_lora_options(model)
    sampling = sub.add_argument_group("sampling (temperature 0: greedy)")
    sampling.add_argument(
        "--temperature",
        type=non_negative,
        metavar="T",
        help="text and audio temperature (default: the model's, 0.7 text and 0.8 audio for Moshi)",
    )
    sampling.add_argument(
        "--text-temperature", type=non_negative, metavar="T", help="(default: the model's)"
    )
    sampling.add_argument(
        "--audio-temperature", type=non_negative, metavar="T", help="(default: the model's)"
    )
    sampling.add_argument(
        "--text-top-k", type=positive_int, metavar="K", help="(default: the model's, 25)"
    )
    sampling.add_argument(
        "--audio-top-k", type=positive_int, metavar="K", help="(default: the model's, 250)"
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


def add_lora_options(group) -> None:
    """`--lora FILE` and `--lora-scaling S`: a LoRA fine-tune fused into a float checkpoint."""
    group.add_argument(
        "--lora",
        metavar="FILE",
        help="apply this LoRA adapter (moshi-finetune's lora.safetensors, or the consolidated/ "
        "folder holding it) instead of the one the checkpoint's config.json names: fused into "
        "float weights, kept beside quantized ones",
    )
    group.add_argument(
        "--lora-scaling",
        type=positive,
        metavar="S",
        help="with --lora: its lora_scaling (default: the file's metadata, a config.json beside "
        "it, else 2 as Kyutai's loader)",
    )


def lora_of_args(args: argparse.Namespace) -> tuple[str | None, float | None]:
    """(--lora, --lora-scaling), refusing a scaling without a file and a file that is not
    there (before any load)."""
    from mimi_mlx.io.cli_support import UsageError

    lora, scaling = getattr(args, "lora", None), getattr(args, "lora_scaling", None)
    if scaling is not None and lora is None:
        raise UsageError("--lora-scaling needs --lora FILE")
    if lora is not None and not Path(lora).expanduser().exists():
        raise UsageError(f"--lora: no such file: {lora}")
    return lora, scaling


def known_of(args: argparse.Namespace) -> KnownModel | None:
    """The known model the options name (--model, deprecated --voice, a known --hf-repo, or the
    default when nothing names a checkpoint); None for other repos and local checkpoints."""
    if getattr(args, "voice", None):  # the old spelling of --model moshiko / moshika
        return MODELS[args.voice]
    if getattr(args, "model", None):
        return MODELS[args.model]
    if args.checkpoint:
        return None
    if args.hf_repo:
        return model_for_repo(args.hf_repo)
    return MODELS[DEFAULT_MODEL]


def source_of(args: argparse.Namespace) -> str:
    """The checkpoint the options name: --checkpoint, --hf-repo, --model, else the default."""
    from mimi_mlx.io.cli_support import UsageError

    if (args.checkpoint or args.hf_repo) and getattr(args, "precision", None):
        raise UsageError("--precision picks one of a --model's hub repos, not a checkpoint's")
    if args.checkpoint:
        return args.checkpoint
    if args.hf_repo:
        return args.hf_repo
    return repo_at(known_of(args), getattr(args, "precision", None))


def repo_at(known: KnownModel, precision: str | None) -> str:
    """The hub repo of a known model at `precision` (None: the model's default)."""
    from mimi_mlx.io.cli_support import UsageError

    precision = precision or known.precision
    if precision not in known.repos:
        raise UsageError(
            f"{known.name} has no {precision} repo on the hub (it has "
            f"{', '.join(known.repos)}); make one with `moshi-mlx-quantize` and pass --checkpoint"
        )
    return known.repos[precision]


def add_kind_model_options(which, group, kind: str, default: str) -> None:
    """`--model NAME` (the known models of one `kind`) and `--precision`, for the commands that
    run one kind (`transcribe`, `speak`); `which` is the --hf-repo/--checkpoint group."""
    from ..jobs.known import UnknownModelError

    def name(text: str) -> str:
        try:
            return known_model(text, (kind,)).name
        except UnknownModelError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    names = [n for n, m in MODELS.items() if m.kind == kind]
    which.add_argument(
        "--model",
        type=name,
        metavar="NAME",
        help=f"a known model: {', '.join(names)} (default {default}); `moshi-mlx models` "
        "lists them with their repos",
    )
    group.add_argument(
        "--precision",
        choices=("q4", "q8", "bf16"),
        help="with --model: which of its hub repos (default: the model's)",
    )
    add_lora_options(group)


def kind_source_of(args: argparse.Namespace, default: str) -> str:
    """The checkpoint of `transcribe` or `speak`: --checkpoint, --hf-repo, else --model's repo
    (at --precision), else the `default` known model's."""
    from mimi_mlx.io.cli_support import UsageError

    if (args.checkpoint or args.hf_repo) and args.precision:
        raise UsageError("--precision picks one of a --model's hub repos, not a checkpoint's")
    if args.checkpoint or args.hf_repo:
        return args.checkpoint or args.hf_repo
    return repo_at(MODELS[args.model or default], args.precision)


def sampling_of(args: argparse.Namespace, known: KnownModel | None = None):
    """The sampling settings the options name (specific temperatures beat --temperature; the
    known model's defaults, else Kyutai's, fill the rest)."""
    from ..jobs.sampling import Sampling

    default = known.sampling if known is not None else Sampling()

    def pick(specific, fallback):
        if specific is not None:
            return specific
        return args.temperature if args.temperature is not None else fallback

    return Sampling(
        text_temperature=pick(args.text_temperature, default.text_temperature),
        text_top_k=args.text_top_k or default.text_top_k,
        audio_temperature=pick(args.audio_temperature, default.audio_temperature),
        audio_top_k=args.audio_top_k or default.audio_top_k,
        top_p=args.top_p,
        seed=args.seed,
    )


# Helium parameters (about 12 dim^2 per layer) beyond which live chat needs a GPU
LARGE_PARAMS = 5e8


def warn_if_too_slow_to_chat(cfg) -> None:
    """On MLX's CPU backend a large model steps far slower than real time: say so, and what
    works instead, before the long load."""
    from mimi_mlx.nn.backend import on_gpu

    if on_gpu() or 12 * cfg.dim**2 * cfg.num_layers < LARGE_PARAMS:
        return
    print(
        "warning: live chat with this model needs Apple silicon (or another GPU MLX runs on): "
        "here MLX runs on its CPU backend, about 5 s per 80 ms frame for the 7B model. "
        "`moshi-mlx run IN.wav OUT.wav` works here, and so does the chat with a tiny "
        "checkpoint (scripts/make_tiny_checkpoint.py).",
        file=sys.stderr,
        flush=True,
    )


def load(
    source: str, live: bool = False, lora: str | None = None, lora_scaling: float | None = None
):
    """Load a checkpoint after checking that it fits in memory (and, for a `live` chat, that
    the backend can run it in real time: a warning if not); `lora`: an adapter to fuse.

    Raises:
        CheckpointError: not found (offline and not cached: says what to download).
        MemoryCheckError: it would not fit.
    """
    from mimi_mlx.constants import KYUTAI_FILE
    from mimi_mlx.io.hub import CheckpointError, looks_like_repo_id

    from ..model.checkpoint import config_from, load_files, resolve
    from ..system.memory import check_memory, estimate_bytes
    from ..system.wired import residency_warning

    quiet_hub_logs()
    is_repo = looks_like_repo_id(source) and not Path(source).expanduser().exists()
    try:
        files = resolve(source)
        mimi = None
        if files.layout == "kyutai":
            mimi = files.get((files.config or {}).get("mimi_name", KYUTAI_FILE))
        cfg = config_from(files)
        needed = estimate_bytes(files.weights, cfg, mimi)
        check_memory(needed, source)
        warning = residency_warning(needed, source)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        if live:
            warn_if_too_slow_to_chat(cfg)
        return load_files(files, source, lora=lora, lora_scaling=lora_scaling)
    except CheckpointError as e:
        if is_repo:
            raise CheckpointError(
                f"{one_line(e)} A local folder is passed with --checkpoint DIR (for example "
                f"after `hf download {source} --local-dir DIR`)."
            ) from e
        raise
