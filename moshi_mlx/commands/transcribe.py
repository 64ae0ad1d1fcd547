"""`moshi-mlx transcribe`: Kyutai's streaming speech-to-text, on files or on the microphone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mimi_mlx.io.cli_support import UsageError, refuse_overwriting
from mimi_mlx.io.hub import recorded_name

from ..jobs.known import MODELS
from . import options

DEFAULT_STT_MODEL = "stt-1b-en_fr"
DEFAULT_STT_REPO = MODELS[DEFAULT_STT_MODEL].repo  # kyutai/stt-1b-en_fr-mlx

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
    options.add_kind_model_options(which, model, "stt", DEFAULT_STT_MODEL)
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
        help="the transcript file (one input, or the microphone), or a folder (an existing one, "
        "or NAME/ to create it) for several inputs (FILE's name with the format's suffix); "
        "default: stdout (JSON: one line per file; txt, srt, vtt: a ==> FILE <== line before "
        "each of several files), each file's as soon as it is done",
    )
    out.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sub.add_argument(
        "--vad",
        action="store_true",
        help="mark the ends of turns (Kyutai's voice-activity head 2 above 0.5): JSON lists "
        "their times, txt puts a blank line between turns, a subtitle cue ends at each",
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
    """--format, else the --output file's suffix, else txt; a suffix that is not the format's
    is refused (`-o notes.docx` would hold plain text)."""
    from ..formats.subtitles import FORMATS

    suffix = Path(args.output).suffix.lstrip(".").lower() if args.output else ""
    to_file = suffix and not _is_folder(args.output) and len(args.files) <= 1
    if to_file and suffix not in FORMATS:
        raise UsageError(
            f"-o {args.output}: transcripts are {', '.join('.' + f for f in FORMATS)}; "
            "name the file with one of these suffixes"
        )
    if to_file and args.format and suffix != args.format:
        raise UsageError(f"-o {args.output} does not match --format {args.format}")
    return args.format or (suffix if to_file else "txt")


def _is_folder(path: str) -> bool:
    return path.endswith(("/", "\\")) or Path(path).is_dir()


def _outputs(args: argparse.Namespace, fmt: str) -> list[Path] | None:
    """Where each input's transcript goes (None: stdout); refuses clashes before any work."""
    from mimi_mlx.io.output_file import check_output

    if args.output is None:
        return None
    out = Path(args.output)
    if len(args.files) > 1:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--output must be a folder for several files: {out} is a file")
        if not _is_folder(args.output):
            raise UsageError(
                f"several files write one transcript each into a folder: -o {args.output}/ "
                "(a trailing / creates it) or an existing folder"
            )
        paths = [out / f"{Path(f).stem}.{fmt}" for f in args.files]
        clashes = {p for p in paths if paths.count(p) > 1}
        if clashes:
            raise UsageError(f"two inputs would write the same file: {sorted(clashes)[0]}")
    elif _is_folder(args.output):
        paths = [out / f"{Path(args.files[0]).stem if args.files else 'microphone'}.{fmt}"]
    else:
        paths = [out]
    refuse_overwriting(paths, [*args.files, args.save_audio, args.checkpoint])
    for p in paths:
        if not p.parent.exists() and p.parent == out:
            continue  # the folder is created after the checks
        check_output(p, args.force)
    return paths


def _load(args: argparse.Namespace, vad: bool, batch_size: int):
    from ..jobs.stt import SttSettings, SttStream

    source = options.kind_source_of(args, DEFAULT_STT_MODEL)
    if sys.stderr.isatty():
        print(f"loading {source} ...", file=sys.stderr, flush=True)
    lora, lora_scaling = options.lora_of_args(args)
    ckpt = options.load(source, lora=lora, lora_scaling=lora_scaling)
    SttSettings.of(ckpt.lm, ckpt.source)  # a Moshi checkpoint: one line that says so
    # checks the heads (--vad) and the tokenizer, before any audio is read
    SttStream(ckpt.lm, ckpt.mimi, ckpt.tokenizer, batch_size=1, vad=vad)
    return ckpt, source


