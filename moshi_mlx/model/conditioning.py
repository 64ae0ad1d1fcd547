"""Kyutai's lookup-table conditioners ("description": "very_good", ...), fused by summation.

A conditioned model (config keys `conditioners` and `fuser`, for example Kyutai's
`moshi_dev_2b`) adds, at every time step, the sum of its conditions' embeddings to the input of
the temporal transformer. Parameter names are Kyutai's (`condition_provider.conditioners.{name}
.embed.weight`, `.output_proj.weight`, `.learnt_padding`), the same in their PyTorch and MLX files.
"""

from __future__ import annotations

import hashlib

import mlx.core as mx
import mlx.nn as nn


def hash_trick(word: str, vocab_size: int) -> int:
    """Kyutai's index for a value without a list of possible values."""
    return int(hashlib.sha256(word.encode("utf-8")).hexdigest(), 16) % vocab_size


class LutConditioner(nn.Module):
    """One categorical condition: value -> index -> embedding -> projection (B, 1, output_dim).

    Args:
        output_dim: the language model's width.
        n_bins, dim: the table (one more row for "no value").
        tokenizer: only Kyutai's "noop" (the whole value is one token).
        possible_values: the values in index order; None: Kyutai's hash trick.
        force_linear, learn_padding: as Kyutai's `BaseConditioner`.
    """

    def __init__(
        self,
        output_dim: int,
        n_bins: int,
        dim: int,
        tokenizer: str = "noop",
        possible_values: list[str] | None = None,
        force_linear: bool = True,
        learn_padding: bool = True,
        **_,
    ):
        super().__init__()
        if tokenizer != "noop":
            raise NotImplementedError(f"conditioner tokenizer {tokenizer!r} is not supported")
        self.embed = nn.Embedding(n_bins + 1, dim)
        if force_linear or dim != output_dim:
            self.output_proj = nn.Linear(dim, output_dim, bias=False)
        if learn_padding:
            self.learnt_padding = mx.zeros((1, 1, output_dim))
        self._n_bins = n_bins
        self._values = None if possible_values is None else list(possible_values)

    def index(self, value: str) -> int:
        if self._values is None:
            return hash_trick(value, self._n_bins)
        if value not in self._values:
            raise ValueError(f"{value!r} is not one of the possible values {self._values}")
        return self._values.index(value)

    def __call__(self, values: list[str | None]) -> mx.array:
        """One value per batch row (None: no condition) -> (B, 1, output_dim)."""
        rows = []
        for value in values:
            index = self._n_bins if value is None else self.index(value)
            x = self.embed(mx.array([[index]]))[0]  # (1, dim)
            if "output_proj" in self:
                x = self.output_proj(x)
            if value is None:  # Kyutai masks the padding row out
                x = self.learnt_padding[0] if "learnt_padding" in self else mx.zeros_like(x)
            rows.append(x)
        return mx.stack(rows, axis=0)


class ConditionProvider(nn.Module):
    """The model's conditioners, by name (Kyutai's `condition_provider`)."""

    def __init__(self, output_dim: int, conditioners: dict, fuser: dict | None):
        super().__init__()
        self.conditioners = {}
        for name, spec in conditioners.items():
            kind = spec.get("type")
            if kind != "lut":
                raise NotImplementedError(f"conditioner type {kind!r} is not supported")
            self.conditioners[name] = LutConditioner(output_dim, **spec["lut"])
        fuser = dict(fuser or {})
        unsupported = [k for k in ("cross", "prepend") if fuser.get(k)]
        if unsupported:
            raise NotImplementedError(f"condition fusing by {unsupported} is not supported")
        self._sum = list(fuser.get("sum", []))

    @property
    def names(self) -> list[str]:
        """Conditions added to the model's input (the fuser's `sum` list)."""
        return list(self._sum)

    def condition_sum(self, conditions: list[dict[str, str | None]]) -> mx.array | None:
        """Per batch row, {name: value} -> the summed condition (B, 1, output_dim), or None."""
        total = None
        for name in self._sum:
            part = self.conditioners[name]([c.get(name) for c in conditions])
            total = part if total is None else total + part
        return total
