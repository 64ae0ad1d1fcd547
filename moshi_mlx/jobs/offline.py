"""`moshi-mlx run IN OUT.wav`: a recorded user stream through the live pipeline, file to file.

The input (any format soundfile reads, mixed to mono, resampled to 24 kHz) is cut into 80 ms
frames (the last one padded with silence) and fed to the same `Pipeline` the live chat uses, as
fast as it goes. Moshi's audio is written to OUT (same length as the input: step k's audio is
what the live chat would play during that frame) and the transcript beside it, as `OUT.txt`
(timestamped lines) and `OUT.json` (every token, pieces with timestamps). With the seed a live
session reports, its recorded `user.wav` reproduces that session's text and audio.

Translation models (Hibiki) keep talking after the input ends: with `end_of_stream`, the end of
the input is marked as in Kyutai's `run_inference` (one frame of end-of-stream codes, all equal
to the card), then silence is fed until the model says its end-of-text token, at most
`max_tail_steps` steps; the output then runs past the input's length. Hibiki-Zero follows
Kyutai's `hibiki_zero` loop instead (`EndOfStream.warmup_silence`, `_run_zero`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE
from mimi_mlx.io.audio import AudioWriter, audio_info, iter_audio

from ..formats.transcript import Transcript
from .pipeline import Pipeline

LOOKAHEAD = 1  # frames submitted ahead of the one being collected


@dataclass(frozen=True)
class EndOfStream:
    """Feed Kyutai's end-of-stream frame after the input, then silence until `eos_token`.

    `warmup_silence`: Kyutai's `hibiki_zero` loop (`run.py: generate`, `inference.py:
    encode_inputs`) instead of `run_inference`'s; see `_run_zero`.
    """

    eos_token: int
    max_tail_steps: int = 750  # 60 s
    warmup_silence: bool = False


@dataclass
class OfflineResult:
    """What `run_file` did."""

    transcript: Transcript
    steps: int
    audio_seconds: float
    elapsed: float
    ended: str | None = None  # with end_of_stream: "end-of-text", or "max-tail" (cut short)
    written_seconds: float = 0.0  # the output audio's length

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
    end_of_stream: EndOfStream | None = None,
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
        end_of_stream: translation models: go on after the input until end-of-text.

    Returns:
        The transcript and timing.

    Raises:
        AudioError: unreadable or empty input.
    """
    source = audio_info(src)
    total = source.resampled_length(SAMPLE_RATE)
    zero = end_of_stream is not None and end_of_stream.warmup_silence
    transcript = Transcript(
        0 if zero else pipeline.audio_lag,  # (hibiki_zero's output starts at time 0)
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
            tail = end_of_stream is not None
            ended = None
            tokens: list[int] = []  # the text token of every step

            def take():
                result = pipeline.collect()
                tokens.append(result.token)
                transcript.add(result)
                audio = result.audio if tail else result.audio[: total - out.frames]
                if result.has_audio or not zero:  # (hibiki_zero drops its warmup's silence)
                    out.write(audio)
                bar.update(min(len(audio), max(0, total - out.frames + len(audio))) / SAMPLE_RATE)
                return result

            if zero:
                ended, fed = _run_zero(pipeline, src, take, tokens, end_of_stream)
                transcript.cut(len(tokens))
            else:
                for pcm in iter_audio(src, SAMPLE_RATE, FRAME_SIZE):
                    fed += len(pcm)
                    pipeline.submit(np.pad(pcm, (0, FRAME_SIZE - len(pcm))))
                    if pipeline.pending > LOOKAHEAD:
                        take()
                while pipeline.pending:
                    take()
                if tail:
                    ended = _finish_stream(pipeline, take, tokens, end_of_stream)
            written = out.frames / SAMPLE_RATE
    finally:
        bar.close()
        pipeline.reset()  # leave no session state behind, on errors too
    text_path, json_path = transcript_paths(dst)
    transcript.save(text_path, json_path)
    return OfflineResult(
        transcript,
        len(transcript.tokens),
        fed / SAMPLE_RATE,
        time.perf_counter() - start,
        ended,
        written,
    )


def _finish_stream(pipeline: Pipeline, take, tokens: list[int], end: EndOfStream) -> str:
    """Kyutai's `run_inference` end of input: the end-of-stream frame, then silence until the
    end-of-text token has come out with its audio. Returns why it stopped: "end-of-text", or
    "max-tail" (`max_tail_steps` ran out first).

    Their loop sees each text token with its audio, `audio_lag` steps after it is sampled, and
    counts an end-of-text only once the end-of-stream frame is fed: a token sampled at step s
    counts if s >= N + 1 - lag (N input frames), and the last step run is s + lag.
    """
    lag = pipeline.audio_lag
    first = len(tokens) + 1 - lag
    pipeline.submit_codes(pipeline.end_of_stream_codes())
    take()
    silence = np.zeros(FRAME_SIZE, np.float32)
    for _ in range(end.max_tail_steps):
        said = [s for s in range(max(first, 0), len(tokens)) if tokens[s] == end.eos_token]
        if said and len(tokens) > said[0] + lag:
            return "end-of-text"
        pipeline.submit(silence)
        take()
    return "max-tail"


def _run_zero(pipeline: Pipeline, src, take, tokens: list[int], end: EndOfStream):
    """Kyutai's `hibiki_zero` file loop, frame by frame; returns (why it stopped, samples fed).

    Theirs (`encode_inputs`, `generate`, `decode_outputs`): `max_delay` frames of silence are
    Mimi-encoded apart from the input (a stream of their own) and stepped first; the input is
    encoded padded with silence, and the frame right after it (index ceil(seconds * 12.5))
    is replaced by the end-of-input frame, code `card` on every codebook (Mimi still encoded
    it); the output of step i is time i, cut at the first end-of-text token (its text and
    audio before it). Here: the same frames (their first one is not fed: see below), stopping
    once the audio of the time before the end-of-text is out (`audio_lag` steps after it), or
    `max_tail_steps` after the input. The text of our step i is their output i.
    """
    lag = pipeline.audio_lag
    silence = np.zeros(FRAME_SIZE, np.float32)
    warmup = [pipeline.encode(silence) for _ in range(lag)]
    pipeline.restart_encoder()
    # Kyutai's `LMGen` hears frame k at step k and replaces the first by start tokens; our
    # generator hears it at step k + 1 (`jobs/generate.py`): their first frame is not fed
    for codes in warmup[1:]:
        pipeline.submit_codes(codes)
    fed = 0
    seen = 0  # tokens searched for the end of text so far
    said: list[int] = []

    def done() -> bool:
        nonlocal seen
        if not said:
            said.extend(s for s in range(seen, len(tokens)) if tokens[s] == end.eos_token)
            seen = len(tokens)
        return bool(said) and len(tokens) >= said[0] + lag

    def frames():
        nonlocal fed
        for pcm in iter_audio(src, SAMPLE_RATE, FRAME_SIZE):
            fed += len(pcm)
            yield np.pad(pcm, (0, FRAME_SIZE - len(pcm))), None
        yield silence, pipeline.end_of_stream_codes()
        for _ in range(end.max_tail_steps):
            yield silence, None

    for pcm, codes in frames():
        if done():
            break
        pipeline.submit(pcm, codes)
        while pipeline.pending > LOOKAHEAD and not done():
            take()
    while pipeline.pending and not done():
        take()
    if not done():
        return "max-tail", fed
    del tokens[said[0] :]  # what hibiki_zero keeps: the text before its end
    return "end-of-text", fed
