"""`moshi-mlx assistant`: talk with a text LLM through Kyutai's STT and TTS (Unmute, on a Mac)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mimi_mlx.io.cli_support import UsageError

from . import options
from .speak import DEFAULT_VOICE

DEFAULT_STT = "kyutai/stt-1b-en_fr-candle"  # the end-of-turn head; 1B parameters, bf16
DEFAULT_TTS = "kyutai/tts-1.6b-en_fr"  # 1.6B, bf16
DEFAULT_LLM = "mlx-community/Qwen2.5-3B-Instruct-4bit"  # 3B in 4 bits
DEFAULT_TRIO_GB = 8  # the three together, about (2.4 + 3.6 + 1.8 GB): fits a 16 GB Mac
DEFAULT_TTS_TEMPERATURE = 0.6
DEFAULT_SYSTEM = (
    "You are a helpful voice assistant. Your answers are spoken aloud: keep them short, in "
    "plain sentences, without lists, markdown or emojis."
)

EXAMPLES = f"""\
examples:
  moshi-mlx assistant                              # talk: microphone in, speaker out
  moshi-mlx assistant --llm mlx-community/Llama-3.2-3B-Instruct-4bit --system "Be funny."
  moshi-mlx assistant --llm-url http://127.0.0.1:8080    # mlx_lm.server, LM Studio, ...
  moshi-mlx assistant --llm-url http://127.0.0.1:11434 --llm llama3.2   # Ollama
  moshi-mlx assistant question.wav answer.wav --json answer.json   # file to file
  moshi-mlx assistant --record talk/               # keep both voices, texts and timings

