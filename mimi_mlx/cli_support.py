"""What the command line tools share: one-line errors, usage errors, a quiet hub client."""

from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """A bad command line (exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as one `error: ...` line (a UsageError), not usage + exit."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def quiet_hub_logs() -> None:
    """huggingface_hub logs retries on stderr; the tools report one error line instead."""
    try:
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    except ImportError:
        pass


def one_line(e: BaseException) -> str:
    """An exception as one line of text, naming the file of an OSError."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return text


def fail(message: str, status: int) -> int:
    """Print `error: message` on stderr and return the exit status."""
    print(f"error: {message}", file=sys.stderr)
    return status
