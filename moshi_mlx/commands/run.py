"""`moshi-mlx run`: feed a recorded user stream through Moshi, file to file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mimi_mlx.io.cli_support import UsageError, refuse_overwriting
from mimi_mlx.io.hub import recorded_name

from . import options, prompting

EXAMPLES = """\
examples:
  moshi-mlx run question.wav answer.wav --seed 42   # answer.txt and answer.json get the text
  moshi-mlx run talk/user.wav again.wav --session talk/session.json --float
                                    # replay a recorded chat bit for bit
  moshi-mlx run in.flac out.wav --temperature 0     # greedy: the same output every time
  moshi-mlx run french.wav english.wav --model hibiki   # translate a recording
  moshi-mlx run es.wav en.wav --model hibiki-zero --temperature 0   # fr, es, pt, de -> en
  moshi-mlx run a.wav b.mp3 out/ --model hibiki-zero   # a batch: out/a.wav, out/b.wav, ...
  moshi-mlx run in.wav out.wav --checkpoint tiny/   # a tiny random checkpoint (it makes noise)

Exit status: 0 on success, 1 on a failure, 2 on a usage error, 130 on Ctrl-C, 143 on SIGTERM."""


def register(command) -> None:
    """Add the `run` subcommand (`command(name, help)` makes a subparser)."""
    run = command("run", "feed a recorded user stream through Moshi: IN audio -> OUT audio + text")
    run.add_argument(
        "input",
        metavar="IN",
        nargs="+",
        help="the user's audio (any format soundfile reads); several: a batch of files, "
        "one after the other on the model loaded once",
    )
    run.add_argument(
        "output",
        metavar="OUT",
        help="Moshi's audio (.wav); the text goes beside it, with .txt and .json for its "
        "suffix (answer.wav: answer.txt, answer.json); with several inputs a folder (created), "
        "which gets IN's name with .wav for each",
    )
    run.epilog = EXAMPLES
    options.add_model_options(run)
    prompting.add_prompt_options(run)
    run.add_argument(
        "--float", dest="float32", action="store_true", help="write 32-bit float samples"
    )
    run.add_argument(
        "--max-tail",
        type=options.non_negative,
        default=60.0,
        metavar="S",
        help="translation models (Hibiki): after the input, go on until the model ends its "
        "translation, at most S seconds (default 60)",
    )
    run.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=_run)


def _pairs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(input, output) of each file: OUT itself, or OUT/<IN's stem>.wav for a batch."""
    if len(args.input) == 1:
        return [(args.input[0], Path(args.output))]
    folder = Path(args.output)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: with several inputs, OUT is a folder")
    pairs = [(src, folder / f"{Path(src).stem}.wav") for src in args.input]
    names = [dst.name for _, dst in pairs]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise UsageError(f"two inputs would both write {folder / clash}: rename one")
    return pairs


def _run(args: argparse.Namespace) -> None:
    from mimi_mlx.io.audio import AudioError, audio_info, output_format
    from mimi_mlx.io.output_file import check_output

    from ..jobs.offline import EndOfStream, transcript_paths

    pairs = _pairs(args)
    if len(pairs) > 1:
        Path(args.output).mkdir(parents=True, exist_ok=True)
    for src, dst in pairs:
        try:
            output_format(dst)
        except AudioError as e:
            raise UsageError(str(e)) from None
        outputs = (dst, *transcript_paths(dst))
        refuse_overwriting(outputs, [*args.input, args.voice_prompt, args.session])
        audio_info(src)
        for path in outputs:
            check_output(path, args.force)
    from .session import dialogue_session, resident

    args = prompting.with_session(args)
    session = dialogue_session(args, options.source_of(args))
    pipeline = session.pipeline
    end = None
    if session.profile.end_of_stream and pipeline.tokenizer is not None:
        # translate to the end of what was said
        end = EndOfStream(
            pipeline.tokenizer.eos_id,
            round(args.max_tail * 12.5),
            warmup_silence=session.profile.warmup_silence,
        )
    with resident(pipeline):
        for src, dst in pairs:
            _one(args, session, src, dst, end)


def _one(args: argparse.Namespace, session, src: str, dst: Path, end) -> None:
    """Run one file and say what was written."""
    from ..jobs.offline import run_file, transcript_paths

    pipeline = session.pipeline
    result = run_file(
        pipeline,
        src,
        dst,
        float32=args.float32,
        progress=False if args.quiet else None,
        info={**session.info, "input": recorded_name(src)},
        end_of_stream=end,
    )
    text_path, json_path = transcript_paths(dst)
    print(result.transcript.text)
    if result.ended == "end-of-text":
        print("stopped at the model's end of text", file=sys.stderr)
    elif result.ended == "max-tail":
        print(
            f"stopped at --max-tail {args.max_tail:g} s: the model had not ended its text",
            file=sys.stderr,
        )
    print(
        f"wrote {dst} ({result.written_seconds:.1f} s), "
        f"{text_path} and {json_path}: "
        f"{result.steps} steps in {result.elapsed:.1f} s (real-time factor "
        f"{result.real_time_factor:.2f}, seed {pipeline.seed})",
        file=sys.stderr,
    )
