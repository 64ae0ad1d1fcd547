"""`moshi-mlx`: talk with Moshi live (`chat`) or run a recorded user stream through it (`run`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mimi_mlx.cli_support import OneLineParser, UsageError, one_line, quiet_hub_logs, run_cli

DEFAULT_REPO = "kyutai/moshiko-mlx-q4"
PREFILL_FRAMES = 2  # the speaker's jitter buffer: 160 ms
VOICES = {"moshiko": "kyutai/moshiko-mlx-q4", "moshika": "kyutai/moshika-mlx-q4"}

EXAMPLES = """\
examples:
  moshi-mlx chat                                  # talk with Moshiko (kyutai/moshiko-mlx-q4)
  moshi-mlx chat --voice moshika --record talk/   # Moshika; save both voices and the text
  moshi-mlx chat --list-devices                   # the microphones and speakers PortAudio sees
  moshi-mlx chat --checkpoint ./moshiko-mlx-q4 --input-device 2 --stats
  moshi-mlx run question.wav answer.wav --seed 42 # a recorded user stream, file to file
  moshi-mlx run talk/user.wav again.wav --seed N  # replay a recorded chat (talk/session.json
                                                  # has its seed N and sampling settings)
  moshi-mlx run in.flac out.wav --temperature 0   # greedy: the same output every time

