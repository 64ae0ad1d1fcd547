"""Outputs given instead of sampled (`MoshiGenerator.prefill`): per step, the text token and
each generated codebook, placed at the step that produces them (codebook k of time t at step
t + delay_k)."""

from __future__ import annotations

import mlx.core as mx

Forced = tuple[mx.array | None, list[mx.array | None]]  # (text (B,), codebook k (B,) or None)


class ForcedSteps:
    """The outputs given for the steps to come.

    Args:
        delays: the generated codebooks' delays (`cfg.delays[1 : 1 + num_generated]`).
    """

    def __init__(self, delays: list[int]):
        self.delays = list(delays)
        self._steps: dict[int, Forced] = {}

    def __len__(self) -> int:
        """Steps with something given still to come."""
        return len(self._steps)

    def give(self, start: int, text: mx.array | None, audio: mx.array | None) -> None:
        """Text (B, n) and undelayed audio codes (B, n_gen, n) for times `start .. + n - 1`."""
        n = (text if text is not None else audio).shape[-1]
        for i in range(n):
            if text is not None:
                self._set(start + i, text=text[:, i])
            if audio is not None:
                for k, d in enumerate(self.delays):
                    self._set(start + i + d, codebook=k, token=audio[:, k, i])

    def complete(self, step: int) -> bool:
        """Every output of `step` is given (or never used: codebooks of times before 0)."""
        text, audio = self._steps.get(step, (None, [None] * len(self.delays)))
        return text is not None and all(
            a is not None or step < d for a, d in zip(audio, self.delays, strict=True)
        )

    def pop(self, step: int) -> Forced:
        """What is given for `step` (None where nothing is), forgotten once taken."""
        return self._steps.pop(step, (None, [None] * len(self.delays)))

    def _set(self, step: int, text=None, codebook: int | None = None, token=None) -> None:
        forced_text, forced_audio = self.pop(step)
        if text is not None:
            forced_text = text
        if codebook is not None:
            forced_audio = list(forced_audio)
            forced_audio[codebook] = token
        self._steps[step] = (forced_text, forced_audio)


def int_array(x) -> mx.array:
    """Tokens as an int32 MLX array (from a list, NumPy or MLX)."""
    return (x if isinstance(x, mx.array) else mx.array(x)).astype(mx.int32)
