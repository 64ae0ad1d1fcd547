"""`moshi-mlx serve`: the models behind the protocols their clients speak, and a web page."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path

from mimi_mlx.io.cli_support import UsageError, fail, one_line

from . import options, prompting

API_KEY_ENV = "MOSHI_MLX_API_KEY"


def register(command) -> None:
    """Add the `serve` subcommand (`command(name, help)` makes a subparser)."""
    serve = command(
        "serve",
        "serve the models to Kyutai's clients, OpenAI's SDK and a web page (Ctrl-C ends)",
    )
    options.add_model_options(serve)
    prompting.add_prompt_options(serve)
    speech = serve.add_argument_group("speech to text and text to speech")
    speech.add_argument("--stt", metavar="NAME|DIR", help="also serve a speech-to-text model")
    speech.add_argument("--tts", metavar="NAME|DIR", help="also serve a text-to-speech model")
    llm = serve.add_argument_group("the assistant (a text LLM spoken through --stt and --tts)")
    llm.add_argument(
        "--llm",
        metavar="NAME|DIR",
        help="serve `moshi-mlx assistant` with this mlx-lm model (/api/assistant, the page's "
        "Assistant tab); with --llm-url, the server's model name",
    )
    llm.add_argument(
        "--llm-url", metavar="URL", help="the assistant's LLM on an OpenAI-compatible server"
    )
    llm.add_argument("--system", metavar="TEXT", help="the assistant's system prompt")
    llm.add_argument(
        "--max-tokens",
        type=options.positive_int,
        default=200,
        metavar="N",
        help="an answer's length bound (default 200; a session's `max_tokens` overrides it)",
    )
    net = serve.add_argument_group("network")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this "
        "machine only; 0.0.0.0: every network interface)",
    )
    net.add_argument(
        "--port", type=_port, default=8998, help="port to listen on (default 8998; 0: any free)"
    )
    net.add_argument(
        "--wyoming-port",
        type=_port,
        metavar="N",
        help="also serve --stt and --tts to Home Assistant over its Wyoming protocol on port N "
        "(the Wyoming integration: this machine's address and N)",
    )
    net.add_argument(
        "--ssl",
        type=Path,
        metavar="DIR",
        help="serve https and wss with DIR/cert.pem and DIR/key.pem (a phone's browser gives "
        "the page its microphone only over https)",
    )
    net.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get(API_KEY_ENV),
        help=f"every client must send KEY (default: ${API_KEY_ENV}; none: open)",
    )
    net.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let the web pages of ORIGIN (https://host:port, or *) call the server (CORS)",
    )
    net.add_argument(
        "--static",
        metavar="DIR",
        help="serve the web client in DIR at / instead of our page (DIR/index.html and its "
        "files, as Kyutai's server takes it: their built client, client/dist of "
        "kyutai-labs/moshi); none: no page",
    )
    session = serve.add_argument_group("sessions")
    session.add_argument(
        "--record",
        type=Path,
        metavar="DIR",
        help="keep every speech-to-speech session in its own folder of DIR (as chat --record)",
    )
    session.add_argument(
        "--max-lag",
        type=options.positive_int,
        default=240,
        metavar="MS",
        help="input a chat may have waiting for a slow model before the oldest is skipped "
        "(default 240 ms)",
    )
    serve.set_defaults(handler=_serve)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {value}")
    return value


def serves_chat(args: argparse.Namespace) -> bool:
    """A speech-to-speech model is served when one is named, or when nothing else is."""
    named = args.model or args.checkpoint or args.hf_repo or args.voice
    return bool(named) or not (args.stt or args.tts or args.llm or args.llm_url)


def serves_assistant(args: argparse.Namespace) -> bool:
    """The assistant is served with --llm or --llm-url; it needs --stt and --tts."""
    if not (args.llm or args.llm_url):
        return False
    if not (args.stt and args.tts):
        raise UsageError("the assistant (--llm, --llm-url) needs --stt and --tts as well")
    return True


def _serve(args: argparse.Namespace) -> None:
    from ..serve.server import bind, serve
    from ..serve.services import ServeOptions, Services
    from ..serve.worker import ModelThread

    if args.api_key == "":
        raise UsageError("--api-key is empty")
    if args.record is not None:
        _check_record_dir(args.record)
    page = _page_folder(args.static)
    if args.wyoming_port is not None and not (args.stt or args.tts):
        raise UsageError(
            "--wyoming-port serves speech to text and text to speech: add --stt and/or --tts"
        )
    stt_source = _speech_source(args.stt, "stt", "--stt") if args.stt else None
    tts_source = _speech_source(args.tts, "tts", "--tts") if args.tts else None
    args = prompting.with_session(args)
    assistant = serves_assistant(args)
    source = options.source_of(args) if serves_chat(args) else None
    options.lora_of_args(args)  # a missing adapter fails now, not after the port is bound
    if args.lora is not None and source is None:
        raise UsageError("--lora fine-tunes the speech-to-speech model: name one (--model, ...)")
    serve_options = ServeOptions(
        host=args.host,
        port=args.port,
        ssl=args.ssl,
        api_key=args.api_key,
        record=args.record,
        allow_origins=tuple(args.allow_origin),
        max_lag_frames=max(1, round(args.max_lag / 80)),
        page=page,
    )
    sock = bind(serve_options)  # a port in use fails now, not after the load
    wyoming = None
    if args.wyoming_port is not None:
        try:
            wyoming = bind(replace(serve_options, port=args.wyoming_port))
        except OSError as e:
            sock.close()
            raise OSError(str(e).replace("--port", "--wyoming-port")) from None
    thread = ModelThread()
    thread.start()
    services = Services(thread, serve_options)

    async def load() -> None:
        from ..serve.chat_service import ChatService
        from ..serve.services import served_name

        if source is not None:
            services.chat = await thread.call(ChatService.load, args, source)
        if stt_source is not None:
            from ..serve.stt_service import SttService

            ckpt = await thread.call(options.load, stt_source)
            services.stt = SttService(ckpt, served_name(args.stt), thread)
        if tts_source is not None:
            from ..jobs.tts import TextToSpeech
            from ..serve.tts_service import TtsService

            tts = await thread.call(lambda: TextToSpeech(options.load(tts_source)))
            services.tts = TtsService(tts, served_name(args.tts), thread)
        if assistant:
            services.assistant = await thread.call(_load_assistant, args)

    status = 0
    try:
        asyncio.run(serve(services, sock, load, _describe, wyoming))
    except (ValueError, OSError, RuntimeError) as e:  # a model that cannot be loaded
        thread.stop(wait=False)
        status = fail(one_line(e), 1)  # (as the CLI says it, without MLX's destructors)
    except BaseException:
        thread.stop(wait=False)  # (a load interrupted: not waited for)
        raise
    finally:
        sock.close()
        if wyoming is not None:
            wyoming.close()
    if status == 0:
        thread.stop()
    # MLX gave the model thread a stream of its own, whose worker its static destructors cannot
    # join ("terminate called without an active exception", exit 134 or -6): everything is
    # saved and closed by now, so leave without them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _load_assistant(args: argparse.Namespace):
    """The assistant's text model and defaults (on the model thread)."""
    from ..jobs.llm import LlmSettings, MlxTextModel, ServerTextModel
    from ..jobs.tts import TtsSettings
    from ..serve.assistant_service import AssistantService
    from ..serve.services import served_name
    from .assistant import DEFAULT_LLM, DEFAULT_SYSTEM, DEFAULT_TTS_TEMPERATURE

    settings = LlmSettings(max_tokens=args.max_tokens)
    if args.llm_url:
        llm = ServerTextModel(args.llm_url, settings, args.llm)
        name = llm.name  # (the server's model name and its URL: no path)
    else:
        llm = MlxTextModel(args.llm or DEFAULT_LLM, settings)
        name = served_name(llm.name)
    system = DEFAULT_SYSTEM if args.system is None else args.system or None
    tts = TtsSettings(temperature=DEFAULT_TTS_TEMPERATURE)
    return AssistantService(llm, name, system, settings, tts)


