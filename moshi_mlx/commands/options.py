"""What the `moshi-mlx` subcommands share: argument validators, the model and sampling options,
and loading a checkpoint after a memory check."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from mimi_mlx.io.cli_support import one_line, positive_int, quiet_hub_logs, seed

from ..model.known import (
    DEFAULT_MODEL,
    MODELS,
    KnownModel,
    known_model,
    model_for_repo,
    with_lm_gen_config,
)

DEFAULT_REPO = MODELS[DEFAULT_MODEL].repo
DIALOGUE_KINDS = ("dialogue", "translation")  # what `chat` and `run` drive


def model_name(text: str) -> str:
    """`--model` values: the known models `chat` and `run` drive (one-line error otherwise)."""
    from ..model.known import UnknownModelError

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
    from ..model.known import UnknownModelError

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
    from ..jobs.pipeline import Sampling

    base = known.sampling if known is not None else None
    default = (
        Sampling()
        if base is None
        else Sampling(
            text_temperature=base.text_temperature,
            text_top_k=base.text_top_k,
            audio_temperature=base.audio_temperature,
            audio_top_k=base.audio_top_k,
        )
    )

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


def load(source: str, live: bool = False):
    """Load a checkpoint after checking that it fits in memory (and, for a `live` chat, that
    the backend can run it in real time: a warning if not).

    Raises:
        CheckpointError: not found (offline and not cached: says what to download).
        MemoryCheckError: it would not fit.
    """
    from mimi_mlx.constants import KYUTAI_FILE
    from mimi_mlx.io.hub import CheckpointError, looks_like_repo_id

    from ..model.checkpoint import config_from, load_checkpoint, resolve
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
        return load_checkpoint(source)
    except CheckpointError as e:
        if is_repo:
            raise CheckpointError(
                f"{one_line(e)} A local folder is passed with --checkpoint DIR (for example "
                f"after `hf download {source} --local-dir DIR`)."
            ) from e
        raise


KIND_NAMES = {"stt": "a speech-to-text", "tts": "a text-to-speech"}


def refuse_other_kind(cfg, source: str) -> None:
    """`chat` and `run` drive dialogue and translation models: an STT or TTS checkpoint is
    refused with the command that runs it (ValueError: a failure, as transcribe's and speak's)."""
    from ..model.known import COMMAND_OF_KIND

    kind = cfg.model_type
    if kind in KIND_NAMES:
        where = "--checkpoint" if Path(source).expanduser().exists() else "--hf-repo"
        raise ValueError(
            f"{source} is {KIND_NAMES[kind]} model ({kind}): `moshi-mlx {COMMAND_OF_KIND[kind]} "
            f"{where} {source} ...` runs it; chat and run drive Moshi, PersonaPlex and Hibiki"
        )


def resident(pipeline):
    """Context: the pipeline's models stay resident on Metal while it runs (no-op elsewhere)."""
    from ..system.wired import session_bytes, wired_limit

    return wired_limit(session_bytes(pipeline.lm, pipeline.mimi))


def pipeline(args: argparse.Namespace, source: str, live: bool = False):
    """Load the checkpoint and build the session pipeline: the model's sampling defaults,
    guidance (Hibiki) and prompts (PersonaPlex); `pipeline.info` says what a replay needs."""
    from ..jobs.pipeline import Pipeline
    from . import prompting

    known = known_of(args)
    prompting.check_prompts(args, known)
    if sys.stderr.isatty():  # (errors stay one line where stderr is read by a program)
        print(f"loading {source} ...", file=sys.stderr, flush=True)
    ckpt = load(source, live)
    refuse_other_kind(ckpt.lm.cfg, source)
    if ckpt.tokenizer is None:
        print("warning: the checkpoint has no text tokenizer: no transcript", file=sys.stderr)
    profile = prompting.profile_of(known, ckpt.lm)
    # the checkpoint's own `lm_gen_config` (as Kyutai's server and hibiki_zero pass to LMGen)
    gen = ckpt.lm.cfg.extra.get("lm_gen_config")
    if gen:
        profile = replace(profile, sampling=with_lm_gen_config(profile.sampling, gen))
    guidance = prompting.guidance_of(args, profile, ckpt.lm)
    prompt = prompting.build_prompt(args, profile, ckpt, source)
    result = Pipeline(
        ckpt.lm, ckpt.mimi, ckpt.tokenizer, sampling_of(args, profile), guidance, prompt
    )
    result.info = prompting.session_info(args, source, profile, guidance)
    result.profile = profile
    return result
