"""`moshi-mlx speak`: Kyutai's TTS, text to a file or streamed to the speaker."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

from mimi_mlx.io.cli_support import UsageError, refuse_overwriting

from ..jobs.known import MODELS
from . import options

DEFAULT_TTS_MODEL = "tts-1.6b-en_fr"
DEFAULT_TTS_REPO = MODELS[DEFAULT_TTS_MODEL].repo  # kyutai/tts-1.6b-en_fr
DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"

EXAMPLES = """\
examples:
  moshi-mlx speak "Hello there." hello.wav            # kyutai/tts-1.6b-en_fr, default voice
  moshi-mlx speak "Hello there."                      # play it while it is generated
  moshi-mlx speak --text-file page.txt page.wav --json page.json   # + word timestamps
  echo "Bonjour !" | moshi-mlx speak - out.wav --voice vctk/p225_023.wav --cfg 3
  moshi-mlx speak --text-file dialogue.txt talk.wav --voice A.safetensors --voice B.safetensors
                                                      # 2+ voices: each line is a turn
  moshi-mlx speak "Hi." --checkpoint tiny-tts/ --voice tiny --temperature 0   # tiny, offline
"""


def register(command) -> None:
    """Add the `speak` subcommand (`command(name, help)` makes a subparser)."""
    speak = command(
        "speak",
        "text to speech with Kyutai's TTS: to an audio file, or streamed to the speaker",
    )
    speak.epilog = EXAMPLES
    speak.add_argument("text", nargs="?", metavar="TEXT", help='the text ("-": read it from stdin)')
    speak.add_argument(
        "output", nargs="?", metavar="OUT", help="audio file to write (default: play it)"
    )
    speak.add_argument("--text-file", metavar="FILE", help="read the text from a file")
    model = speak.add_argument_group("model")
    which = model.add_mutually_exclusive_group()
    which.add_argument(
        "--hf-repo", metavar="REPO", help=f"hub repo id (default {DEFAULT_TTS_REPO})"
    )
    which.add_argument(
        "--checkpoint", metavar="PATH", help="local TTS checkpoint folder (Kyutai's layout)"
    )
    options.add_kind_model_options(which, model, "tts", DEFAULT_TTS_MODEL)
    voice = speak.add_argument_group("voice and sampling")
    voice.add_argument(
        "--voice",
        action="append",
        metavar="NAME|FILE",
        help="a voice name (the checkpoint folder's voices/, else kyutai/tts-voices) or a "
        f".safetensors voice (default: the folder's first voice, else {DEFAULT_VOICE}); "
        "repeat for a dialogue: each line of the text is then a turn, the voices in order",
    )
    voice.add_argument(
        "--list-voices",
        action="store_true",
        help="list the voices --voice can name: the checkpoint folder's and the hub cache's",
    )
    voice.add_argument(
        "--cfg",
        type=float,
        default=2.0,
        metavar="X",
        help="guidance strength, one of the model's values (1.0 .. 4.0 by 0.5; default 2.0)",
    )
    voice.add_argument(
        "--temperature",
        type=options.non_negative,
        default=0.6,
        metavar="T",
        help="text and audio temperature (default 0.6; 0: greedy, the same output every time)",
    )
    voice.add_argument("--seed", type=options.seed, metavar="N", help="random seed")
    voice.add_argument(
        "--num-codebooks",
        type=options.positive_int,
        metavar="N",
        help="audio codebooks to generate, 8..32 for Kyutai's TTS (fewer decode faster; "
        "default: all)",
    )
    out = speak.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the words with their times (seconds)")
    out.add_argument("--output-device", metavar="ID", help="speaker: index or part of the name")
    out.add_argument(
        "--buffer",
        type=options.non_negative,
        default=0.32,
        metavar="S",
        help="speaker: seconds of speech generated before playback starts (default 0.32; more "
        "for a machine slower than real time, so the speech does not stutter)",
    )
    out.add_argument(
        "--float", dest="float32", action="store_true", help="write 32-bit float samples"
    )
    out.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    speak.set_defaults(handler=_speak, takes_extras=True)


def read_text(args: argparse.Namespace) -> str:
    """The text to speak, from TEXT, stdin (`-`) or --text-file; UsageError when empty."""
    from mimi_mlx.io.cli_support import InputError

    extras = getattr(args, "extras", None) or []
    if args.text_file is not None:
        if args.text is not None and args.output is None and not extras:
            args.output, args.text = args.text, None  # `--text-file F OUT`
        if args.text is not None:
            raise UsageError(
                "TEXT and --text-file exclude each other: give the text one way "
                f"(`speak --text-file {args.text_file} OUT` or `speak TEXT OUT`)"
            )
    if extras:
        raise UsageError(f"unrecognized arguments: {' '.join(extras)}")
    if args.text_file is not None:
        path = Path(args.text_file)
        if not path.is_file():
            raise InputError(f"no such text file: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read {path} as UTF-8 text ({e})") from None
    elif args.text == "-":
        text = sys.stdin.read()
    elif args.text is None:
        raise UsageError("nothing to say: give TEXT, `-` for stdin, or --text-file FILE")
    else:
        text = args.text
    if not text.strip():
        raise UsageError("the text is empty: nothing to say")
    return text


def _check_outputs(args: argparse.Namespace) -> None:
    from mimi_mlx.io.audio import AudioError, output_format
    from mimi_mlx.io.output_file import check_output

    voice_files = [v for v in args.voice or [] if Path(v).expanduser().is_file()]
    refuse_overwriting(
        [p for p in (args.output, args.json) if p is not None],
        [args.text_file, args.checkpoint, *voice_files],
    )
    if args.output is not None:
        try:
            output_format(args.output)
        except AudioError as e:
            raise UsageError(str(e)) from None
        check_output(args.output, args.force)
    if args.json is not None:
        if args.output is not None and Path(args.json).resolve() == Path(args.output).resolve():
            raise UsageError("--json and OUT name the same file")
        check_output(args.json, args.force)


def _speak(args: argparse.Namespace) -> None:
    from ..jobs.tts import TextToSpeech, TtsSettings, folder_voices, load_voice

    if args.list_voices:
        _list_voices(args)
        return
    text = read_text(args)
    _check_outputs(args)
    device = None
    if args.output is None:  # fail fast, before the model load
        from ..live.devices import choose_device

        device = choose_device(args.output_device, "output")
    source = options.kind_source_of(args, DEFAULT_TTS_MODEL)
    if sys.stderr.isatty():
        print(f"loading {source} ...", file=sys.stderr, flush=True)
    lora, lora_scaling = options.lora_of_args(args)
    tts = TextToSpeech(options.load(source, lora=lora, lora_scaling=lora_scaling))
    n_q = tts.lm.cfg.dep_q
    if args.num_codebooks is not None and args.num_codebooks > n_q:
        raise UsageError(f"--num-codebooks must be in 1..{n_q} for this model")
    if tts.cfg_values and args.cfg not in tts.cfg_values:
        values = ", ".join(f"{v:g}" for v in tts.cfg_values)
        raise UsageError(f"--cfg {args.cfg:g} is not one this model knows: use one of {values}")
    args.voice = args.voice or (folder_voices(tts) or [DEFAULT_VOICE])[:1]
    voices = [load_voice(v, tts) for v in args.voice]
    script: str | list[str] = text
    if len(voices) > 1:  # a dialogue: one turn a line
        script = [line for line in text.splitlines() if line.strip()]
    seed = args.seed if args.seed is not None else secrets.randbits(63)
    settings = TtsSettings(
        temperature=args.temperature,
        cfg=args.cfg,
        num_codebooks=args.num_codebooks,
        seed=seed,
    )
    tts.conditions(voices, settings.cfg)  # a bad --cfg fails here, before any output

    start = time.perf_counter()
    first: list[float] = []
    words = []
    frames = 0

    def audio():
        nonlocal frames
        for frame in tts.frames(script, voices, settings):
            words.extend(frame.words)
            if frame.codes.size:
                pcm = tts.decode(frame)
                if not first:
                    first.append(time.perf_counter() - start)
                frames += 1
                yield pcm
        tts.mimi.reset_decoder()

    if args.output is not None:
        _to_file(args, tts, audio())
    else:
        _to_speaker(device, audio(), first, args.buffer)
    elapsed = time.perf_counter() - start
    seconds = frames * 0.08
    if args.json is not None:
        _write_json(args, source, seed, text, words, seconds)
    where = f"wrote {args.output}" if args.output else "played"
    written = f" and {args.json}" if args.json else ""
    rtf = elapsed / seconds if seconds else 0.0
    first_audio = f", first audio after {first[0]:.2f} s" if first else ""
    print(
        f"{where}{written}: {seconds:.2f} s of speech, {len(words)} "
        f"word{'' if len(words) == 1 else 's'}, in {elapsed:.1f} s "
        f"(real-time factor {rtf:.2f}{first_audio}, seed {seed})",
        file=sys.stderr,
    )


def _to_file(args: argparse.Namespace, tts, blocks) -> None:
    from mimi_mlx.io.audio import AudioWriter

    progress = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(desc="speaking", unit="s", unit_scale=0.08, file=sys.stderr)
    with AudioWriter(args.output, tts.mimi.sample_rate, args.float32) as writer:
        for pcm in blocks:
            writer.write(pcm)
            if progress is not None:
                progress.update(1)
    if progress is not None:
        progress.close()


def _to_speaker(device, blocks, first: list[float], buffer: float) -> None:
    from ..live.speaker import Speaker

    prefill = max(1, round(buffer / 0.08))
    with Speaker(
        device, prefill_frames=prefill, max_buffered_seconds=max(10.0, 2 * buffer)
    ) as speaker:
        for pcm in blocks:
            speaker.play(pcm)
            if len(first) == 1:
                print(f"first audio after {first[0]:.2f} s", file=sys.stderr, flush=True)
                first.append(0.0)
        speaker.finish()


def _write_json(args, source: str, seed: int, text: str, words, seconds: float) -> None:
    from mimi_mlx.io.output_file import replace_on_success

    items = []
    for i, w in enumerate(words):
        end = words[i + 1].start if i + 1 < len(words) else seconds
        items.append({"word": w.text, "start": round(w.start, 3), "end": round(end, 3)})
    from mimi_mlx.io.hub import recorded_name

    content = {
        "checkpoint": recorded_name(source),  # absolute: valid from any folder
        "text": text,
        "voices": args.voice,
        "cfg": args.cfg,
        "temperature": args.temperature,
        "seed": seed,
        "num_codebooks": args.num_codebooks,
        "seconds": round(seconds, 3),
        "words": items,
    }
    with replace_on_success(args.json) as tmp:
        tmp.write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n")


def _list_voices(args: argparse.Namespace) -> None:
    """Print the voices of the checkpoint folder and of the hub cache's kyutai/tts-voices."""
    from mimi_mlx.io.hub import cached_snapshot

    from ..jobs.tts import VOICE_REPO, voice_names

    if args.checkpoint is not None:
        folder = Path(args.checkpoint).expanduser()
        names = voice_names(folder / "voices")
        print(f"{folder / 'voices'}: {', '.join(names) if names else '(none)'}")
    names = voice_names(cached_snapshot(VOICE_REPO))
    if names:
        print(f"{VOICE_REPO} (local cache, {len(names)}):")
        print("\n".join(f"  {n}" for n in names))
    else:
        print(
            f"{VOICE_REPO}: not in the local cache; a name from "
            f"https://huggingface.co/{VOICE_REPO} is fetched when used "
            f"(`hf download {VOICE_REPO}` fetches them all)"
        )
