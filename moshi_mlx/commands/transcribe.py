"""`moshi-mlx transcribe`: Kyutai's streaming speech-to-text, on files or on the microphone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mimi_mlx.io.cli_support import UsageError
from mimi_mlx.io.hub import recorded_name

from ..model.known import MODELS
from . import options

DEFAULT_STT_REPO = MODELS["stt-1b-en_fr"].repo  # kyutai/stt-1b-en_fr-mlx

EXAMPLES = """\
examples:
  moshi-mlx transcribe talk.wav                    # the text on stdout
  moshi-mlx transcribe talk.mp3 --format srt --output talk.srt
  moshi-mlx transcribe *.flac --format json --output texts/   # a batch; one file each
  moshi-mlx transcribe                             # dictation: the microphone, until Ctrl-C
  moshi-mlx transcribe --vad --hf-repo kyutai/stt-1b-en_fr-candle   # mark the ends of turns
  moshi-mlx transcribe --checkpoint tiny-stt/ talk.wav   # a local folder (Kyutai's layout)

Models: kyutai/stt-1b-en_fr-mlx (default; English and French, 0.5 s behind the speech),
kyutai/stt-2.6b-en-mlx (English, 2.5 s), their PyTorch repos, our q4/q8 conversions;
`--vad` needs the voice-activity heads (kyutai/stt-1b-en_fr-candle has them). A tiny random
checkpoint: `python scripts/make_tiny_checkpoint.py tiny-stt --kind stt`."""


def register(command) -> None:
    """Add the `transcribe` subcommand (`command(name, help)` makes a subparser)."""
    sub = command(
        "transcribe",
        "speech to text (Kyutai STT): audio files, or the microphone when no file is given",
    )
    sub.epilog = EXAMPLES
    sub.add_argument("files", nargs="*", metavar="FILE", help="audio files (any format)")
    model = sub.add_argument_group("model")
    which = model.add_mutually_exclusive_group()
    which.add_argument(
        "--hf-repo", metavar="REPO", help=f"hub repo id (default {DEFAULT_STT_REPO})"
    )
    which.add_argument("--checkpoint", metavar="PATH", help="local checkpoint folder or file")
    out = sub.add_argument_group("output")
    out.add_argument(
        "--format",
        choices=("txt", "json", "srt", "vtt"),
        help="txt (the text), json (text, words with times, tokens), srt or vtt (subtitles); "
        "default: the --output file's suffix, else txt",
    )
    out.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="the transcript file (one input, or the microphone), or a folder for several "
        "inputs (FILE's name with the format's suffix); default: stdout",
    )
    out.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sub.add_argument(
        "--vad",
        action="store_true",
        help="mark the ends of turns (Kyutai's voice-activity head 2 above 0.5)",
    )
    sub.add_argument(
        "--batch-size",
        type=options.positive_int,
        default=8,
        metavar="N",
        help="files transcribed together (default 8)",
    )
    live = sub.add_argument_group("microphone (no FILE)")
    live.add_argument("--list-devices", action="store_true", help="list the audio devices")
    live.add_argument("--input-device", metavar="ID", help="index or part of the name")
    live.add_argument(
        "--device-rate", type=options.positive_int, metavar="HZ", help="open it at this rate"
    )
    live.add_argument(
        "--max-lag",
        type=options.positive_int,
        default=1000,
        metavar="MS",
        help="how far the model may fall behind the microphone before the oldest audio is "
        "skipped and reported (default 1000 ms: a transcript is read, not answered)",
    )
    live.add_argument("--duration", type=options.positive, metavar="S", help="stop after S s")
    live.add_argument(
        "--save-audio", type=Path, metavar="WAV", help="also save what the model heard (24 kHz)"
    )
    sub.set_defaults(handler=_transcribe)


def _format_of(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output and Path(args.output).suffix.lstrip(".") in ("txt", "json", "srt", "vtt"):
        return Path(args.output).suffix.lstrip(".")
    return "txt"


def _outputs(args: argparse.Namespace, fmt: str) -> list[Path] | None:
    """Where each input's transcript goes (None: stdout); refuses clashes before any work."""
    from mimi_mlx.io.output_file import OutputError, check_output

    if args.output is None:
        return None
    out = Path(args.output)
    if len(args.files) > 1:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--output must be a folder for several files: {out} is a file")
        paths = [out / f"{Path(f).stem}.{fmt}" for f in args.files]
        clashes = {p for p in paths if paths.count(p) > 1}
        if clashes:
            raise UsageError(f"two inputs would write the same file: {sorted(clashes)[0]}")
    elif out.is_dir():
        paths = [out / f"{Path(args.files[0]).stem if args.files else 'microphone'}.{fmt}"]
    else:
        paths = [out]
    inputs = {Path(f).resolve() for f in args.files}
    if args.save_audio is not None:
        inputs.add(Path(args.save_audio).resolve())
    for p in paths:
        if p.resolve() in inputs:
            raise UsageError(f"the output would overwrite an input: {p}")
        if not p.parent.exists() and len(args.files) > 1 and p.parent == out:
            continue  # the folder is created after the checks
        try:
            check_output(p, args.force)
        except OutputError as e:
            raise UsageError(str(e)) from None
    return paths