def _transcribe(args: argparse.Namespace) -> None:
    from mimi_mlx.io.audio import audio_info

    if args.list_devices:
        from ..live.devices import list_devices

        print(list_devices())
        return
    if args.output is not None:  # before its suffix is judged: `-o talk.wav` names an input
        refuse_overwriting([args.output], [*args.files, args.save_audio, args.checkpoint])
    fmt = _format_of(args)
    if args.files:
        for f in args.files:
            audio_info(f)  # AudioError: missing or unreadable (a failure, exit status 1)
    elif args.batch_size != 8:
        raise UsageError("--batch-size is for files; the microphone is one stream")
    if args.save_audio is not None:
        if args.files:
            raise UsageError("--save-audio is for the microphone (no FILE)")
        from mimi_mlx.io.output_file import check_output

        check_output(args.save_audio, args.force)
    outputs = _outputs(args, fmt)
    if args.files:
        _files(args, fmt, outputs)
    else:
        _microphone(args, fmt, outputs)


class _Writer:
    """Each transcript as soon as its file is done: to its output file, or to stdout (JSON: one
    line per file, JSON Lines; txt, srt, vtt: a `==> FILE <==` line first when several)."""

    def __init__(self, fmt: str, outputs: list[Path] | None, info: dict, inputs: list):
        self.fmt, self.outputs, self.info = fmt, outputs, info
        self.where = {Path(f): i for i, f in enumerate(inputs)}
        self.several = len(inputs) > 1
        self.written: list[Path] = []
        # one file's text to a terminal: its words as they come, as dictation shows them
        self.live = outputs is None and fmt == "txt" and len(inputs) == 1 and sys.stdout.isatty()

    def words(self, path: Path, words) -> None:
        sys.stdout.write("".join(f"{w.text} " for w in words))
        sys.stdout.flush()

    def __call__(self, result) -> None:
        import json

        from mimi_mlx.io.output_file import replace_on_success

        from ..formats.subtitles import render

        if self.live:
            sys.stdout.write("\n")  # the words were shown as they came
            sys.stdout.flush()
            return
        if self.outputs is None:
            if self.fmt == "json":
                text = json.dumps({**self.info, **result.to_dict()}, ensure_ascii=False) + "\n"
            else:
                text = render(result, self.fmt, self.info)
                if self.several:
                    text = f"==> {result.path} <==\n{text}"
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        path = self.outputs[self.where.get(Path(result.path), 0)]
        path.parent.mkdir(parents=True, exist_ok=True)
        with replace_on_success(path) as tmp:
            tmp.write_text(render(result, self.fmt, self.info))
        self.written.append(path)

    def report(self) -> None:
        if self.written:
            shown = self.written[:3]
            more = " ..." if len(self.written) > 3 else ""
            print(f"wrote {', '.join(str(p) for p in shown)}{more}", file=sys.stderr)


def _files(args: argparse.Namespace, fmt: str, outputs: list[Path] | None) -> None:
    import time

    from ..jobs.transcribe import transcribe_files

    ckpt, source = _load(args, args.vad, args.batch_size)
    writer = _Writer(fmt, outputs, {"checkpoint": recorded_name(source)}, args.files)
    started = time.perf_counter()
    try:
        results = transcribe_files(
            ckpt.lm,
            ckpt.mimi,
            ckpt.tokenizer,
            args.files,
            batch_size=args.batch_size,
            vad=args.vad,
            progress=False if args.quiet else None,
            on_done=writer,
            on_words=writer.words if writer.live else None,
        )
    finally:
        writer.report()  # what was written before an interrupt stays, and is named
    elapsed = time.perf_counter() - started
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
        writer = _Writer(fmt, outputs, {"checkpoint": recorded_name(source)}, [])
        writer(result)
        writer.report()
    if args.save_audio is not None:
        print(f"wrote {args.save_audio} ({result.duration:.1f} s)", file=sys.stderr)
    skipped = dictation.stats.get("skipped_frames", 0)
    print(
        f"session: {result.duration:.1f} s heard, {len(result.words)} words, "
        f"{skipped} frames skipped",
        file=sys.stderr,
    )
