"""What the command line tools share: one-line errors, usage errors, a quiet hub client."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class UsageError(Exception):
    """A bad command line (exit status 2): an unknown option, a bad option value, options that
    exclude each other, an output that would overwrite an input. What is wrong on disk, on the
    hub or in a model (a missing input, an existing output) is a failure (exit status 1)."""


class InputError(ValueError):
    """An input file that is missing or cannot be read (exit status 1)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a closed terminal, `timeout`, a service manager): ends the run like Ctrl-C, so
    every cleanup that Ctrl-C gets (partial outputs removed, recordings kept) runs."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports errors as one `error: ...` line (a UsageError), not usage + exit;
    an unknown option after a subcommand points at that subcommand's help."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras and getattr(parsed, "takes_extras", False):
            parsed.extras = extras  # the subcommand explains them (e.g. `speak`)
        elif extras:
            self._chosen(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The innermost subcommand's parser that `parsed` went through (else this one)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(parsed, action.dest, None) or "")
                if isinstance(sub, OneLineParser):
                    return sub._chosen(parsed)
        return self


def add_version(parser: argparse.ArgumentParser) -> None:
    """`--version`: the package's version (one for the three tools)."""
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def refuse_overwriting(outputs: list, inputs: list) -> None:
    """UsageError when an output names an input (also through a symlink or another spelling):
    nothing the user gave is overwritten, not even with --force."""
    from .output_file import overwritten_input

    clash = overwritten_input(outputs, inputs)
    if clash is not None:
        out, inp = clash
        same = "" if str(out) == str(inp) else f" ({out} is {inp})"
        raise UsageError(f"the output would overwrite the input {inp}{same}; name another output")


def positive_int(text: str) -> int:
    """argparse type: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def seed(text: str) -> int:
    """argparse type: a random seed, 0 to 2**63 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in 0..2**63-1, got {value}")
    return value


def quiet_hub_logs() -> None:
    """huggingface_hub logs retries on stderr; the tools report one error line instead, and
    say on a terminal what they ask of the hub before waiting for it."""
    import warnings

    from . import hub

    if sys.stderr.isatty() and not hub.log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        hub.log.addHandler(handler)
        hub.log.setLevel(logging.INFO)
    warnings.filterwarnings("ignore", module="huggingface_hub")
    try:
        from huggingface_hub.utils import disable_progress_bars
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
        if not sys.stderr.isatty():  # download bars only on a terminal, as ours
            disable_progress_bars()
    except ImportError:
        pass


BLAS_HINT = (
    "hint: MLX runs on the reference BLAS its Linux wheel bundles (matrix products 20-30x "
    "slower); preload "
    "OpenBLAS: `sudo apt-get install libopenblas0-pthread` and "
    "`export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3`"
)
_hinted = False


def blas_hint() -> None:
    """Print `BLAS_HINT` once per process, on a terminal, when MLX uses its slow bundled BLAS."""
    global _hinted
    if _hinted or not sys.stderr.isatty():
        return
    from ..nn.backend import on_reference_blas

    _hinted = True
    if on_reference_blas():
        print(BLAS_HINT, file=sys.stderr, flush=True)


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


def run_cli(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    run: Callable[[argparse.Namespace], None],
    expected: tuple[type[BaseException], ...],
    debug_env: str,
) -> int:
    """Parse `argv` and run the command; every failure becomes one `error: ...` line.

    Returns the exit status: 0, 1 for a failure, 2 for a usage error, 130 when interrupted (Ctrl-C)
    and 143 when terminated (SIGTERM, handled as Ctrl-C).
    Setting the environment variable `debug_env` re-raises failures with their traceback.
    """
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        return fail(str(e), 2)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    try:
        with sigterm_as_interrupt():
            blas_hint()
            run(args)
    except UsageError as e:
        return fail(str(e), 2)
    except Terminated:
        return fail("terminated (no partial output is left behind)", 143)
    except KeyboardInterrupt:
        return fail("interrupted (no partial output is left behind)", 130)
    except expected as e:
        if os.environ.get(debug_env):
            raise
        return fail(one_line(e), 1)
    except Exception as e:  # never a traceback unless asked for
        if os.environ.get(debug_env):
            raise
        return fail(f"unexpected {type(e).__name__}: {one_line(e)}", 1)
    return 0
