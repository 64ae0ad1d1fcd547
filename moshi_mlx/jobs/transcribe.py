"""Transcribe audio files with an STT model: several files stepped together as one batch.

Each file is read as a stream (bounded memory, whatever its length), padded as Kyutai's
`run_inference` pads it (silence prefix, then text delay + 1 s of silence) and cut into whole
80 ms frames. Files of different lengths share a batch: a file that ended is fed silence until
the longest one ends, and its tokens stop at its own last frame, so each file's transcript is
the one it gets alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mimi_mlx.constants import FRAME_SECONDS, FRAME_SIZE, SAMPLE_RATE
from mimi_mlx.io.audio import audio_info, iter_audio
from mimi_mlx.io.hub import recorded_name

from ..formats.words import Word
from .stt import SttSettings, SttStep, SttStream


@dataclass
class Transcription:
    """The transcript of one file.

    Attributes:
        path: the audio file.
        duration: its length in seconds.
        text: the whole text.
        words: the words with start and end times (seconds of the file).
        tokens: every text token, one per 80 ms step (the silence prefix and tail included).
        end_of_turn: times (seconds of the file) where the voice-activity head said the speaker
            finished (with `vad`), once per turn.
    """

    path: Path
    duration: float
    text: str = ""
    words: list[Word] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    end_of_turn: list[float] | None = None

    def to_dict(self) -> dict:
        d = {
            "file": recorded_name(self.path),  # absolute: valid from any folder
            "duration": round(self.duration, 3),
            "text": self.text,
            "words": [w.to_dict() for w in self.words],
            "frame_seconds": FRAME_SECONDS,
            "tokens": self.tokens,
        }
        if self.end_of_turn is not None:
            d["end_of_turn"] = [round(t, 3) for t in self.end_of_turn]
        return d


def padded_frames(path: str | Path, settings: SttSettings) -> Iterator[np.ndarray]:
    """The model's input frames of a file: silence prefix, the audio, the tail of silence, cut
    into whole (FRAME_SIZE,) frames (a last partial frame is dropped, as Kyutai does)."""
    blocks = itertools.chain(
        [np.zeros(settings.prefix_samples, np.float32)],
        iter_audio(path, SAMPLE_RATE, FRAME_SIZE),
        [np.zeros(settings.tail_samples, np.float32)],
    )
    pending = np.zeros(0, np.float32)
    for block in blocks:
        pending = np.concatenate([pending, block])
        while len(pending) >= FRAME_SIZE:
            yield pending[:FRAME_SIZE]
            pending = pending[FRAME_SIZE:]


class _Row:
    """One file's share of a batch."""

    def __init__(self, path: Path, settings: SttSettings, vad: bool):
        info = audio_info(path)
        samples = info.resampled_length(SAMPLE_RATE)
        self.frames = padded_frames(path, settings)
        self.steps = settings.frames(samples)
        self.result = Transcription(path, samples / SAMPLE_RATE, end_of_turn=[] if vad else None)
        self.settings = settings

    def next_frame(self) -> np.ndarray:
        return next(self.frames, None) if self.frames is not None else None

    def add(self, step: SttStep) -> None:
        r = self.result
        r.tokens.append(step.token)
        r.words += step.words
        if r.end_of_turn is not None and step.turn_ended:
            r.end_of_turn.append(max(0.0, step.heard - self.settings.audio_delay_seconds))


def transcribe_files(
    lm,
    mimi,
    tokenizer,
    paths: list[str | Path],
    batch_size: int = 8,
    vad: bool = False,
    progress: bool | None = False,
    on_done: Callable[[Transcription], None] | None = None,
    on_words: Callable[[Path, list[Word]], None] | None = None,
) -> list[Transcription]:
    """Transcribe audio files, `batch_size` at a time.

    Args:
        lm, mimi, tokenizer: an STT checkpoint's parts (`load_checkpoint`).
        paths: audio files (any format soundfile reads; mixed to mono, resampled to 24 kHz).
        batch_size: files stepped together (weights are read once per step for all of them).
        vad: also find the ends of turns (needs the voice-activity heads).
        progress: show a progress bar (None: only on a terminal).
        on_done: called with each file's transcript as soon as that file is done (the shorter
            files of a batch first), so an interrupted batch keeps what was finished.
        on_words: called with a file's path and its words as they are recognised.

    Returns:
        One `Transcription` per path, in order.

    Raises:
        AudioError: a file cannot be read or holds no audio (checked before any work).
        NotSttError: `lm` is not an STT model.
    """
    settings = SttSettings.of(lm)
    paths = [Path(p) for p in paths]
    for p in paths:
        audio_info(p)  # every file readable before the first step
    results: list[Transcription] = []
    for start in range(0, len(paths), batch_size):
        group = paths[start : start + batch_size]
        results += _transcribe_batch(
            lm, mimi, tokenizer, group, settings, vad, progress, on_done, on_words
        )
    return results


def _transcribe_batch(
    lm, mimi, tokenizer, paths, settings, vad, progress, on_done, on_words
) -> list[Transcription]:
    rows = [_Row(p, settings, vad) for p in paths]
    stream = SttStream(lm, mimi, tokenizer, batch_size=len(rows), vad=vad)
    total = max(r.steps for r in rows)
    silence = np.zeros(FRAME_SIZE, np.float32)
    bar = tqdm(
        total=round(total * FRAME_SECONDS, 2),  # the longest stream, padding included
        desc="transcribing",
        unit="s",
        disable=None if progress is None else not progress,
        leave=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio "
        "[{elapsed}<{remaining}]",
    )

    def take(steps: list[SttStep]) -> None:
        index = steps[0].index
        for b, (row, step) in enumerate(zip(rows, steps, strict=True)):
            if index < row.steps:
                row.add(step)
                if on_words is not None and step.words:
                    on_words(row.result.path, step.words)
                if index == row.steps - 1:
                    last = stream.close_row(b)
                    row.result.words += last
                    if on_words is not None and last:
                        on_words(row.result.path, last)
                    row.result.text = tokenizer.decode(row.result.tokens).strip()
                    if on_done is not None:
                        on_done(row.result)
        bar.update(FRAME_SECONDS)

    try:
        for _ in range(total):
            frames = []
            for row in rows:
                frame = row.next_frame()
                frames.append(silence if frame is None else frame)
            for steps in stream.step(np.stack(frames)):
                take(steps)
        for steps in stream.flush():
            take(steps)
    finally:
        bar.close()
        stream.reset()
    return [row.result for row in rows]
