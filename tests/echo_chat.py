"""`moshi-mlx chat` whose Moshi speaks on a schedule: the tiny model's noise, gated and scaled.

    python tests/echo_chat.py SCHEDULE LEVEL_DB -- CHAT_ARGS...

SCHEDULE is `start-end,start-end` in seconds of session steps when Moshi speaks (silent
otherwise), LEVEL_DB its level in dBFS. Everything else is the real `moshi-mlx chat` (options,
devices, echo cancellation, recording). Used by test_echo_live.py: the echo tests need moments
where Moshi is silent, and the tiny random model never is.
"""

from __future__ import annotations

import sys

import numpy as np

from mimi_mlx.constants import FRAME_SECONDS
from moshi_mlx.cli import main
from moshi_mlx.jobs.pipeline import Pipeline


def gated(schedule: list[tuple[float, float]], level_db: float):
    collect = Pipeline.collect

    def gated_collect(self):
        result = collect(self)
        t = result.step * FRAME_SECONDS
        if any(start <= t < end for start, end in schedule) and result.has_audio:
            power = float(np.mean(np.square(result.audio))) + 1e-12
            result.audio = (result.audio * np.sqrt(10 ** (level_db / 10) / power)).astype(
                np.float32
            )
        else:
            result.audio = np.zeros_like(result.audio)
        return result

    return gated_collect


if __name__ == "__main__":
    spec, level, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: echo_chat.py SCHEDULE LEVEL_DB -- CHAT_ARGS..."
    schedule = [tuple(map(float, part.split("-"))) for part in spec.split(",")]
    Pipeline.collect = gated(schedule, float(level))
    sys.exit(main(["chat", *args]))
