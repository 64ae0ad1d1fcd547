"""`mimi-mlx`: encode audio files to Mimi codes, decode them back, or both at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .io.cli_support import (
    OneLineParser,
    UsageError,
    add_version,
    one_line,
    quiet_hub_logs,
    refuse_overwriting,
    run_cli,
)
from .offline import DEFAULT_NUM_QUANTIZERS, STREAM_ABOVE_SECONDS

DEFAULT_CHECKPOINT = "kyutai/mimi"
MAX_CODEBOOKS = 32

EXAMPLES = f"""\
examples:
  mimi-mlx encode speech.flac speech.safetensors       # 8 codebooks (as Moshi), kyutai/mimi
  mimi-mlx decode speech.safetensors speech.wav        # 24 kHz WAV, original length
  mimi-mlx roundtrip talk.mp3 talk-mimi.wav -n 32      # hear the codec at full quality
  mimi-mlx encode long.wav long.safetensors --stream   # bounded memory, frame by frame
  mimi-mlx info speech.safetensors                     # what a codes file holds
  mimi-mlx encode in.wav out.safetensors --checkpoint ./mimi-folder

Inputs: any format soundfile reads (WAV, FLAC, OGG, MP3, ...), any rate, any channels; they
are averaged to mono and resampled to 24 kHz with soxr. Audio outputs are 24 kHz, in the
format their suffix names (16-bit WAV by default; --float for 32-bit float).
Files longer than {STREAM_ABOVE_SECONDS:g} s are streamed (with a progress bar) unless --no-stream.
Existing outputs are kept unless --force; an input is never overwritten.
-n/--num-codebooks (also spelled --num-quantizers) is the number of Mimi codebooks.
Exit status: 0 on success, 1 on a failure, 2 on a usage error."""


def _num_quantizers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= n <= MAX_CODEBOOKS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_CODEBOOKS}, got {n}")
    return n


def configure_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Build the `mimi-mlx` argument parser (subcommands encode, decode, roundtrip, info)."""
    parser = parser or OneLineParser(
        prog="mimi-mlx",
        description="Kyutai's Mimi codec on MLX: audio files <-> Mimi codes (12.5 frames/s).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    what = {"AUDIO": "audio file", "CODES": "codes file (.safetensors)"}

    def command(name: str, help: str, inp: str, out: str | None) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("input", metavar=inp, help=f"input {what[inp]}")
        if out:
            sub.add_argument("output", metavar=out, help=f"output {what[out]}")
        return sub

    encode = command("encode", "encode an audio file into a codes file", "AUDIO", "CODES")
    decode = command("decode", "decode a codes file into an audio file", "CODES", "AUDIO")
    roundtrip = command(
        "roundtrip",
        "encode then decode an audio file (hear what the codec keeps)",
        "AUDIO",
        "AUDIO",
    )
    command("info", "print what a codes file holds", "CODES", None)

    for sub in (encode, roundtrip):
        sub.add_argument(
            "-n",
            "--num-codebooks",
            "--num-quantizers",
            dest="num_quantizers",
            type=_num_quantizers,
            default=DEFAULT_NUM_QUANTIZERS,
            metavar="N",
            help=f"codebooks to use, 1..{MAX_CODEBOOKS} (default {DEFAULT_NUM_QUANTIZERS}, as "
            "Moshi; 32 is full quality)",
        )
    decode.add_argument(
        "-n",
        "--num-codebooks",
        "--num-quantizers",
        dest="num_quantizers",
        type=_num_quantizers,
        default=None,
        metavar="N",
        help="decode only the first N codebooks (default: all in the codes file)",
    )
    for sub in (encode, decode, roundtrip):
        default = "the one recorded in the codes file" if sub is decode else DEFAULT_CHECKPOINT
        sub.add_argument(
            "--checkpoint",
            default=None,
            metavar="REPO_OR_PATH",
            help="hub repo id (from the local cache when offline), checkpoint folder or "
            f".safetensors file (default: {default})",
        )
        mode = sub.add_mutually_exclusive_group()
        mode.add_argument(
            "--stream",
            action="store_true",
            default=None,
            help="stream block by block (bounded memory, progress bar)",
        )
        mode.add_argument(
            "--no-stream",
            dest="stream",
            action="store_false",
            help=f"process the whole file at once even if longer than {STREAM_ABOVE_SECONDS:g} s",
        )
        sub.set_defaults(stream=None)  # None: stream files longer than STREAM_ABOVE_SECONDS
        sub.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for sub in (decode, roundtrip):
        sub.add_argument(
            "--float",
            dest="float32",
            action="store_true",
            help="write 32-bit float WAV samples (default 16-bit PCM)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `mimi-mlx`; returns the exit status (errors are one `error: ...` line on stderr)."""

    def run(args: argparse.Namespace) -> None:
        _check_usage(args)
        _run(args)

    # AudioError, CodesFileError, CheckpointError, ... are ValueErrors or OSErrors.
    return run_cli(configure_parser(), argv, run, (ValueError, OSError), "MIMI_MLX_DEBUG")


def _check_usage(args: argparse.Namespace) -> None:
    """Checks on the command line alone, before any file is read."""
    from .io.audio import AudioError, output_format

    if args.command != "info":
        refuse_overwriting([args.output], [args.input, args.checkpoint])
    if args.command in ("decode", "roundtrip"):
        try:
            output_format(args.output)
        except AudioError as e:
            raise UsageError(str(e)) from None
    if args.command == "encode":
        suffix = Path(args.output).suffix.lower()
        if suffix in (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff"):
            raise UsageError(
                f"encode writes a codes file, not audio: name it {Path(args.output).stem}"
                ".safetensors (or use `roundtrip` for audio in, audio out)"
            )


def _run(args: argparse.Namespace) -> None:
    from .codes_file import load_codes, save_codes
    from .io.audio import audio_info
    from .io.output_file import check_output
    from .offline import decode_file, encode_file, roundtrip_file

    if args.command == "info":
        _print_info(load_codes(args.input))
        return
    # Check the input and the output before loading the model (which may take a while).
    codes = load_codes(args.input) if args.command == "decode" else None
    if codes is None:
        audio_info(args.input)
    check_output(args.output, args.force)
    progress = False if args.quiet else None
    model = _load_model(args.checkpoint, codes)
    if args.command == "encode":
        result = encode_file(model, args.input, args.num_quantizers, args.stream, progress)
        save_codes(args.output, result)
        print(
            f"wrote {args.output}: {result.num_codebooks} codebooks x {result.num_frames} frames "
            f"({result.duration:.2f} s of audio)"
        )
        return
    if args.command == "decode":
        decode_file(
            model, codes, args.output, args.num_quantizers, args.stream, progress, args.float32
        )
        n_q = args.num_quantizers or codes.num_codebooks
    else:
        codes = roundtrip_file(
            model,
            args.input,
            args.output,
            args.num_quantizers,
            args.stream,
            progress,
            args.float32,
        )
        n_q = codes.num_codebooks
    print(
        f"wrote {args.output}: {codes.duration:.2f} s at {model.sample_rate} Hz "
        f"({n_q} codebooks{', 32-bit float' if args.float32 else ''})"
    )


def _load_model(checkpoint: str | None, codes):
    """Load the checkpoint given, else the one the codes were made with, else kyutai/mimi."""
    from .checkpoint import load_mimi
    from .io.hub import CheckpointError
    from .offline import check_compatible

    quiet_hub_logs()
    recorded = codes.checkpoint if codes is not None else ""
    chosen = checkpoint or recorded or DEFAULT_CHECKPOINT
    local = Path(chosen).expanduser()
    if local.exists():
        chosen = str(local.resolve())  # record a path that stays valid from any folder
    try:
        model = load_mimi(chosen)
    except CheckpointError as e:
        if checkpoint is None and recorded:
            raise CheckpointError(
                f"{one_line(e)} (the codes were made with this checkpoint; pass --checkpoint)"
            ) from e
        raise
    if codes is not None:
        check_compatible(model, codes)  # before any warning: an error stays one line
        if recorded and checkpoint and _differs(recorded, chosen):
            print(
                f"warning: the codes were made with checkpoint {recorded}, decoding with {chosen}",
                file=sys.stderr,
            )
    return model


def _differs(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() != pb.resolve()
    return a != b


def _print_info(codes) -> None:
    rows = [
        ("codebooks", codes.num_codebooks),
        ("frames", codes.num_frames),
        ("cardinality", codes.cardinality),
        ("samples", f"{codes.num_samples} ({codes.duration:.2f} s at {codes.sample_rate} Hz)"),
        ("frame rate", f"{codes.frame_rate:g} Hz ({codes.frame_size} samples per frame)"),
        ("source rate", f"{codes.source_sample_rate} Hz" if codes.source_sample_rate else "?"),
        ("checkpoint", codes.checkpoint or "?"),
    ]
    for name, value in rows:
        print(f"{name + ':':13} {value}")


if __name__ == "__main__":
    sys.exit(main())
