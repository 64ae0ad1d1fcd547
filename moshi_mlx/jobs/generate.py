"""The streaming generator: one 80 ms step in (the user's codes), Moshi's text and audio out.

User-stream alignment. Kyutai's generators differ by one step: their PyTorch `LMGen.step(codes)`
feeds the user's frame k to the model at step k (and replaces the very first frame by start
tokens), while their MLX and Rust generators feed it at step k + 1. We follow MLX/Rust: the frame
given to `step` number k is consumed at step k + 1, which is exactly the alignment of the
teacher-forced `Lm.forward` (Moshi's text and audio at time t are predicted from the user's frames
up to t - 1). Kyutai's PyTorch `LMGen` gives the same tokens when its first frame is fed twice
(as their offline script does): feed it `u0, u0, u1, u2, ...`.

Delays. With Moshi's delays (text and semantic codebooks 0, acoustic codebooks 1), each step
samples the text token for time t and, in the depth decoder, each audio codebook k for time
t - delay_k. Complete audio frames therefore lag the text by the largest delay: `step` returns
`None` for the audio during the first `max_delay` steps, then the frame for time t - max_delay.

Teacher forcing (`prefill`). Any subset of the streams (text, Moshi's audio, the user's audio)
can be given for the next steps instead of sampled or heard: Moshi's codebook k of time t is then
forced at step t + delay_k, so a prefill of frames up to time T also fixes the acoustic codebooks
of the first steps after it. When every output of a block of steps is given, the block runs as
one batched forward pass of the temporal transformer (no depth decoder, no sampling); its caches
are those of the same steps run one at a time.

Every cache is bounded (the temporal transformer's ring holds its 3000-step context, the delay
buffers hold `max_delay + 1` steps): a session can run for hours.

Text-driven models (Kyutai's TTS, see `tts.py`) have no user stream (`step(None)`), and steer a
step through `text_hook` (the text token fed back) and `silent` (codebooks not generated yet).
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

from ..model.lm import Lm
from .forcing import ForcedSteps, Prefill
from .sampling import Rng, Sampler


class MoshiGenerator(Prefill):
    """Streams Moshi one time step at a time.

    Args:
        model: the language model.
        text_temperature, text_top_k: text sampling (Kyutai's defaults 0.7 and 25).
        audio_temperature, audio_top_k: audio sampling (Kyutai's defaults 0.8 and 250).
        top_p: nucleus sampling threshold for both, None to disable.
        seed: seed of the generator's own random stream (None: a random seed).
        depformer_steps: depth-decoder steps run each step (default: the codebooks Moshi
            speaks, `cfg.num_generated`). PersonaPlex's decoder has 16, the last 8 predicting the
            user: running them (fed the user's tokens, as NVIDIA's code) changes nothing.
        batch_size: number of independent streams.
        conditions: for conditioned models (Kyutai's `conditioners` + `fuser` config keys),
            {name: value}, e.g. {"description": "very_good"}, or one dict a batch row.
        cfg_coef: classifier-free guidance (1: none); logits become
            `null + cfg_coef * (conditioned - null)`, the null ones computed with
            `cfg_conditions` (default: no value, Kyutai's learnt padding).
        num_codebooks: generate only the first `num_codebooks` of the `dep_q` codebooks (Kyutai's
            TTS `n_q`); the others are fed as "no input" (-1), as Kyutai's `TTSModel` does.

    A temperature of 0 means greedy decoding. Tensor conditions (Kyutai's TTS voices, fused by
    cross-attention) are turned into every layer's keys and values once, here.
    """

    def __init__(
        self,
        model: Lm,
        *,
        text_temperature: float = 0.7,
        text_top_k: int | None = 25,
        audio_temperature: float = 0.8,
        audio_top_k: int | None = 250,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int = 1,
        conditions: dict | list[dict] | None = None,
        cfg_coef: float = 1.0,
        cfg_conditions: dict | list[dict] | None = None,
        num_codebooks: int | None = None,
        depformer_steps: int | None = None,
    ):
        self.model = model
        self.cfg = model.cfg
        self.text_sampler = Sampler(text_temperature, text_top_k, top_p)
        self.audio_sampler = Sampler(audio_temperature, audio_top_k, top_p)
        self.rng = Rng(seed)
        self.batch_size = batch_size
        cfg = self.cfg
        # PersonaPlex generates 8 of its 16 depth-decoder codebooks (`cfg.num_generated`)
        n = cfg.num_generated if num_codebooks is None else num_codebooks
        if not 1 <= n <= cfg.dep_q:
            raise ValueError(f"num_codebooks must be in 1..{cfg.dep_q}, got {n}")
        self.num_codebooks = n
        self.depformer_steps = n if depformer_steps is None else depformer_steps
        if not n <= self.depformer_steps <= cfg.dep_q:
            raise ValueError(f"depformer_steps must be in {n}..{cfg.dep_q}")
        self._gen_delays = cfg.delays[1 : 1 + n]
        self._user_delays = cfg.delays[1 + n :]
        self._n_user = cfg.num_user_codebooks  # given by the caller; the rest are -1
        self.cfg_coef = cfg_coef
        if cfg_coef != 1.0:  # classifier-free guidance: a second, unconditioned half-batch
            rows = [conditions] * batch_size if isinstance(conditions, dict) else conditions
            null = cfg_conditions
            null = [null] * batch_size if isinstance(null, dict) or null is None else null
            if rows is None or len(null) != batch_size:
                raise ValueError("classifier-free guidance needs conditions and cfg_conditions")
            null = [n if n is not None else dict.fromkeys(rows[0]) for n in null]
            self._condition = model.condition(list(rows) + list(null), 2 * batch_size)
            self._cross = model.cross_condition(list(rows) + list(null), 2 * batch_size)
        else:
            self._condition = model.condition(conditions, batch_size)
            self._cross = model.cross_condition(conditions, batch_size)
        self.reset()

    @property
    def max_delay(self) -> int:
        return self.cfg.max_delay

    @property
    def audio_delays(self) -> list[int]:
        """The delay of each generated codebook (steps behind the text)."""
        return list(self._gen_delays)

    @property
    def step_index(self) -> int:
        """Steps taken since the last reset."""
        return self._step

    def reset(self, seed: int | None = None) -> None:
        """Start a new session: clear the model's caches, the delay buffers and the RNG (from
        `seed` when given, else from the generator's seed)."""
        self.model.reset()
        if seed is not None:
            self.rng = Rng(seed)
        self.rng.reset()
        self._step = 0
        self._text: mx.array | None = None  # (B,) text sampled at the previous step
        self._audio: list[mx.array] = []  # depth-decoder outputs (B, dep_q) of the last steps
        self._user: list[mx.array] = []  # user frames (B, n_user) of the last steps
        self._forced = ForcedSteps(self._gen_delays)  # outputs given, not sampled

    def _user_frame(self, user_codes) -> mx.array:
        n = self._n_user
        if user_codes is None and n == 0:
            codes = mx.zeros((self.batch_size, 0), dtype=mx.int32)
        else:
            codes = mx.array(user_codes) if not isinstance(user_codes, mx.array) else user_codes
        if codes.ndim == 3:
            codes = codes[:, :, 0]
        if codes.ndim != 2 or codes.shape[0] != self.batch_size or codes.shape[1] < n:
            raise ValueError(
                f"user codes must be ({self.batch_size}, {n}) or ({self.batch_size}, {n}, 1), "
                f"got shape {tuple(codes.shape)}"
            )
        codes = codes[:, :n].astype(mx.int32)
        skipped = len(self._user_delays) - n  # codebooks not generated: "no input"
        if skipped:
            codes = mx.concatenate([mx.full((self.batch_size, skipped), -1, mx.int32), codes], 1)
        return codes

    def _inputs(self) -> mx.array:
        """(B, K, 1) input tokens of this step from the stored history."""
        B, s = self.batch_size, self._step
        initial = self.model.initial_tokens
        text = self._text if self._text is not None else mx.full((B,), initial[0])
        columns = [text]
        for k, d in enumerate(self._gen_delays):
            # the depth decoder's output of the previous step is already in the delayed domain
            columns.append(self._audio[-1][:, k] if s > d else mx.full((B,), initial[1 + k]))
        for j, d in enumerate(self._user_delays):
            # user frame of step s - 1 - d (see the module docstring)
            age = 2 + d  # _user[-1] is this step's frame
            if s - 1 - d >= 0:
                columns.append(self._user[-age][:, j])
            else:
                columns.append(mx.full((B,), initial[1 + self.num_codebooks + j]))
        return mx.stack(columns, axis=1).astype(mx.int32)[:, :, None]

    def _guided(self, logits: mx.array) -> mx.array:
        """Classifier-free guidance: (2 B, V) -> null + coef * (conditioned - null)."""
        if self.cfg_coef == 1.0:
            return logits
        conditioned, null = mx.split(logits, 2, axis=0)
        return null + (conditioned - null) * self.cfg_coef

    def step(
        self,
        user_codes,
        text_hook: Callable[[mx.array], mx.array] | None = None,
        silent: list[bool] | None = None,
    ) -> tuple[mx.array, mx.array | None]:
        """Advance one 80 ms step.

        Args:
            user_codes: (B, n_user) or (B, n_user, 1) integer Mimi codes of the user's frame
                (mx.array or NumPy), n_user = 8 for Moshi; extra codebooks are ignored. None
                for models without a user stream.
            text_hook: maps the sampled text tokens (B,) to the ones fed back to the model and
                to the depth decoder (Kyutai's TTS state machine).
            silent: per generated codebook, True where this step's token must be "no audio"
                (-1) instead of sampled; the depth decoder is skipped when all are.

        Returns:
            text_token: (B,) int32, the text token of this step.
            audio_codes: (B, num_codebooks) int32 Moshi's codes for time `step - max_delay`,
                ready for Mimi, or None during the first `max_delay` steps.

        The results are lazy MLX arrays whose evaluation has been started (`mx.async_eval`);
        nothing here waits for a value.
        """
        text, frame = self._advance(self._user_frame(user_codes), text_hook, silent)
        mx.async_eval(text, *(self._audio if frame is None else [frame, *self._audio]))
        return text, frame

    def _advance(
        self, user_frame: mx.array, text_hook=None, silent: list[bool] | None = None
    ) -> tuple[mx.array, mx.array | None]:
        """One step (forced outputs from `prefill` where given); returns (text, frame)."""
        self._user = (self._user + [user_frame])[-(self.max_delay + 2) :]
        B, n = self.batch_size, self.num_codebooks
        forced_text, forced_audio = self._forced.pop(self._step)
        if self._step < self.max_delay:
            # codebooks of times before 0 are never used: not sampled, where no sampled
            # codebook after them reads their token in the depth decoder
            initial = self.model.initial_tokens
            forced_audio = list(forced_audio)
            for k in reversed(range(len(forced_audio))):
                if forced_audio[k] is None:
                    if self._step >= self._gen_delays[k]:
                        break
                    forced_audio[k] = mx.full((B,), initial[1 + k], mx.int32)
        tokens = self._inputs()
        if self.cfg_coef != 1.0:
            tokens = mx.concatenate([tokens, tokens], axis=0)
        out, text_logits = self.model.step(tokens, self._condition, self._cross)
        if forced_text is not None:
            text = forced_text.astype(mx.int32)
        else:
            text = self.text_sampler(self._guided(text_logits[:, 0]), self.rng)
            if text_hook is not None:
                text = text_hook(text)
        if silent is not None and all(silent):
            audio = mx.full((B, n), -1, mx.int32)
        else:
            feed = None
            extra = self.depformer_steps - n
            if extra:  # NVIDIA's decoder also runs the user's codebooks, fed the user's tokens
                # slice n + j is fed the user's codebook j of this step's time (delay d_j)
                feed = [None] * n + [
                    self._user[-1 - d][:, j] if len(self._user) > d else None
                    for j, d in enumerate(self._user_delays[:extra])
                ]
            if all(a is not None for a in forced_audio) and not extra:
                audio = mx.stack(forced_audio, axis=1).astype(mx.int32)
            else:
                audio = self.model.depformer.sample(
                    out,
                    text,
                    lambda logits: self.audio_sampler(self._guided(logits), self.rng),
                    self.depformer_steps,
                    forced=forced_audio,
                    feed=feed,
                )[:, :n]
            if silent is not None and any(silent):
                audio = mx.where(mx.array(silent)[None], mx.array(-1, mx.int32), audio)
        self._text = text
        self._audio = (self._audio + [audio])[-(self.max_delay + 1) :]
        self._step += 1
        frame = None
        t = self._step - 1 - self.max_delay  # the time whose codebooks are all generated now
        if t >= 0:
            # codebook k of time t was generated at step t + delay_k
            columns = [
                self._audio[len(self._audio) - 1 - (self.max_delay - d)][:, k]
                for k, d in enumerate(self._gen_delays)
            ]
            frame = mx.stack(columns, axis=1)
        return text, frame