Offline, without the hub: `huggingface-cli download kyutai/moshiko-mlx-q4 --local-dir DIR`
once, then `--checkpoint DIR`. A tiny random checkpoint (it makes noise) for any machine:
`python scripts/make_tiny_checkpoint.py tiny/`, then `--checkpoint tiny/`.
Exit status: 0 on success, 1 on a failure, 2 on a usage error."""


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in 0..2**63-1, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_model_options(sub: argparse.ArgumentParser) -> None:
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
        type=_non_negative,
        metavar="T",
        help="text and audio temperature (default 0.7 text, 0.8 audio)",
    )
    sampling.add_argument(
        "--text-temperature", type=_non_negative, metavar="T", help="(default 0.7)"
    )
    sampling.add_argument(
        "--audio-temperature", type=_non_negative, metavar="T", help="(default 0.8)"
    )
    sampling.add_argument(
        "--text-top-k", type=_positive_int, default=25, metavar="K", help="(default 25)"
    )
    sampling.add_argument(
        "--audio-top-k", type=_positive_int, default=250, metavar="K", help="(default 250)"
    )
    sampling.add_argument(
        "--top-p", type=_probability, metavar="P", help="nucleus sampling, in (0, 1]"
    )
    sampling.add_argument(
        "--seed",
        type=_seed,
        metavar="N",
        help="random seed (default: a random one, reported so the session can be replayed)",
    )


def configure_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Build the `moshi-mlx` argument parser (subcommands chat and run)."""
    parser = parser or OneLineParser(
        prog="moshi-mlx",
        description="Kyutai's Moshi speech model on MLX: full-duplex voice chat, or file to file.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    chat = command(
        "chat",
        "talk with Moshi on the microphone and speaker (Ctrl-C ends; also --list-devices)",
    )
    _add_model_options(chat)
    audio = chat.add_argument_group("audio")
    audio.add_argument(
        "--list-devices", action="store_true", help="list the audio devices and exit"
    )
    audio.add_argument("--input-device", metavar="ID", help="index or part of the name")
    audio.add_argument("--output-device", metavar="ID", help="index or part of the name")
    audio.add_argument(
        "--device-rate",
        type=_positive_int,
        metavar="HZ",
        help="open the devices at this rate and resample (default: 24000 when supported)",
    )
    session = chat.add_argument_group("session")
    session.add_argument(
        "--record",
        metavar="DIR",
        type=Path,
        help="save user.wav, moshi.wav, played.wav, transcript.txt/.json and session.json",
    )
    session.add_argument("--stats", action="store_true", help="print live statistics each second")
    session.add_argument(
        "--max-lag",
        type=_positive_int,
        default=240,
        metavar="MS",
        help="how far the conversation may fall behind (input waiting for a slow model, or "
        "Moshi's audio beyond the 160 ms jitter buffer) before the oldest audio is skipped "
        "(default 240 ms)",
    )
    session.add_argument("--duration", type=_non_negative, metavar="S", help="stop after S seconds")
    session.add_argument("-f", "--force", action="store_true", help="overwrite a recording")
    session.add_argument("-q", "--quiet", action="store_true", help="do not print the text")

    run = command("run", "feed a recorded user stream through Moshi: IN audio -> OUT audio + text")
    run.add_argument("input", metavar="IN", help="the user's audio (any format soundfile reads)")
    run.add_argument(
        "output", metavar="OUT", help="Moshi's audio (.wav); OUT.txt and OUT.json get the text"
    )
    _add_model_options(run)
    run.add_argument(
        "--float", dest="float32", action="store_true", help="write 32-bit float samples"
    )
    run.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `moshi-mlx`; returns the exit status (errors are one `error: ...` line on stderr)."""
    from .devices import AudioDeviceError

    def run(args: argparse.Namespace) -> None:
        (_chat if args.command == "chat" else _run)(args)

    # AudioError, OutputError, CheckpointError, MemoryCheckError, SessionError, PortAudio's errors
    expected = (ValueError, OSError, AudioDeviceError, RuntimeError)
    return run_cli(configure_parser(), argv, run, expected, "MOSHI_MLX_DEBUG")


def source_of(args: argparse.Namespace) -> str:
    """The checkpoint the options name: --checkpoint, --hf-repo, --voice, else the default."""
    if args.checkpoint:
        return args.checkpoint
    if args.hf_repo:
        return args.hf_repo
    return VOICES[args.voice] if args.voice else DEFAULT_REPO


def sampling_of(args: argparse.Namespace):
    """The sampling settings the options name (specific temperatures beat --temperature)."""
    from .pipeline import Sampling

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

    from .checkpoint import MIMI_FILE, config_from, load_checkpoint, resolve
    from .memory import check_memory, estimate_bytes

    quiet_hub_logs()
    is_repo = looks_like_repo_id(source) and not Path(source).expanduser().exists()
    try:
        files = resolve(source)
        mimi = None
        if files.layout == "kyutai":
            mimi = files.get((files.config or {}).get("mimi_name", MIMI_FILE))
        check_memory(estimate_bytes(files.weights, config_from(files), mimi), source)
        return load_checkpoint(source)
    except CheckpointError as e:
        if is_repo:
            raise CheckpointError(
                f"{one_line(e)} A local folder is passed with --checkpoint DIR (for example "
                f"after `huggingface-cli download {source} --local-dir DIR`)."
            ) from e
        raise


def _pipeline(args: argparse.Namespace, source: str):
    from .pipeline import Pipeline

    if sys.stderr.isatty():  # (errors stay one line where stderr is read by a program)
        print(f"loading {source} ...", file=sys.stderr, flush=True)
    ckpt = load(source)

    if ckpt.tokenizer is None:
        print("warning: the checkpoint has no text tokenizer: no transcript", file=sys.stderr)
    return Pipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, sampling_of(args))


def _chat(args: argparse.Namespace) -> None:
    from .audio_io import AudioIO
    from .chat import ChatOptions, run_chat
    from .devices import choose_device, list_devices
    from .recording import check_record_dir

    if args.list_devices:
        print(list_devices())
        return
    # Everything that can fail fast does so before the (long) model load.
    input_device = choose_device(args.input_device, "input", args.device_rate)
    output_device = choose_device(args.output_device, "output", args.device_rate)
    if args.record is not None:
        check_record_dir(args.record, args.force)
    source = source_of(args)
    pipeline = _pipeline(args, source)
    pipeline.warmup()
    max_lag_frames = max(1, round(args.max_lag / 80))
    options = ChatOptions(
        record=args.record,
        stats=args.stats,
        duration=args.duration,
        max_lag_frames=max_lag_frames,
        show_text=not args.quiet,
    )
    audio = AudioIO(
        input_device,
        output_device,
        prefill_frames=PREFILL_FRAMES,
        capacity_frames=PREFILL_FRAMES + max_lag_frames,
        log_played=args.record is not None,
    )
    run_chat(pipeline, audio, options, {"checkpoint": source})


def _run(args: argparse.Namespace) -> None:
    from mimi_mlx.audio import AudioError, audio_info, output_format
    from mimi_mlx.output_file import check_output

    from .offline import run_file, transcript_paths

    try:
        output_format(args.output)
    except AudioError as e:
        raise UsageError(str(e)) from None
    outputs = (args.output, *transcript_paths(args.output))
    if Path(args.input).resolve() in [Path(p).resolve() for p in outputs]:
        raise UsageError("the output would overwrite the input")
    audio_info(args.input)
    for path in outputs:
        check_output(path, args.force)
    source = source_of(args)
    pipeline = _pipeline(args, source)
    result = run_file(
        pipeline,
        args.input,
        args.output,
        float32=args.float32,
        progress=False if args.quiet else None,
        info={"checkpoint": source, "input": str(args.input)},
    )
    text_path, json_path = transcript_paths(args.output)
    print(result.transcript.text)
    print(
        f"wrote {args.output} ({result.audio_seconds:.1f} s), {text_path} and {json_path}: "
        f"{result.steps} steps in {result.elapsed:.1f} s (real-time factor "
        f"{result.real_time_factor:.2f}, seed {pipeline.seed})",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
