"""`moshi-mlx echo-cancel`: the chat's echo cancellation on recorded files."""

from __future__ import annotations

import argparse
import sys

from mimi_mlx.io.cli_support import UsageError, refuse_overwriting


def register(command) -> None:
    """Add the `echo-cancel` subcommand (`command(name, help)` makes a subparser)."""
    cancel = command(
        "echo-cancel",
        "take what was played out of a recorded microphone, exactly as the chat does "
        "(MIC PLAYED -> OUT; e.g. mic.wav and played.wav of `chat --record`)",
    )
    cancel.add_argument("mic", metavar="MIC", help="the microphone's recording (any format)")
    cancel.add_argument("played", metavar="PLAYED", help="what the speaker played meanwhile")
    cancel.add_argument("output", metavar="OUT", help="the microphone without the echo (.wav)")
    cancel.add_argument("-f", "--force", action="store_true", help="overwrite OUT")
    cancel.set_defaults(handler=_echo_cancel)


def _echo_cancel(args: argparse.Namespace) -> None:
    from mimi_mlx.constants import SAMPLE_RATE
    from mimi_mlx.io.audio import AudioError, output_format, read_audio, write_audio
    from mimi_mlx.io.output_file import check_output

    from ..live.echo import OFFLINE_SEARCH, cancel_recording, check_engine

    try:
        output_format(args.output)
    except AudioError as e:
        raise UsageError(str(e)) from None
    refuse_overwriting([args.output], [args.mic, args.played])
    check_output(args.output, args.force)
    check_engine()
    mic = read_audio(args.mic, SAMPLE_RATE)
    played = read_audio(args.played, SAMPLE_RATE)
    result = cancel_recording(mic, played)
    write_audio(args.output, result.audio, SAMPLE_RATE, float32=True)
    if result.delay_ms is None:
        print(
            f"no echo of PLAYED ({args.played}) found in MIC ({args.mic}, first "
            f"{OFFLINE_SEARCH:g} s searched): wrote {args.output} "
            f"({len(mic) / SAMPLE_RATE:.1f} s), MIC as recorded",
            file=sys.stderr,
        )
        return
    print(
        f"echo of PLAYED found at {result.delay_ms:+.0f} ms in MIC (MIC's time minus PLAYED's: "
        f"the delay, less how much later MIC's recording started); echo reduced by "
        f"{result.reduction_db:.1f} dB (median 80 ms frame of the {result.echo_seconds:.1f} s "
        f"where it played); wrote {args.output} "
        f"({len(mic) / SAMPLE_RATE:.1f} s, 24 kHz)",
        file=sys.stderr,
    )
