"""Kyutai's streaming speech-to-text (delayed streams modeling): 80 ms of audio in, words out.

An STT model is Moshi's language model with the text stream after the audio: all 32 Mimi
codebooks go in, no depth decoder, and the text comes `audio_delay_seconds` (0.5 s for
`kyutai/stt-1b-en_fr`, 2.5 s for `stt-2.6b-en`) behind the speech. `SttStream` is what the
file mode and the live mode share:

- The input stream is `audio_silence_prefix_seconds` of silence, then the audio, then (at the
  end) `audio_delay_seconds` + 1 s of silence, cut into whole 80 ms frames, exactly as Kyutai's
  `run_inference` pads a file.
- Step alignment is `run_inference`'s: the first step sees only start tokens (its token is
  dropped), then frame k is consumed by the step that follows it at once, so token k has heard
  the audio up to the end of frame k. Text decoding follows the checkpoint's `lm_gen_config`
  (greedy by default).
- Each token is turned into words with start and end times (`words.py`); with `vad`, the
  end-of-turn probability is that of Kyutai's voice-activity head 2, class 0.
- A row can start a new stream while the others go on (`restart_row`), and rows can be added or
  dropped (`resize`): the row follows the same alignment on its own (its start-tokens step, then
  its frames), and gives the tokens and words the same audio gives alone (greedy decoding: a
  sampling checkpoint draws from one generator for the whole batch).

Every cache is a ring (the language model's context, Mimi's), so a stream can run for hours.
One thread owns a stream and its MLX objects.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mimi_mlx.constants import FRAME_SECONDS, FRAME_SIZE, SAMPLE_RATE

from ..formats.words import Word, WordBuilder
from ..model.checkpoint import Checkpoint
from ..model.lm import Lm
from .sampling import Rng, Sampler

VAD_HEAD, VAD_CLASS, VAD_THRESHOLD = 2, 0, 0.5  # Kyutai's scripts: head 2, class 0, above 0.5
TAIL_EXTRA_SECONDS = 1.0  # silence after the text delay at the end of a stream (Kyutai's)
LOOKAHEAD = 1  # frames submitted before the oldest is read back


class NotSttError(ValueError):
    """The checkpoint is not a speech-to-text model."""


@dataclass(frozen=True)
class SttSettings:
    """How a checkpoint transcribes (its `stt_config` and `lm_gen_config`)."""

    audio_delay_seconds: float = 0.5
    audio_silence_prefix_seconds: float = 0.0
    temperature: float = 0.0
    top_k: int = 50

    @classmethod
    def of(cls, lm: Lm, name: str = "this checkpoint") -> SttSettings:
        """The settings of an STT model; NotSttError (naming it `name`) for any other model."""
        cfg = lm.cfg
        if cfg.model_type != "stt" or cfg.dep_q != 0:
            raise NotSttError(
                f"{name} is not a speech-to-text "
                f"model (model_type {cfg.model_type!r}, {cfg.dep_q} generated audio codebooks): "
                "transcribe needs one of Kyutai's STT checkpoints (kyutai/stt-1b-en_fr-mlx, "
                "kyutai/stt-2.6b-en-mlx, ...); Moshi runs with `moshi-mlx chat` or `moshi-mlx run`"
            )
        stt = cfg.extra.get("stt_config") or {}
        gen = cfg.extra.get("lm_gen_config") or {}
        return cls(
            float(stt.get("audio_delay_seconds", cls.audio_delay_seconds)),
            float(stt.get("audio_silence_prefix_seconds", cls.audio_silence_prefix_seconds)),
            float(gen.get("temp_text", cls.temperature)),
            int(gen.get("top_k_text", cls.top_k)),
        )

    @property
    def prefix_samples(self) -> int:
        return int(self.audio_silence_prefix_seconds * SAMPLE_RATE)

    @property
    def tail_samples(self) -> int:
        return int((self.audio_delay_seconds + TAIL_EXTRA_SECONDS) * SAMPLE_RATE)

    @property
    def word_offset(self) -> float:
        """Seconds from the model's input stream to the audio's time of a word."""
        return self.prefix_samples / SAMPLE_RATE + self.audio_delay_seconds

    def frames(self, samples: int) -> int:
        """Steps (tokens) of a `samples`-long input once padded: whole frames only."""
        return (self.prefix_samples + samples + self.tail_samples) // FRAME_SIZE


@dataclass
class SttStep:
    """What one step gave for one stream.

    Attributes:
        index: the token's index (= the frame it consumed, counting the silence prefix).
        token: the text token (0: end of padding before a word, 3: padding).
        piece: the token as text, None for padding.
        heard: seconds of the input audio heard when the token came (may be negative in the
            silence prefix).
        words: the words this token completed.
        end_of_turn: probability that the speaker finished (with `vad`), else None.
        heads: (num_heads, 6) probabilities of every extra head (with `vad`), else None.
        turn_ended: the probability passed 0.5 after some words (Kyutai's marker rule, except
            that no marker comes before the first word): once per turn.
    """

    index: int
    token: int
    piece: str | None
    heard: float
    words: list[Word]
    end_of_turn: float | None = None
    heads: np.ndarray | None = None
    turn_ended: bool = False


@dataclass
class _Pending:
    indices: list[int | None]  # each row's token index; None: a start step or a row restarted
    text: mx.array  # (B,)
    heads: mx.array | None  # (B, num_heads, 6)


class SttStream:
    """Streaming speech-to-text over `batch_size` independent audio streams.

    Args:
        lm: an STT language model (`Checkpoint.lm`, `model_type` "stt").
        mimi: the codec (`Checkpoint.mimi`).
        tokenizer: the text tokenizer (`Checkpoint.tokenizer`).
        batch_size: streams stepped together (the rows of `step`).
        vad: compute the end-of-turn probability (needs the checkpoint's extra heads).
        seed: seed of the text sampler (used only when `lm_gen_config` samples).

    Raises:
        NotSttError: `lm` is not an STT model.
        ValueError: `vad` without the voice-activity heads; no tokenizer.

    Use `feed` (any number of samples, single stream; the silence prefix is added for you) or
    `step` (one whole frame per row, prefix included by the caller), then `finish`. A batch
    that runs on takes new streams with `restart_row` and `resize`.
    """

    def __init__(
        self,
        lm: Lm | Checkpoint,
        mimi=None,
        tokenizer=None,
        batch_size: int = 1,
        vad: bool = False,
        seed: int = 0,
    ):
        name = "this checkpoint"
        if isinstance(lm, Checkpoint):  # `SttStream(checkpoint)`, as `TextToSpeech(checkpoint)`
            lm, mimi, tokenizer, name = lm.lm, lm.mimi, lm.tokenizer, lm.source
        if mimi is None:
            raise TypeError("SttStream needs a Checkpoint, or an Lm with its Mimi and tokenizer")
        self.settings = SttSettings.of(lm, name)
        if vad and not lm.extra_heads:
            raise ValueError(
                "--vad needs the voice-activity heads, which this checkpoint lacks (Kyutai's "
                "-mlx repos do): use one that has them, such as kyutai/stt-1b-en_fr-candle"
            )
        if tokenizer is None:
            raise ValueError("this checkpoint has no text tokenizer: nothing to transcribe with")
        if mimi.sample_rate != SAMPLE_RATE or mimi.frame_size != FRAME_SIZE:
            raise ValueError(f"Mimi must run at {SAMPLE_RATE} Hz with {FRAME_SIZE}-sample frames")
        self.lm, self.mimi, self.tokenizer = lm, mimi, tokenizer
        self.batch_size = batch_size
        self.vad = vad
        self.sampler = Sampler(self.settings.temperature, self.settings.top_k)
        self.rng = Rng(seed)
        self.reset()

    def reset(self) -> None:
        """Start new streams: clear Mimi's and the model's caches, the words, the buffers."""
        self.lm.reset()
        self.mimi.reset()
        self.rng.reset()
        self._pending: deque[_Pending] = deque()
        self._text: mx.array | None = None  # (B,) the last text token (lazy)
        self._submitted = 0
        self._samples = np.zeros((self.batch_size, self.settings.prefix_samples), np.float32)
        self.builders = [self._builder() for _ in range(self.batch_size)]
        self._in_turn = [False] * self.batch_size  # words since the last end of turn
        self._index = [0] * self.batch_size  # each row's frames submitted (its next index)
        self._read = [0] * self.batch_size  # each row's frames read back
        self._starting: list[int] = []  # rows whose next step is their start-tokens step
        self._mimi_restart: list[int] = []  # rows whose encoder restarts at the next frame

    def _builder(self) -> WordBuilder:
        return WordBuilder(self.tokenizer, self.settings.word_offset, FRAME_SECONDS)

    @property
    def steps(self) -> int:
        """Frames submitted since the reset."""
        return self._submitted

    # -- stepping --------------------------------------------------------------------------------
    def _model_step(self, tokens: mx.array) -> tuple[mx.array, mx.array]:
        out, text_logits = self.lm.step(tokens)
        return out, self.sampler(text_logits[:, 0], self.rng)

    def submit(self, frames: np.ndarray) -> None:
        """Start the step of the next frame of every row without waiting: (B, FRAME_SIZE).

        A row in its start-tokens step (`starting`) ignores its frame."""
        frames = np.asarray(frames, np.float32).reshape(self.batch_size, -1)
        if frames.shape[1] != FRAME_SIZE:
            raise ValueError(f"a frame is {FRAME_SIZE} samples, got {frames.shape[1]}")
        if self._mimi_restart:  # their first frame: the codes a fresh encoder gives
            self.mimi.restart_encoder_rows(self._mimi_restart)
            self._mimi_restart = []
        self.submit_codes(self.mimi.encode_step(mx.array(frames)[:, None], self.lm.cfg.n_q))

    def submit_codes(self, codes: mx.array) -> None:
        """`submit` for a frame already encoded: Mimi codes (B, n_q, 1)."""
        B, n_q = self.batch_size, self.lm.cfg.n_q
        codes = mx.array(codes)
        if codes.shape != (B, n_q, 1):
            raise ValueError(f"codes must be ({B}, {n_q}, 1), got {tuple(codes.shape)}")
        if self._text is None:  # start tokens only: run_inference drops this step's token
            _, self._text = self._model_step(
                mx.broadcast_to(self.lm.initial_tokens[None, :, None], (B, 1 + n_q, 1))
            )
        tokens = mx.concatenate([self._text[:, None, None], codes.astype(mx.int32)], axis=1)
        starting, self._starting = self._starting, []
        if starting:  # their start tokens: the first step of a stream, as at a reset
            first = np.zeros((B, 1, 1), bool)
            first[starting] = True
            tokens = mx.where(mx.array(first), self.lm.initial_tokens[None, :, None], tokens)
        out, self._text = self._model_step(tokens)
        heads = self.lm.extra_head_probs(out)[:, 0] if self.vad else None
        mx.async_eval(self._text, *([heads] if heads is not None else []))
        # a start step's token is dropped; the row's first frame goes in at the next step
        indices = [None if b in starting else i for b, i in enumerate(self._index)]
        self._index = [i if b in starting else i + 1 for b, i in enumerate(self._index)]
        self._mimi_restart = starting
        self._pending.append(_Pending(indices, self._text, heads))
        self._submitted += 1

    def collect(self) -> list[SttStep | None]:
        """Wait for the oldest submitted step; its result for every row (None for a row in its
        start-tokens step, or restarted or added since)."""
        job = self._pending.popleft()
        tokens = np.array(job.text).tolist()
        heads = np.array(job.heads) if job.heads is not None else [None] * len(tokens)
        steps: list[SttStep | None] = []
        for b in range(self.batch_size):
            index = job.indices[b] if b < len(job.indices) else None
            steps.append(None if index is None else self._row_step(b, index, tokens[b], heads[b]))
        return steps

    def _row_step(self, b: int, index: int, token: int, probs: np.ndarray | None) -> SttStep:
        audio_time = (index + 1) * FRAME_SECONDS  # end of the consumed frame
        heard = audio_time - self.settings.prefix_samples / SAMPLE_RATE
        self._read[b] = index + 1
        words = self.builders[b].add(token, audio_time)
        piece = self.tokenizer.piece(token)
        eot = None if probs is None else float(probs[VAD_HEAD, VAD_CLASS])
        ended = eot is not None and eot > VAD_THRESHOLD and self._in_turn[b]
        if ended:
            self._in_turn[b] = False
        if piece is not None:
            self._in_turn[b] = True
        return SttStep(index, token, piece, heard, words, eot, probs, ended)

    # -- rows that start apart ----------------------------------------------------------------
    def restart_row(self, row: int) -> None:
        """Start a new stream on row `row` while the other rows go on.

        Its next step is its start-tokens step (the frame given for it there is ignored and its
        result is None), the one after consumes its first frame (index 0): its tokens and words
        are those of the same frames stepped alone from a reset. Steps of its old stream not yet
        read back are dropped."""
        if not 0 <= row < self.batch_size:
            raise ValueError(f"row {row} is not in this batch of {self.batch_size}")
        for job in self._pending:
            if row < len(job.indices):
                job.indices[row] = None
        self.builders[row] = self._builder()
        self._in_turn[row] = False
        self._index[row] = self._read[row] = 0
        if self._text is None:
            return  # nothing stepped yet: the first step starts every row
        self.lm.restart_rows([row])
        self._mimi_restart = [b for b in self._mimi_restart if b != row]
        if row not in self._starting:
            self._starting.append(row)

    @property
    def starting(self) -> list[int]:
        """Rows whose next step is their start-tokens step (it ignores their frames)."""
        return list(self._starting)

    def resize(self, batch: int) -> None:
        """Step `batch` rows: rows added at the end start new streams (as `restart_row`), rows
        beyond `batch` are dropped with their streams."""
        if batch < 1:
            raise ValueError(f"a batch has at least one row, not {batch}")
        old = self.batch_size
        if batch == old:
            return
        self.lm.resize_batch(batch)
        self.mimi.resize_encoder_batch(batch)
        for job in self._pending:  # steps of dropped rows are forgotten
            job.indices = job.indices[:batch]
        keep = min(batch, old)
        more = batch - keep
        if self._text is not None:
            self._text = mx.concatenate([self._text[:keep], mx.zeros(more, self._text.dtype)])
        self._samples = np.concatenate(
            [self._samples[:keep], np.zeros((more, self._samples.shape[1]), np.float32)]
        )
        self.builders = self.builders[:keep] + [self._builder() for _ in range(more)]
        self._in_turn = self._in_turn[:keep] + [False] * more
        self._index = self._index[:keep] + [0] * more
        self._read = self._read[:keep] + [0] * more
        self._mimi_restart = [b for b in self._mimi_restart if b < batch]
        self._starting = [b for b in self._starting if b < batch]
        self.batch_size = batch
        if self._text is not None:
            self._starting += list(range(old, batch))

    def step(self, frames: np.ndarray) -> list[list[SttStep | None]]:
        """Submit one frame per row (B, FRAME_SIZE); returns the steps read back meanwhile
        (each a list over rows; they lag the submitted frames by up to `LOOKAHEAD`)."""
        self.submit(frames)
        done = []
        while len(self._pending) > LOOKAHEAD:
            done.append(self.collect())
        return done

    def flush(self) -> list[list[SttStep | None]]:
        """Read back every submitted step."""
        return [self.collect() for _ in range(len(self._pending))]

    # -- a stream of samples (live) -------------------------------------------------------------
    def feed(self, pcm: np.ndarray) -> list[list[SttStep]]:
        """Add samples to the streams ((n,) for one stream or (B, n)) and step every whole frame
        (the silence prefix goes first, added at the reset)."""
        pcm = np.asarray(pcm, np.float32).reshape(self.batch_size, -1)
        self._samples = np.concatenate([self._samples, pcm], axis=1)
        done = []
        while self._samples.shape[1] >= FRAME_SIZE:
            done += self.step(self._samples[:, :FRAME_SIZE])
            self._samples = self._samples[:, FRAME_SIZE:]
        return done

    def finish(self) -> tuple[list[list[SttStep]], list[list[Word]]]:
        """End the streams: the tail of silence (text delay + 1 s), every step read back, the
        last words closed. Returns the steps and, per row, the words closed at the end."""
        done = self.feed(np.zeros((self.batch_size, self.settings.tail_samples), np.float32))
        done += self.flush()
        self._samples = self._samples[:, :0]  # a partial frame is dropped, as Kyutai does
        return done, [self.close_row(b) for b in range(self.batch_size)]

    def close_row(self, row: int) -> list[Word]:
        """Close row `row`'s open word at its last step read back (a file that ended)."""
        audio_time = self._read[row] * FRAME_SECONDS
        words = self.builders[row].finish(audio_time)
        self.builders[row] = self._builder()
        self._in_turn[row] = False
        return words

    def partial(self, row: int = 0) -> str:
        """The word being written on row `row`."""
        return self.builders[row].partial