def _load(args: argparse.Namespace, vad: bool, batch_size: int):
    from ..jobs.stt import SttSettings, SttStream

    source = args.checkpoint or args.hf_repo or DEFAULT_STT_REPO
    if sys.stderr.isatty():
        print(f"loading {source} ...", file=sys.stderr, flush=True)
    ckpt = options.load(source)
    SttSettings.of(ckpt.lm)  # a Moshi checkpoint: one line that says so
    # checks the heads (--vad) and the tokenizer, before any audio is read
    SttStream(ckpt.lm, ckpt.mimi, ckpt.tokenizer, batch_size=1, vad=vad)
    return ckpt, source


def _transcribe(args: argparse.Namespace) -> None:
    from mimi_mlx.io.audio import AudioError, audio_info

    if args.list_devices:
        from ..live.devices import list_devices

        print(list_devices())
        return
    fmt = _format_of(args)
    if args.files:
        for f in args.files:
            try:
                audio_info(f)
            except AudioError as e:
                raise UsageError(str(e)) from None
    elif args.batch_size != 8:
        raise UsageError("--batch-size is for files; the microphone is one stream")
    if args.save_audio is not None:
        if args.files:
            raise UsageError("--save-audio is for the microphone (no FILE)")
        from mimi_mlx.io.output_file import OutputError, check_output

        try:
            check_output(args.save_audio, args.force)
        except OutputError as e:
            raise UsageError(str(e)) from None
    outputs = _outputs(args, fmt)
    if args.files:
        _files(args, fmt, outputs)
    else:
        _microphone(args, fmt, outputs)


def _write(results, fmt: str, outputs: list[Path] | None, info: dict) -> None:
    from mimi_mlx.io.output_file import replace_on_success

    from ..formats.subtitles import render

    if outputs is None:
        for r in results:
            sys.stdout.write(render(r, fmt, info))
        sys.stdout.flush()
        return
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    for r, path in zip(results, outputs, strict=True):
        with replace_on_success(path) as tmp:
            tmp.write_text(render(r, fmt, info))
    written = ", ".join(str(p) for p in outputs[:3]) + (" ..." if len(outputs) > 3 else "")
    print(f"wrote {written}", file=sys.stderr)


def _files(args: argparse.Namespace, fmt: str, outputs: list[Path] | None) -> None:
    import time

    from ..jobs.transcribe import transcribe_files

    ckpt, source = _load(args, args.vad, args.batch_size)
    started = time.perf_counter()
    results = transcribe_files(
        ckpt.lm,
        ckpt.mimi,
        ckpt.tokenizer,
        args.files,
        batch_size=args.batch_size,
        vad=args.vad,
        progress=False if args.quiet else None,
    )
    elapsed = time.perf_counter() - started
    _write(results, fmt, outputs, {"checkpoint": recorded_name(source)})
    audio = sum(r.duration for r in results)
    print(
        f"transcribed {len(results)} file(s), {audio:.1f} s of audio in {elapsed:.1f} s "
        f"(real-time factor {elapsed / max(audio, 1e-9):.2f})",
        file=sys.stderr,
    )


def _microphone(args: argparse.Namespace, fmt: str, outputs: list[Path] | None) -> None:
    from ..jobs.stt import SttStream
    from ..live.devices import choose_device
    from ..live.dictation import DictationOptions, run_dictation
    from ..live.microphone import Microphone

    device = choose_device(args.input_device, "input", args.device_rate)
    ckpt, source = _load(args, args.vad, 1)
    stream = SttStream(ckpt.lm, ckpt.mimi, ckpt.tokenizer, vad=args.vad)
    dictation = DictationOptions(
        duration=args.duration,
        max_lag_frames=max(1, round(args.max_lag / 80)),
        save_audio=args.save_audio,
    )
    result = run_dictation(stream, Microphone(device), dictation)
    if outputs is not None:
        _write([result], fmt, outputs, {"checkpoint": recorded_name(source)})
    if args.save_audio is not None:
        print(f"wrote {args.save_audio} ({result.duration:.1f} s)", file=sys.stderr)
    skipped = dictation.stats.get("skipped_frames", 0)
    print(
        f"session: {result.duration:.1f} s heard, {len(result.words)} words, "
        f"{skipped} frames skipped",
        file=sys.stderr,
    )
