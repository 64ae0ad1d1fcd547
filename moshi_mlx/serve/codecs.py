"""Audio on the wire: Ogg Opus (Kyutai's protocols, through sphn) or raw int16 PCM, 24 kHz mono;
raw PCM of any rate, width and channels in (Wyoming's clients).

A decoder turns the bytes of one message into float32 samples (any number, possibly none yet:
an Ogg page can be incomplete); an encoder turns samples into the bytes to send (possibly none
yet). Bad bytes raise `AudioFormatError` (the stream cannot go on).
"""

from __future__ import annotations

import numpy as np
import sphn

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE
from mimi_mlx.io.audio import Resampler

PCM16_SCALE = 32768.0
PCM_SCALES = {1: 128.0, 2: PCM16_SCALE, 3: 8388608.0, 4: 2147483648.0}  # as soundfile reads WAV


class AudioFormatError(ValueError):
    """The client's audio bytes are not what the stream's format says."""


class OpusDecoder:
    """An Ogg Opus stream in (`sphn.OpusStreamWriter`'s pages, as Kyutai's clients send)."""

    def __init__(self):
        self._reader = sphn.OpusStreamReader(SAMPLE_RATE)

    def decode(self, data: bytes) -> np.ndarray:
        try:
            pcm = self._reader.append_bytes(data)
        except ValueError as e:
            raise AudioFormatError(f"invalid Ogg Opus audio ({e})") from None
        return np.asarray(pcm, np.float32).reshape(-1)


class OpusEncoder:
    """An Ogg Opus stream out: one page per 80 ms frame (the first one with the headers)."""

    def __init__(self):
        self._writer = sphn.OpusStreamWriter(SAMPLE_RATE)

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._writer.append_pcm(np.asarray(pcm, np.float32).reshape(-1))


class Pcm16Decoder:
    """Little-endian int16 samples in, any length (an even number of bytes)."""

    def decode(self, data: bytes) -> np.ndarray:
        if len(data) % 2:
            raise AudioFormatError(f"pcm16 audio needs an even number of bytes, got {len(data)}")
        return np.frombuffer(data, "<i2").astype(np.float32) / PCM16_SCALE


class Pcm16Encoder:
    """Little-endian int16 samples out (clipped to [-1, 1])."""

    def encode(self, pcm: np.ndarray) -> bytes:
        pcm = np.clip(np.asarray(pcm, np.float32), -1.0, 1.0 - 1.0 / PCM16_SCALE)
        return np.round(pcm * PCM16_SCALE).astype("<i2").tobytes()


class PcmIn:
    """Little-endian PCM of `width` bytes (8-bit unsigned), `channels` interleaved, at `rate`,
    made 24 kHz mono float32 as it comes, as `iter_audio` reads a WAV file of that format
    (soundfile's scaling, channels averaged, soxr's `Resampler`)."""

    def __init__(self, rate: int, width: int, channels: int):
        if not isinstance(width, int) or width not in PCM_SCALES:
            raise AudioFormatError(f"audio width {width}: send 1, 2, 3 or 4 bytes per sample")
        ints = all(isinstance(x, int) for x in (rate, channels))
        if not (ints and 1000 <= rate <= 384000 and 1 <= channels <= 16):
            raise AudioFormatError(f"audio of {rate} Hz, {channels} channels: not a format we take")
        self.format = (rate, width, channels)
        self._resampler = Resampler(rate, SAMPLE_RATE)
        self._rest = b""  # bytes of an incomplete sample
        self._blocks: list[np.ndarray] = []
        self.samples = 0  # at 24 kHz

    def push(self, data: bytes) -> None:
        self._add(self._decode(data), last=False)

    def finish(self) -> np.ndarray:
        """The whole audio (n,) at 24 kHz."""
        self._add(np.zeros(0, np.float32), last=True)
        return np.concatenate(self._blocks) if self._blocks else np.zeros(0, np.float32)

    def _add(self, mono: np.ndarray, last: bool) -> None:
        block = self._resampler.resample_chunk(mono, last=last)
        self.samples += len(block)
        if len(block):
            self._blocks.append(block)

    def _decode(self, data: bytes) -> np.ndarray:
        _, width, channels = self.format
        data = self._rest + data
        whole = len(data) // (width * channels) * width * channels
        data, self._rest = data[:whole], data[whole:]
        raw = np.frombuffer(data, np.uint8)
        if width == 1:
            ints = raw.astype(np.int32) - 128
        elif width == 3:
            b = raw.reshape(-1, 3).astype(np.int32)
            ints = (b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8
        else:
            ints = np.frombuffer(data, f"<i{width}")
        pcm = (ints.astype(np.float32) / np.float32(PCM_SCALES[width])).reshape(-1, channels)
        return pcm.mean(axis=1, dtype=np.float32) if channels > 1 else pcm[:, 0]


CODECS = {"opus": (OpusDecoder, OpusEncoder), "pcm16": (Pcm16Decoder, Pcm16Encoder)}


class InputFrames:
    """The client's audio cut into 80 ms frames, with chat's lag rule: when more than
    `max_waiting` whole frames wait, the oldest are skipped (counted), keeping the newest one,
    so a model slower than real time, or a client sending too fast, never grows a queue."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._pending = np.zeros(0, np.float32)
        self.received = 0  # samples
        self.skipped = 0  # frames

    def push(self, pcm: np.ndarray) -> None:
        self.received += len(pcm)
        self._pending = np.concatenate([self._pending, pcm])
        if self.waiting > self.max_waiting:
            n = self.waiting - 1
            self._pending = self._pending[n * FRAME_SIZE :]
            self.skipped += n

    @property
    def waiting(self) -> int:
        """Whole frames ready."""
        return len(self._pending) // FRAME_SIZE

    def pop(self) -> np.ndarray:
        """The oldest whole frame (FRAME_SIZE,) (one must be waiting)."""
        frame, self._pending = self._pending[:FRAME_SIZE], self._pending[FRAME_SIZE:]
        return frame

    def rest(self) -> np.ndarray:
        """What is left (less than a frame once the whole ones were popped): the input ended."""
        rest, self._pending = self._pending, self._pending[:0]
        return rest
