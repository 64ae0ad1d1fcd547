"""The assistant file to file: a recording of the user's turn(s) in, the spoken answers out.

The STT hears the file as `transcribe` does (the same padding, one stream, so the same tokens);
each time a turn ends (`turns.py`), the reply is written and spoken to its end before the STT
hears on (a file cannot interrupt). The answers follow each other in the output, in order;
`AssistantResult` says where each starts, what was heard, written and spoken, and how long
each part took.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimi_mlx.constants import SAMPLE_RATE
from mimi_mlx.io.audio import audio_info
from mimi_mlx.io.hub import recorded_name

from .assistant import Assistant, Reply
from .stt import SttStep, SttStream
from .transcribe import padded_frames
from .turns import TurnTaker, UserTurn


@dataclass
class Exchange:
    """One turn of the user and the assistant's answer.

    Attributes:
        user: what the STT heard.
        reply: the finished reply (its text, spoken words, timings).
        audio_start: seconds into the output where the answer starts.
    """

    user: UserTurn
    reply: Reply
    audio_start: float

    def to_dict(self) -> dict:
        r = self.reply
        return {
            "user": self.user.text,
            "user_words": self.user.to_dict()["words"],
            "heard": round(self.user.heard, 3),
            "ended_by": self.user.rule,
            "reply": r.text,
            "spoken": [w.to_dict(self.audio_start) for w in r.spoken()],
            "audio_start": round(self.audio_start, 3),
            "audio_seconds": round(r.samples / SAMPLE_RATE, 3),
            "timings": r.timings.to_dict(),
        }


@dataclass
class AssistantResult:
    """The whole file's exchanges and timings."""

    path: Path
    duration: float = 0.0
    exchanges: list[Exchange] = field(default_factory=list)
    stt_seconds: float = 0.0  # wall-clock time spent in the STT
    total_seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "input": recorded_name(self.path),
            "input_seconds": round(self.duration, 3),
            "turns": [e.to_dict() for e in self.exchanges],
            "timings": {
                "stt": round(self.stt_seconds, 3),
                "total": round(self.total_seconds, 3),
            },
        }


def answer_file(
    assistant: Assistant,
    stream: SttStream,
    path: str | Path,
    write: Callable[[np.ndarray], None],
    on_turn: Callable[[Exchange], None] | None = None,
) -> AssistantResult:
    """Answer the turns of a recorded user.

    Args:
        assistant: the conversation (its `messages` grow with each exchange).
        stream: an STT stream (batch 1; with `vad` the end-of-turn head ends turns).
        path: the user's audio (any format soundfile reads).
        write: called with each block of the answers' audio (24 kHz float32).
        on_turn: called after each exchange (to print the transcript).
    """
    path = Path(path)
    result = AssistantResult(path, audio_info(path).resampled_length(SAMPLE_RATE) / SAMPLE_RATE)
    taker = TurnTaker(stream)
    samples = 0
    started = time.perf_counter()
    stt_time = 0.0

    def answer(turn: UserTurn | None) -> None:
        nonlocal samples
        if turn is None:
            return
        reply = assistant.reply(turn.text)
        start = samples / SAMPLE_RATE
        while (frame := reply.next_frame()) is not None:
            if frame.pcm.size:
                write(frame.pcm)
                samples += len(frame.pcm)
        reply.finish()
        exchange = Exchange(turn, reply, start)
        result.exchanges.append(exchange)
        if on_turn is not None:
            on_turn(exchange)

    def take(steps: list[list[SttStep]]) -> None:
        for (step,) in steps:
            answer(taker.add(step))

    stream.reset()
    heard = 0.0
    try:
        for frame in padded_frames(path, stream.settings):
            t = time.perf_counter()
            steps = stream.step(frame)
            stt_time += time.perf_counter() - t
            take(steps)
        steps = stream.flush()
        take(steps)
        if steps:
            heard = steps[-1][0].heard
        answer(taker.finish(heard))
    finally:
        stream.reset()
    result.stt_seconds = stt_time
    result.total_seconds = time.perf_counter() - started
    return result