def _describe(services, base: str) -> list[str]:
    """What the ready message lists, under the URL."""
    ws = base.replace("http", "ws", 1)
    from ..serve.services import OUR_PAGE

    page = services.options.page
    lines = [f"what is served: {base}api/info"]
    if page is not None:
        lines.insert(0, f"page: {base}" + ("" if page == OUR_PAGE else f" (from {page})"))
    if services.chat is not None:
        host, port = base.split("://")[1].rstrip("/").rsplit(":", 1)
        https = " --https" if base.startswith("https") else ""
        lines.append(
            f"chat ({services.chat.info()['model']}): {ws}api/chat, Kyutai's protocol "
            f"(python -m moshi.client --host {host.strip('[]')} --port {port}{https})"
        )
    if services.assistant is not None:
        lines.append(
            f"assistant ({services.assistant.llm.name}): {ws}api/assistant, "
            f"the page: {base}?autostart=assistant"
        )
    return lines


def _speech_source(text: str, kind: str, flag: str) -> str:
    """A known model's repo (of `kind`), a folder, or a hub repo id."""
    from mimi_mlx.io.hub import looks_like_repo_id

    from ..jobs.known import MODELS, UnknownModelError, known_model

    if text in MODELS:
        try:
            return options.repo_at(known_model(text, (kind,)), None)
        except UnknownModelError as e:
            raise UsageError(f"{flag}: {e}") from None
    if Path(text).expanduser().exists() or looks_like_repo_id(text):
        return text
    names = ", ".join(n for n, m in MODELS.items() if m.kind == kind)
    raise UsageError(f"{flag} {text}: not a folder, a hub repo or a known model ({names})")


def _page_folder(static: str | None) -> Path | None:
    """The web page's folder: ours (no --static), none (`--static none`, as Kyutai's server),
    or DIR, which must hold an index.html."""
    from ..serve.services import OUR_PAGE

    if static is None:
        return OUR_PAGE
    if static == "none":
        return None
    folder = Path(static).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--static {static}: no such folder (give a built web client's folder)")
    if not (folder / "index.html").is_file():
        raise UsageError(
            f"--static {static}: no index.html there (give a built web client's folder, such as "
            "Kyutai's client/dist after `npm run build`)"
        )
    return folder.resolve()


def _check_record_dir(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--record needs a folder, {folder} is a file")
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise UsageError(f"--record {folder}: the folder is not writable")
