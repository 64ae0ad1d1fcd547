"""`moshi-mlx chat`: talk with Moshi on the microphone and speaker."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import options, prompting

PREFILL_FRAMES = 2  # the speaker's jitter buffer: 160 ms


def register(command) -> None:
    """Add the `chat` subcommand (`command(name, help)` makes a subparser)."""
    chat = command(
        "chat",
        "talk with Moshi on the microphone and speaker (Ctrl-C ends; also --list-devices)",
    )
    options.add_model_options(chat)
    prompting.add_prompt_options(chat)
    audio = chat.add_argument_group("audio")
    audio.add_argument(
        "--list-devices", action="store_true", help="list the audio devices and exit"
    )
    audio.add_argument("--input-device", metavar="ID", help="index or part of the name")
    audio.add_argument("--output-device", metavar="ID", help="index or part of the name")
    audio.add_argument(
        "--device-rate",
        type=options.positive_int,
        metavar="HZ",
        help="open the devices at this rate and resample (default: 24000 when supported)",
    )
    audio.add_argument(
        "--echo-cancel",
        choices=("on", "off"),
        default="on",
        help="take Moshi's voice out of the microphone, so the laptop's own speakers work "
        "(WebRTC AEC3; default on; off: the raw microphone, e.g. with headphones)",
    )
    session = chat.add_argument_group("session")
    session.add_argument(
        "--record",
        metavar="DIR",
        type=Path,
        help="save user.wav (what Moshi heard), mic.wav (the raw microphone), moshi.wav, "
        "played.wav, transcript.txt/.json and session.json",
    )
    session.add_argument(
        "--stats",
        action="store_true",
        help="print live statistics each second (with the echo delay and reduction)",
    )
    session.add_argument(
        "--max-lag",
        type=options.positive_int,
        default=240,
        metavar="MS",
        help="how far the conversation may fall behind (input waiting for a slow model, or "
        "Moshi's audio beyond the 160 ms jitter buffer) before the oldest audio is skipped "
        "(default 240 ms)",
    )
    session.add_argument(
        "--duration", type=options.positive, metavar="S", help="stop after S seconds"
    )
    session.add_argument("-f", "--force", action="store_true", help="overwrite a recording")
    session.add_argument("-q", "--quiet", action="store_true", help="do not print the text")

    chat.set_defaults(handler=_chat)


def _chat(args: argparse.Namespace) -> None:
    from ..live.audio_io import AudioIO
    from ..live.chat import ChatOptions, run_chat
    from ..live.devices import choose_device, list_devices
    from ..live.recording import check_record_dir

    if args.list_devices:
        print(list_devices())
        return
    # Everything that can fail fast does so before the (long) model load.
    input_device = choose_device(args.input_device, "input", args.device_rate)
    output_device = choose_device(args.output_device, "output", args.device_rate)
    if args.record is not None:
        check_record_dir(args.record, args.force)
    args = prompting.with_session(args)
    if args.echo_cancel == "on":
        from ..live.echo import check_engine

        check_engine()
    from .session import dialogue_session, resident

    session = dialogue_session(args, options.source_of(args), live=True)
    session.pipeline.warmup()
    max_lag_frames = max(1, round(args.max_lag / 80))
    chat_options = ChatOptions(
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
        echo_cancel=args.echo_cancel == "on",
    )
    with resident(session.pipeline):
        run_chat(session.pipeline, audio, chat_options, session.info)