Defaults: STT {DEFAULT_STT} (its end-of-turn head decides when you are done),
TTS {DEFAULT_TTS}, LLM {DEFAULT_LLM}: about {DEFAULT_TRIO_GB} GB together, for a
16 GB Mac. `--llm` takes anything mlx-lm loads. With an STT repo without the end-of-turn head
(Kyutai's -mlx repos), a turn ends after a second of silence."""


def register(command) -> None:
    """Add the `assistant` subcommand (`command(name, help)` makes a subparser)."""
    sub = command(
        "assistant",
        "talk with a text LLM (mlx-lm or an OpenAI-compatible server) through Kyutai's STT "
        "and TTS; or answer a recorded turn, file to file",
    )
    sub.epilog = EXAMPLES
    sub.add_argument("input", nargs="?", metavar="IN", help="the user's turn(s), an audio file")
    sub.add_argument("output", nargs="?", metavar="OUT", help="the spoken answers (with IN)")
    sub.add_argument("--json", metavar="FILE", help="with IN: turns, texts, words and timings")
    sub.add_argument(
        "--float", dest="float32", action="store_true", help="with IN: 32-bit float samples"
    )
    models = sub.add_argument_group("models")
    models.add_argument(
        "--llm",
        metavar="NAME|DIR",
        help=f"an mlx-lm model (default {DEFAULT_LLM}); with --llm-url, the server's model name",
    )
    models.add_argument(
        "--llm-url",
        metavar="URL",
        help="an OpenAI-compatible server instead (mlx_lm.server, Ollama, LM Studio)",
    )
    models.add_argument("--stt", metavar="REPO|DIR", help=f"STT checkpoint (default {DEFAULT_STT})")
    models.add_argument("--tts", metavar="REPO|DIR", help=f"TTS checkpoint (default {DEFAULT_TTS})")
    models.add_argument("--voice", metavar="NAME|FILE", help=f"TTS voice (default {DEFAULT_VOICE})")
    models.add_argument("--system", metavar="TEXT", help="the system prompt (default: be brief)")
    llm = sub.add_argument_group("the LLM's sampling (mlx-lm's names)")
    llm.add_argument(
        "--temperature",
        type=options.non_negative,
        default=0.7,
        metavar="T",
        help="0: greedy (default 0.7)",
    )
    llm.add_argument("--top-p", type=options.probability, default=1.0, metavar="P")
    llm.add_argument(
        "--max-tokens",
        type=options.positive_int,
        default=200,
        metavar="N",
        help="an answer's length bound (default 200)",
    )
    llm.add_argument("--seed", type=options.seed, metavar="N", help="seeds the LLM and the TTS")
    llm.add_argument(
        "--tts-temperature",
        type=options.non_negative,
        default=DEFAULT_TTS_TEMPERATURE,
        metavar="T",
        help=f"the TTS's temperature (default {DEFAULT_TTS_TEMPERATURE}; 0: the same voice "
        "every time)",
    )
    live = sub.add_argument_group("live (no IN)")
    live.add_argument("--list-devices", action="store_true", help="list the audio devices")
    live.add_argument("--input-device", metavar="ID", help="index or part of the name")
    live.add_argument("--output-device", metavar="ID", help="index or part of the name")
    live.add_argument(
        "--echo-cancel",
        choices=("on", "off"),
        default="on",
        help="take the assistant's voice out of the microphone (default on; off: headphones)",
    )
    live.add_argument(
        "--record",
        type=Path,
        metavar="DIR",
        help="save both voices, the transcript and the timings",
    )
    live.add_argument("--duration", type=options.positive, metavar="S", help="stop after S s")
    sub.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    sub.set_defaults(handler=_assistant)


def _check(args: argparse.Namespace) -> None:
    from mimi_mlx.io.audio import AudioError, audio_info, output_format
    from mimi_mlx.io.output_file import OutputError, check_output

    if args.input is None:
        if args.output or args.json:
            raise UsageError("OUT and --json go with IN (the file mode): give IN OUT")
        return
    if args.output is None:
        raise UsageError("give OUT, the file for the spoken answers (IN OUT)")
    if args.record is not None:
        raise UsageError("--record is for the live mode; with IN OUT use --json")
    try:
        audio_info(args.input)
        output_format(args.output)
        outputs = [Path(args.output)] + ([Path(args.json)] if args.json else [])
        if len({p.resolve() for p in outputs + [Path(args.input)]}) != len(outputs) + 1:
            raise UsageError("IN, OUT and --json must be three different files")
        for path in outputs:
            check_output(path, args.force)
    except (AudioError, OutputError) as e:
        raise UsageError(str(e)) from None


def load_llm(args: argparse.Namespace):
    """The text model the options name."""
    from ..jobs.llm import LlmSettings, MlxTextModel, ServerTextModel

    settings = LlmSettings(args.temperature, args.top_p, args.max_tokens, args.seed)
    if args.llm_url:
        return ServerTextModel(args.llm_url, settings, args.llm)
    return MlxTextModel(args.llm or DEFAULT_LLM, settings)


def load_assistant(args: argparse.Namespace):
    """Load the STT, the TTS and the LLM (saying which, before the long loads)."""
    from ..jobs.assistant import Assistant
    from ..jobs.stt import SttStream
    from ..jobs.tts import TextToSpeech, TtsSettings, load_voice

    stt_source, tts_source = args.stt or DEFAULT_STT, args.tts or DEFAULT_TTS
    llm_name = (
        f"{args.llm or 'the server model'} at {args.llm_url}"
        if args.llm_url
        else (args.llm or DEFAULT_LLM)
    )
    trio = f"STT {stt_source}, TTS {tts_source}, LLM {llm_name}"
    if not (args.stt or args.tts or args.llm or args.llm_url):
        trio += f" (about {DEFAULT_TRIO_GB} GB together)"
    print(f"loading {trio} ...", file=sys.stderr, flush=True)
    stt_ckpt = options.load(stt_source)
    vad = bool(stt_ckpt.lm.extra_heads)
    stream = SttStream(stt_ckpt.lm, stt_ckpt.mimi, stt_ckpt.tokenizer, vad=vad)
    if not vad:
        from ..jobs.turns import SILENCE_SECONDS

        print(
            f"note: {stt_source} has no end-of-turn head (Kyutai's -mlx STT repos lack it): a "
            f"turn ends after {SILENCE_SECONDS:g} s of silence instead; "
            f"{DEFAULT_STT} has the head",
            file=sys.stderr,
        )
    tts = TextToSpeech(options.load(tts_source))
    voice = load_voice(args.voice or DEFAULT_VOICE, tts)
    settings = TtsSettings(temperature=args.tts_temperature, seed=args.seed)
    llm = load_llm(args)
    system = DEFAULT_SYSTEM if args.system is None else args.system or None
    return Assistant(llm, tts, [voice], settings, system), stream


def _assistant(args: argparse.Namespace) -> None:
    if args.list_devices:
        from ..live.devices import list_devices

        print(list_devices())
        return
    _check(args)
    if args.input is None:
        from ..live.assistant import run_live

        run_live(args, load_assistant)
        return
    assistant, stream = load_assistant(args)
    _file(args, assistant, stream)


def print_exchange(exchange) -> None:
    """The transcript of both sides, one line each."""
    print(f"user: {exchange.user.text}", flush=True)
    said = " ".join(w.text for w in exchange.reply.spoken())
    print(f"assistant: {said}", flush=True)


def _file(args: argparse.Namespace, assistant, stream) -> None:
    from mimi_mlx.constants import SAMPLE_RATE
    from mimi_mlx.io.audio import AudioWriter
    from mimi_mlx.io.output_file import replace_on_success

    from ..jobs.assistant_file import answer_file

    with AudioWriter(args.output, SAMPLE_RATE, args.float32) as writer:
        result = answer_file(assistant, stream, args.input, writer.write, print_exchange)
    if args.json:
        content = {
            "stt": args.stt or DEFAULT_STT,
            "tts": args.tts or DEFAULT_TTS,
            "voice": args.voice or DEFAULT_VOICE,
            "llm": assistant.llm.name,
            "system": assistant.system,
            "settings": {
                "temperature": args.temperature,
                "top_p": args.top_p,
                "max_tokens": args.max_tokens,
                "seed": args.seed,
                "tts_temperature": args.tts_temperature,
            },
            **result.to_dict(),
        }
        with replace_on_success(args.json) as tmp:
            tmp.write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n")
    n = len(result.exchanges)
    print(
        f"wrote {args.output}{' and ' + args.json if args.json else ''}: {n} turn(s) in "
        f"{result.total_seconds:.1f} s",
        file=sys.stderr,
    )
