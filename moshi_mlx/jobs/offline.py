"""`moshi-mlx run IN OUT.wav`: a recorded user stream through the live pipeline, file to file.

The input (any format soundfile reads, mixed to mono, resampled to 24 kHz) is cut into 80 ms
frames (the last one padded with silence) and fed to the same `Pipeline` the live chat uses, as
fast as it goes. Moshi's audio is written to OUT (same length as the input: step k's audio is
what the live chat would play during that frame) and the transcript beside it, as `OUT.txt`
(timestamped lines) and `OUT.json` (every token, pieces with timestamps). With the seed a live
session reports, its recorded `user.wav` reproduces that session's text and audio.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mimi_mlx.audio import AudioWriter, audio_info, iter_audio

from .pipeline import FRAME_SIZE, SAMPLE_RATE, Pipeline
from .transcript import Transcript

LOOKAHEAD = 1  # frames submitted ahead of the one being collected


@dataclass
class OfflineResult:
    """What `run_file` did."""

    transcript: Transcript
    steps: int
    audio_seconds: float
    elapsed: float

    @property
    def real_time_factor(self) -> float:
        """Compute time over audio time (below 1: faster than real time)."""
        return self.elapsed / self.audio_seconds if self.audio_seconds else 0.0


def transcript_paths(dst: str | Path) -> tuple[Path, Path]:
    """The transcript files written beside an output: `OUT.txt` and `OUT.json`."""
    dst = Path(dst)
    return dst.with_suffix(".txt"), dst.with_suffix(".json")


def run_file(
    pipeline: Pipeline,
    src: str | Path,
    dst: str | Path,
    float32: bool = False,
    progress: bool | None = False,
    info: dict | None = None,
) -> OfflineResult:
    """Feed an audio file through a fresh session of `pipeline`; write Moshi's audio and text.

    Args:
        pipeline: the per-frame pipeline (reset before use).
        src: the user's audio, any format soundfile reads.
        dst: Moshi's audio, in the format its suffix names (16-bit WAV unless `float32`); the
            transcript goes to `transcript_paths(dst)`. Files appear only when complete.
        float32: write 32-bit float samples.
        progress: show a progress bar (None: only on a terminal).
        info: facts saved at the top of the transcript's JSON (checkpoint, ...).

    Returns:
        The transcript and timing.

    Raises:
        AudioError: unreadable or empty input.
    """
    source = audio_info(src)
    total = source.resampled_length(SAMPLE_RATE)
    transcript = Transcript(
        pipeline.audio_lag,
        {**(info or {}), "seed": pipeline.seed, "sampling": pipeline.sampling.to_dict()},
    )
    pipeline.reset()
    start = time.perf_counter()
    fed = 0
    bar = tqdm(
        total=round(total / SAMPLE_RATE, 2),
        desc="moshi",
        unit="s",
        disable=None if progress is None else not progress,
        leave=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio "
        "[{elapsed}<{remaining}]",
    )
    try:
        with AudioWriter(dst, SAMPLE_RATE, float32) as out:

            def take() -> None:
                result = pipeline.collect()
                transcript.add(result)
                audio = result.audio[: total - out.frames]
                out.write(audio)
                bar.update(len(audio) / SAMPLE_RATE)

            for pcm in iter_audio(src, SAMPLE_RATE, FRAME_SIZE):
                fed += len(pcm)
                pipeline.submit(np.pad(pcm, (0, FRAME_SIZE - len(pcm))))
                if pipeline.pending > LOOKAHEAD:
                    take()
            while pipeline.pending:
                take()
    finally:
        bar.close()
        pipeline.reset()  # leave no session state behind, on errors too
    text_path, json_path = transcript_paths(dst)
    transcript.save(text_path, json_path)
    return OfflineResult(
        transcript, len(transcript.tokens), fed / SAMPLE_RATE, time.perf_counter() - start
    )
