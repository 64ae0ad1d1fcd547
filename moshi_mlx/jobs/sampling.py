"""Token sampling: temperature, top-k, top-p, greedy at temperature 0, with an explicit RNG."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import mlx.core as mx

from mimi_mlx.nn.compiled import compile_enabled


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of a session (Kyutai's defaults); temperature 0 is greedy.

    `seed` None draws a random seed when the pipeline is built; the pipeline reports it, so any
    session can be reproduced.
    """

    text_temperature: float = 0.7
    text_top_k: int = 25
    audio_temperature: float = 0.8
    audio_top_k: int = 250
    top_p: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Rng:
    """A seedable stream of MLX random keys (no global random state is touched)."""

    def __init__(self, seed: int | None = None):
        if seed is None:
            import secrets

            seed = secrets.randbits(63)
        self.seed = seed
        self._key = mx.random.key(seed)

    def next_key(self) -> mx.array:
        self._key, key = mx.random.split(self._key)
        return key

    def reset(self) -> None:
        self._key = mx.random.key(self.seed)


@dataclass
class Sampler:
    """Samples tokens from logits (..., V) -> (...) int32.

    Args:
        temperature: 0 (or less) means greedy (argmax).
        top_k: keep the k most likely tokens (None or 0: all).
        top_p: keep the smallest set of tokens whose probability reaches top_p (None: all).
    """

    temperature: float = 0.8
    top_k: int | None = 250
    top_p: float | None = None

    def __call__(self, logits: mx.array, rng: Rng) -> mx.array:
        if self.temperature <= 0:
            return mx.argmax(logits.astype(mx.float32), axis=-1).astype(mx.int32)
        top_p = 1.0 if self.top_p is None else float(self.top_p)
        args = (logits, rng.next_key(), float(self.temperature), int(self.top_k or 0), top_p)
        return (_sample_compiled if compile_enabled() else _sample)(*args)


def _sample(
    logits: mx.array, key: mx.array, temperature: float, top_k: int, top_p: float
) -> mx.array:
    """Tokens drawn from `logits / temperature`, within the top k (0: all) and the nucleus."""
    logits = logits.astype(mx.float32) / temperature
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = mx.topk(logits, top_k, axis=-1).min(axis=-1, keepdims=True)
        logits = mx.where(logits < kth, -mx.inf, logits)
    if top_p < 1.0:
        logits = _top_p(logits, top_p)
    return mx.random.categorical(logits, axis=-1, key=key).astype(mx.int32)


_sample_compiled = mx.compile(_sample)  # one trace per shape and settings: fused, no Python


def _top_p(logits: mx.array, top_p: float) -> mx.array:
    """Mask the tokens outside the nucleus: the most likely ones whose mass first reaches top_p."""
    order = mx.argsort(-logits, axis=-1)
    sorted_logits = mx.take_along_axis(logits, order, axis=-1)
    probs = mx.softmax(sorted_logits, axis=-1)
    mass_before = mx.cumsum(probs, axis=-1) - probs
    sorted_logits = mx.where(mass_before < top_p, sorted_logits, -mx.inf)
    inverse = mx.argsort(order, axis=-1)
    return mx.take_along_axis(sorted_logits, inverse, axis=-1)
