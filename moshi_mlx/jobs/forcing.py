"""Teacher forcing (`MoshiGenerator.prefill`, specified in `generate.py`'s docstring): the
outputs given instead of sampled, per step the text token and each generated codebook, placed at
the step that produces them (codebook k of time t at step t + delay_k); a block of steps whose
every output is given runs as one forward pass."""

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


class Prefill:
    """`MoshiGenerator`'s teacher forcing, mixed into it: `prefill` fills the generator's
    `ForcedSteps` and advances its state (its step, history and caches) as `step` does."""

    def prefill(
        self,
        text=None,
        audio=None,
        user=None,
        embeddings: mx.array | None = None,
        batched: bool = True,
    ) -> None:
        """Give streams for the next n steps instead of sampling (or hearing) them.

        Args:
            text: (B, n) or (n,) Moshi's text tokens for times `step_index .. + n - 1`.
            audio: (B, n_gen, n) Moshi's audio codes for those times (undelayed, as Mimi
                gives them; codebook k is forced at step t + delay_k).
            user: (B, n_user, n) the user's codes; absent: -1, "no input" (embeds to zero).
            embeddings: (B, n, dim) input embeddings of these n steps, used instead of the
                tokens' (a saved voice prompt); the tokens then only feed later steps.
            batched: run the block as one forward pass when every output is given (else, and
                when False, forced steps are run one at a time).

        Streams not given are sampled as usual. Nothing is returned; Moshi's audio of these
        times comes out of the next `step` calls like any other.
        """
        B, G = self.batch_size, self.num_codebooks
        given = [x for x in (text, audio, user, embeddings) if x is not None]
        if not given:
            raise ValueError("prefill needs at least one stream")
        text = None if text is None else int_array(text)
        if text is not None and text.ndim == 1:
            text = mx.broadcast_to(text[None], (B, text.shape[0]))
        audio = None if audio is None else int_array(audio)
        user = None if user is None else int_array(user)
        lengths = {x.shape[-1] for x in (text, audio, user) if x is not None}
        if embeddings is not None:
            lengths.add(embeddings.shape[1])
        if len(lengths) != 1:
            raise ValueError(f"the prefilled streams have different lengths: {sorted(lengths)}")
        (n,) = lengths
        self._check_shape("text", text, (B, n))
        self._check_shape("audio", audio, (B, G, n))
        self._check_shape("user", user, (B, self._n_user, n))
        S = self._step
        if text is not None or audio is not None:
            self._forced.give(S, text, audio)
        if user is None:
            user = mx.full((B, self._n_user, n), -1, dtype=mx.int32)
        if batched and all(self._forced.complete(S + i) for i in range(n)):
            self._batched(user, n, embeddings)
            return
        if embeddings is not None:
            raise ValueError("prefill with embeddings needs every output given (text and audio)")
        for i in range(n):
            self._advance(self._user_frame(user[:, :, i]))
        mx.async_eval(self._text, *self._audio)

    def _check_shape(self, name: str, x: mx.array | None, shape: tuple) -> None:
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"prefill {name} must have shape {shape}, got {tuple(x.shape)}")

    def _placeholder_audio(self, audio: list[mx.array | None]) -> mx.array:
        B, initial = self.batch_size, self.model.initial_tokens
        return mx.stack(
            [a if a is not None else mx.full((B,), initial[1 + k]) for k, a in enumerate(audio)],
            axis=1,
        ).astype(mx.int32)

    def _batched(self, user: mx.array, n: int, embeddings: mx.array | None) -> None:
        """n fully forced steps in one forward pass of the temporal transformer."""
        columns = []
        for i in range(n):
            self._user = (self._user + [self._user_frame(user[:, :, i])])[-(self.max_delay + 2) :]
            columns.append(self._inputs())
            text, audio = self._forced.pop(self._step)
            self._text = text.astype(mx.int32)
            self._audio = (self._audio + [self._placeholder_audio(audio)])[-(self.max_delay + 1) :]
            self._step += 1
        tokens = mx.concatenate(columns, axis=2)  # (B, K, n)
        if self.cfg_coef != 1.0:
            tokens = mx.concatenate([tokens, tokens], axis=0)
        if embeddings is not None:
            x = embeddings.astype(self.model.dtype)
            if self.cfg_coef != 1.0:
                x = mx.concatenate([x, x], axis=0)
            x = x if self._condition is None else x + self._condition
        else:
            x = self.model.embed(tokens, self._condition)
        mx.eval(self.model.transformer.step(x, cross=self._cross))
        mx.eval(self._text, *self._audio)
