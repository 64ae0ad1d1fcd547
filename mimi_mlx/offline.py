"""File to file with Mimi: audio -> codes file, codes file -> audio, audio -> audio.

Each job runs in one of two modes with identical results (codes exactly, audio to float
tolerance):
- batch: the whole file in one `encode` / `decode` call (fastest for short files);
- streaming: blocks of whole frames through `encode_step` / `decode_step`, reading and writing
  the files block by block, so memory stays bounded however long the file is. It is chosen
  automatically above `STREAM_ABOVE_SECONDS` and shows a progress bar.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from .codes_file import MimiCodes
from .io.audio import AudioWriter, audio_info, iter_audio, read_audio
from .model import Mimi, to_numpy

STREAM_ABOVE_SECONDS = 30.0  # longer inputs are streamed unless told otherwise
STREAM_BLOCK_FRAMES = 25  # frames per streaming step (2 s at 12.5 Hz)
DEFAULT_NUM_QUANTIZERS = 8  # what Moshi uses (1.1 kbps)


def encode_file(
    model: Mimi,
    src: str | Path,
    num_quantizers: int = DEFAULT_NUM_QUANTIZERS,
    stream: bool | None = None,
    progress: bool | None = False,
    block_frames: int = STREAM_BLOCK_FRAMES,
) -> MimiCodes:
    """Encode an audio file (any format soundfile reads; mono-mixed, resampled to 24 kHz).

    Args:
        model: the codec.
        src: input audio file.
        num_quantizers: codebooks to keep, 1..model.num_codebooks (default 8, as Moshi).
        stream: True for streaming, False for batch, None to stream files longer than
            `STREAM_ABOVE_SECONDS`.
        progress: show a progress bar (None: only on a terminal) while streaming.
        block_frames: frames per streaming step.

    Returns:
        The codes and their metadata, ready for `save_codes`.
    """
    n_q = _check_num_quantizers(model, num_quantizers)
    info = audio_info(src)
    if stream is None:
        stream = info.duration > STREAM_ABOVE_SECONDS
    if stream:
        chunks, num_samples = [], 0
        with closing(_encode_stream(model, src, n_q, progress, block_frames)) as blocks:
            for audio, codes in blocks:
                chunks.append(codes)
                num_samples += len(audio)
        codes = np.concatenate(chunks, axis=1)
    else:
        audio = read_audio(src, model.sample_rate)
        codes = np.array(model.encode(mx.array(audio)[None, None], n_q)[0])
        num_samples = len(audio)
    return _codes_of(model, codes, num_samples, info.sample_rate)


def decode_file(
    model: Mimi,
    codes: MimiCodes,
    dst: str | Path,
    num_quantizers: int | None = None,
    stream: bool | None = None,
    progress: bool | None = False,
    float32: bool = False,
    block_frames: int = STREAM_BLOCK_FRAMES,
) -> None:
    """Decode codes into an audio file at the codec's rate, trimmed to the original length.

    Args:
        model: the codec; must match the codes' sample rate, frame size and cardinality.
        codes: from `encode_file` or `load_codes`.
        dst: output file; its suffix picks the format (16-bit WAV by default).
        num_quantizers: decode only the first codebooks (default: all in `codes`).
        stream: as in `encode_file`, judged on the encoded duration.
        progress: as in `encode_file`.
        float32: write 32-bit float samples.
        block_frames: frames per streaming step.
    """
    check_compatible(model, codes)
    n_q = codes.num_codebooks if num_quantizers is None else num_quantizers
    if not 1 <= n_q <= codes.num_codebooks:
        raise ValueError(
            f"num_quantizers must be in 1..{codes.num_codebooks} (the codebooks in the codes "
            f"file), got {n_q}"
        )
    frames = codes.codes[:n_q]
    if stream is None:
        stream = codes.duration > STREAM_ABOVE_SECONDS
    with AudioWriter(dst, model.sample_rate, float32) as out:
        if not stream:
            audio = to_numpy(model.decode(mx.array(frames)[None]))[0, 0]
            out.write(audio[: codes.num_samples])
            return
        model.reset_decoder()
        try:
            with _bar(codes.duration, "decode", progress) as bar:
                for start in range(0, codes.num_frames, block_frames):
                    step = mx.array(frames[:, start : start + block_frames])[None]
                    audio = to_numpy(model.decode_step(step))[0, 0]
                    audio = audio[: codes.num_samples - out.frames]
                    out.write(audio)
                    bar.update(len(audio) / model.sample_rate)
        finally:
            model.reset_decoder()


def roundtrip_file(
    model: Mimi,
    src: str | Path,
    dst: str | Path,
    num_quantizers: int = DEFAULT_NUM_QUANTIZERS,
    stream: bool | None = None,
    progress: bool | None = False,
    float32: bool = False,
    block_frames: int = STREAM_BLOCK_FRAMES,
) -> MimiCodes:
    """Encode an audio file and decode it again (hear what the codec keeps).

    Streaming mode encodes and decodes block by block, never holding the whole file. Arguments
    are those of `encode_file` and `decode_file`.

    Returns:
        The intermediate codes.
    """
    n_q = _check_num_quantizers(model, num_quantizers)
    info = audio_info(src)
    if stream is None:
        stream = info.duration > STREAM_ABOVE_SECONDS
    if not stream:
        codes = encode_file(model, src, n_q, stream=False)
        decode_file(model, codes, dst, stream=False, float32=float32)
        return codes
    chunks, num_samples = [], 0
    model.reset_decoder()
    try:
        with AudioWriter(dst, model.sample_rate, float32) as out:
            blocks = _encode_stream(model, src, n_q, progress, block_frames, "roundtrip")
            with closing(blocks):  # on errors too: reset the encoder and close the bar now
                for audio, codes in blocks:
                    decoded = to_numpy(model.decode_step(mx.array(codes)[None]))[0, 0]
                    out.write(decoded[: len(audio)])
                    chunks.append(codes)
                    num_samples += len(audio)
    finally:
        model.reset_decoder()
    return _codes_of(model, np.concatenate(chunks, axis=1), num_samples, info.sample_rate)


def _codes_of(model: Mimi, codes: np.ndarray, num_samples: int, source_rate: int) -> MimiCodes:
    """A codes file's content: the codes and what `model` says about them."""
    return MimiCodes(
        codes=codes,
        num_samples=num_samples,
        sample_rate=model.sample_rate,
        frame_rate=model.frame_rate,
        cardinality=model.cardinality,
        checkpoint=model.source,
        source_sample_rate=source_rate,
    )


