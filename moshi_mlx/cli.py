"""`moshi-mlx`: one command line for every job, a subcommand each (see `moshi_mlx/commands/`)."""

from __future__ import annotations

import argparse
import sys

from mimi_mlx.io.cli_support import OneLineParser, add_version, run_cli

from .commands import assistant, chat, echo_cancel, models, run, serve, speak, transcribe

# each module's `register(command)` adds its subcommand
COMMANDS = (chat, run, transcribe, speak, serve, assistant, echo_cancel, models)

EXAMPLES = """\
examples:
  moshi-mlx chat                                  # talk with Moshiko (kyutai/moshiko-mlx-q4)
  moshi-mlx chat --model moshika --record talk/   # Moshika; save both voices and the text
  moshi-mlx chat --model personaplex --voice-prompt NATF2 --prompt "You are a patient teacher."
                                                  # PersonaPlex: a voice and a persona
  moshi-mlx chat --model hibiki                   # speak French, hear English
  moshi-mlx models                                # the known models and their hub repos
  moshi-mlx chat --list-devices                   # the microphones and speakers PortAudio sees
  moshi-mlx chat --checkpoint ./moshiko-mlx-q4 --input-device 2 --stats
  moshi-mlx run question.wav answer.wav --seed 42 # a recorded user stream, file to file
  moshi-mlx run talk/user.wav again.wav --seed N --float
                                  # replay a recorded chat bit for bit (talk/session.json has
                                  # its seed N and sampling settings)
  moshi-mlx run in.flac out.wav --temperature 0   # greedy: the same output every time
  moshi-mlx chat --echo-cancel off                # headphones: the raw microphone
  moshi-mlx echo-cancel talk/mic.wav talk/played.wav clean.wav  # check a room offline
  moshi-mlx transcribe talk.wav --format srt -o talk.srt   # speech to text (Kyutai STT)
  moshi-mlx transcribe                            # dictation from the microphone
  moshi-mlx speak "Hello there." hello.wav        # text to speech (kyutai/tts-1.6b-en_fr)
  moshi-mlx speak "Hello there."                  # spoken on the speaker as it is generated
  moshi-mlx serve                                 # Kyutai's clients, OpenAI's SDK, a web page
  moshi-mlx assistant                             # talk with a text LLM (mlx-lm) by voice

Offline: `hf download kyutai/moshiko-mlx-q4` once; hub ids then work from the local cache
(HF_HUB_OFFLINE=1 skips asking the hub). Or `hf download REPO --local-dir DIR`, then
`--checkpoint DIR`.
Live chat with the 7B model needs Apple silicon (MLX's CPU backend takes about 5 s per 80 ms
frame); elsewhere use `run`, or a tiny random checkpoint (it makes noise) for any machine:
`python scripts/make_tiny_checkpoint.py tiny/`, then `--checkpoint tiny/`.
Exit status: 0 on success, 1 on a failure, 2 on a usage error, 130 on Ctrl-C, 143 on SIGTERM."""

SUBCOMMAND_EPILOG = (
    "`moshi-mlx --help` lists examples of every subcommand.\n"
    "Exit status: 0 on success, 1 on a failure, 2 on a usage error, 130 on Ctrl-C, 143 on SIGTERM."
)


def configure_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Build the `moshi-mlx` argument parser, one subcommand per module of `COMMANDS`."""
    parser = parser or OneLineParser(
        prog="moshi-mlx",
        description="Kyutai's Moshi family on MLX: voice chat (Moshi, PersonaPlex), live "
        "translation (Hibiki), speech to text, text to speech; live or file to file.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=EXAMPLES if name == "chat" else SUBCOMMAND_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    for module in COMMANDS:
        module.register(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `moshi-mlx`; returns the exit status (errors are one `error: ...` line on stderr)."""
    from .live.devices import AudioDeviceError

    # AudioError, OutputError, CheckpointError, MemoryCheckError, SessionError, PortAudio's errors
    expected = (ValueError, OSError, AudioDeviceError, RuntimeError)
    return run_cli(
        configure_parser(), argv, lambda args: args.handler(args), expected, "MOSHI_MLX_DEBUG"
    )


if __name__ == "__main__":
    sys.exit(main())
