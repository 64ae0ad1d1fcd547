"""The per-frame pipeline: Mimi encode -> Moshi step -> Mimi decode, one 80 ms frame at a time.

One `Pipeline` owns every MLX object of a session (Mimi, the generator, their caches) and must be
used from one thread only: a lazy MLX graph built on one thread cannot be evaluated on another.
Audio goes in and out as NumPy arrays.

The live chat and the offline mode both drive this class, so for the same input frames and seed
they produce identical text and audio. `submit` starts a frame's work without waiting
(`mx.async_eval`), `collect` waits for the oldest submitted frame: submitting the next frame
before collecting the current one overlaps Python's graph building with the computation.

Timeline: the result of step k holds the text token of time k and the audio Moshi plays during
step k, which is its frame for time k - `audio_lag` (silence during the first `audio_lag` steps).
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mimi_mlx.constants import FRAME_SIZE, SAMPLE_RATE
from mimi_mlx.model import Mimi

from ..model.lm import Lm
from ..model.tokenizer import TextTokenizer
from .generate import MoshiGenerator
from .prompts import PromptFrames
from .sampling import Sampling


@dataclass(frozen=True)
class Guidance:
    """Conditions of a conditioned model (Hibiki) and classifier-free guidance against
    `cfg_conditions` (coefficient 1: none)."""

    conditions: dict | None = None
    cfg_coef: float = 1.0
    cfg_conditions: dict | None = None


@dataclass
class FrameResult:
    """What one step produced.

    Attributes:
        step: index of the step since the session started (0-based).
        token: Moshi's text token of this step.
        piece: the token as text, None for padding (or without a tokenizer).
        audio: (FRAME_SIZE,) float32, Moshi's audio played during this step (zeros while the
            audio still lags the text).
        has_audio: False for the first `audio_lag` steps, whose audio is silence.
    """

    step: int
    token: int
    piece: str | None
    audio: np.ndarray
    has_audio: bool


@dataclass
class _Pending:
    step: int
    text: mx.array
    codes: mx.array | None


class Pipeline:
    """Moshi on a stream of 80 ms user frames.

    Args:
        lm: Moshi's language model (`Checkpoint.lm`).
        mimi: the codec (`Checkpoint.mimi`).
        tokenizer: the text tokenizer (`Checkpoint.tokenizer`), or None to skip text pieces.
        sampling: sampling settings and seed.
        guidance: conditions and classifier-free guidance (conditioned models).
        prompt: frames teacher-forced at the start of every session (`prompts.system_prompt`).

    The pipeline starts a fresh session when built and on `reset()`.
    """

    def __init__(
        self,
        lm: Lm,
        mimi: Mimi,
        tokenizer: TextTokenizer | None = None,
        sampling: Sampling | None = None,
        guidance: Guidance | None = None,
        prompt: PromptFrames | None = None,
    ):
        sampling = sampling or Sampling()
        if sampling.seed is None:
            sampling = Sampling(**{**sampling.to_dict(), "seed": secrets.randbits(31)})
        self.sampling = sampling
        self.lm = lm
        self.mimi = mimi
        self.tokenizer = tokenizer
        self.num_codebooks = lm.cfg.num_user_codebooks
        if mimi.sample_rate != SAMPLE_RATE or mimi.frame_size != FRAME_SIZE:
            raise ValueError(
                f"Mimi runs at {mimi.sample_rate} Hz with {mimi.frame_size}-sample frames; "
                f"the pipeline needs {SAMPLE_RATE} Hz and {FRAME_SIZE}"
            )
        self.generator = MoshiGenerator(
            lm,
            text_temperature=sampling.text_temperature,
            text_top_k=sampling.text_top_k,
            audio_temperature=sampling.audio_temperature,
            audio_top_k=sampling.audio_top_k,
            top_p=sampling.top_p,
            seed=sampling.seed,
            conditions=(guidance or Guidance()).conditions,
            cfg_coef=(guidance or Guidance()).cfg_coef,
            cfg_conditions=(guidance or Guidance()).cfg_conditions,
        )
        self.prompt = prompt
        self._owner = threading.get_ident()
        self.reset()

    @property
    def seed(self) -> int:
        return self.sampling.seed

    @property
    def audio_lag(self) -> int:
        """Steps by which Moshi's audio lags its text (1 for Moshiko)."""
        return self.generator.max_delay

    @property
    def steps(self) -> int:
        """Frames submitted since the session started."""
        return self._submitted

    @property
    def pending(self) -> int:
        """Frames submitted and not yet collected."""
        return len(self._pending)

    def reset(self) -> None:
        """Start a new session: clear Mimi's streams, Moshi's caches and the random stream."""
        self._check_thread()
        self._pending: deque[_Pending] = deque()
        self._submitted = 0
        self.generator.reset()
        self.mimi.reset()
        self._prompted = False  # the prompt is prefilled before the session's first frame

    def prefill_prompt(self) -> None:
        """Teacher-force the prompt now (else the first `submit` does it); once a session."""
        self._check_thread()
        if self.prompt is not None and not self._prompted and not self._submitted:
            from .prompts import prefill_prompt

            prefill_prompt(self.generator, self.prompt)
        self._prompted = True

    def submit(self, pcm: np.ndarray, codes=None) -> None:
        """Start the work of the next user frame without waiting for it.

        Args:
            pcm: (FRAME_SIZE,) float samples at 24 kHz, the user's next 80 ms.
            codes: (1, n_user) codes the model hears instead of the frame's (Mimi's encoder
                still takes the frame: Kyutai's `hibiki_zero` puts its end-of-input frame in
                place of an encoded one).
        """
        self._check_thread()
        if not self._prompted:
            self.prefill_prompt()
        user = self.encode(pcm)
        self.submit_codes(user if codes is None else codes)

    def encode(self, pcm: np.ndarray) -> mx.array:
        """Mimi's codes (1, n_user) of the user's next frame (lazy); the model does not step."""
        self._check_thread()
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        if pcm.shape[0] != FRAME_SIZE:
            raise ValueError(f"a frame is {FRAME_SIZE} samples, got {pcm.shape[0]}")
        return self.mimi.encode_step(mx.array(pcm)[None, None], self.num_codebooks)

    def restart_encoder(self) -> None:
        """Mimi's encoder starts a new stream (the model's and the decoder's go on)."""
        self._check_thread()
        self.mimi.reset_encoder()

    def submit_codes(self, user_codes) -> None:
        """`submit` of the user's Mimi codes (1, n_user) instead of audio (Mimi's encoder is
        not run: Kyutai's end-of-stream frame, all codes = card, is not audio)."""
        self._check_thread()
        if not self._prompted:
            self.prefill_prompt()
        text, codes = self.generator.step(user_codes)  # lazy, evaluation already started
        self._pending.append(_Pending(self._submitted, text, codes))
        self._submitted += 1

    def end_of_stream_codes(self) -> mx.array:
        """Kyutai's end-of-stream frame: every user codebook = `card` (Hibiki)."""
        return mx.full((1, self.num_codebooks), self.lm.cfg.card, dtype=mx.int32)

    def collect(self) -> FrameResult:
        """Wait for the oldest submitted frame and return its result."""
        self._check_thread()
        if not self._pending:
            raise RuntimeError("collect() without a submitted frame")
        job = self._pending.popleft()
        if job.codes is None:
            audio = np.zeros(FRAME_SIZE, np.float32)
        else:
            # Mimi's decoder must see the frames in order: collect is FIFO.
            out = self.mimi.decode_step(job.codes[:, :, None], check_range=False)
            audio = np.array(out[0, 0].astype(mx.float32))
        token = int(job.text[0].item())
        piece = self.tokenizer.piece(token) if self.tokenizer is not None else None
        return FrameResult(job.step, token, piece, audio, job.codes is not None)

    def step(self, pcm: np.ndarray) -> FrameResult:
        """Submit one frame and wait for its result (nothing else may be pending)."""
        if self._pending:
            raise RuntimeError("step() with frames pending: collect them first")
        self.submit(pcm)
        return self.collect()

    def warmup(self, steps: int = 3) -> None:
        """Run a few silent frames (first calls are slower), then start a fresh session."""
        for _ in range(steps):
            self.step(np.zeros(FRAME_SIZE, np.float32))
        self.reset()

    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError("a Pipeline must be used from the thread that built it")
