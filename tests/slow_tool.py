"""A command line tool whose output writers are slowed down, so a test can signal it mid-write.

    python tests/slow_tool.py mimi-mlx|moshi-mlx|moshi-mlx-quantize DELAY ARGS...

Each block written to an audio file or a safetensors tensor sleeps DELAY seconds first; the rest
is the real tool (its `main`, whose exit status is returned). Used by test_interrupts.py.
"""

from __future__ import annotations

import sys
import time

from mimi_mlx.io.audio import AudioWriter
from quantize.writer import SafetensorsWriter


def slowed(method, delay: float):
    def slow(self, *args, **kwargs):
        time.sleep(delay)
        return method(self, *args, **kwargs)

    return slow


def main() -> int:
    tool, delay, *args = sys.argv[1:]
    AudioWriter.write = slowed(AudioWriter.write, float(delay))
    SafetensorsWriter.write = slowed(SafetensorsWriter.write, float(delay))
    if tool == "mimi-mlx":
        from mimi_mlx.cli import main as run
    elif tool == "moshi-mlx":
        from moshi_mlx.cli import main as run
    else:
        from quantize.cli import main as run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