def check_compatible(model: Mimi, codes: MimiCodes) -> None:
    """Raise ValueError when `codes` cannot have come from `model`'s kind of codec."""
    ours = (model.sample_rate, model.frame_size, model.cardinality)
    theirs = (codes.sample_rate, codes.frame_size, codes.cardinality)
    if ours != theirs:
        raise ValueError(
            "the codes do not fit this checkpoint: codes have sample rate, frame size, "
            f"cardinality {theirs}, the checkpoint {ours}"
        )
    if codes.num_codebooks > model.num_codebooks:
        raise ValueError(
            f"the codes have {codes.num_codebooks} codebooks, the checkpoint only "
            f"{model.num_codebooks}"
        )


def _check_num_quantizers(model: Mimi, n: int) -> int:
    if not 1 <= n <= model.num_codebooks:
        raise ValueError(f"num_quantizers must be in 1..{model.num_codebooks}, got {n}")
    return n


def _encode_stream(
    model: Mimi,
    src: str | Path,
    n_q: int,
    progress: bool | None,
    block_frames: int,
    desc: str = "encode",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (audio block, its codes (K, frames)); the last block is zero-padded to whole frames.

    Owns the encoder's stream: reset before and after.
    """
    info = audio_info(src)
    block = block_frames * model.frame_size
    bar = _bar(info.resampled_length(model.sample_rate) / model.sample_rate, desc, progress)
    model.reset_encoder()
    try:
        for audio in iter_audio(src, model.sample_rate, block):
            padded = np.pad(audio, (0, -len(audio) % model.frame_size))
            codes = np.array(model.encode_step(mx.array(padded)[None, None], n_q)[0])
            yield audio, codes
            bar.update(len(audio) / model.sample_rate)
    finally:
        model.reset_encoder()
        bar.close()


def _bar(seconds: float, desc: str, progress: bool | None) -> tqdm:
    """A progress bar in seconds of audio; `progress=None` shows it only on a terminal."""
    return tqdm(
        total=round(seconds, 2),
        desc=desc,
        unit="s",
        disable=None if progress is None else not progress,
        leave=False,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio "
        "[{elapsed}<{remaining}]",
    )
