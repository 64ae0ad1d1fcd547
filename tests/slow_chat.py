"""A live session whose model is slower than real time: the real tiny model, sleeping per frame.

    python tests/slow_chat.py CHECKPOINT RECORD_DIR SECONDS DELAY SEED

Prints the session's summary as JSON on the last line of stdout. Used by test_chat_live.py.
"""

from __future__ import annotations

import json
import sys
import time

from moshi_mlx import load_checkpoint
from moshi_mlx.jobs.pipeline import FrameResult, Pipeline, Sampling
from moshi_mlx.live.audio_io import AudioIO
from moshi_mlx.live.chat import ChatOptions, run_chat
from moshi_mlx.live.devices import choose_device


class SlowPipeline(Pipeline):
    """The real pipeline, `delay` seconds slower per frame."""

    delay = 0.0

    def collect(self) -> FrameResult:
        time.sleep(self.delay)
        return super().collect()


def main() -> None:
    checkpoint, record, seconds, delay, seed = sys.argv[1:6]
    ckpt = load_checkpoint(checkpoint)
    pipeline = SlowPipeline(ckpt.lm, ckpt.mimi, ckpt.tokenizer, Sampling(seed=int(seed)))
    pipeline.warmup()
    pipeline.delay = float(delay)
    audio = AudioIO(choose_device(None, "input"), choose_device(None, "output"), log_played=True)
    options = ChatOptions(record=record, duration=float(seconds), stats=True, show_text=False)
    summary = run_chat(pipeline, audio, options, {"checkpoint": checkpoint})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
