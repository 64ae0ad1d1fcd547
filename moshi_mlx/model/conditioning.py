"""Kyutai's conditioners: lookup tables ("description": "very_good", "cfg": "2.0", ...) fused by
summation, and tensors (the TTS's `speaker_wavs`) fused by cross-attention.

A conditioned model (config keys `conditioners` and `fuser`, for example Kyutai's
`moshi_dev_2b`) adds, at every time step, the sum of its lookup-table conditions' embeddings to
the input of the temporal transformer; the tensor conditions (`fuser.cross`) are concatenated
along time, given sinusoidal positions, and attended to by every layer. Parameter names are
Kyutai's (`condition_provider.conditioners.{name}.embed.weight`, `.output_proj.weight`,
`.learnt_padding`), the same in their PyTorch and MLX files.
"""

from __future__ import annotations

import hashlib

import mlx.core as mx
import mlx.nn as nn

from mimi_mlx.nn.attention import sin_embedding


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


class TensorConditioner(nn.Module):
    """A sequence condition (a voice embedding): tensor (B, T, dim) + mask (B, T) -> projection
    (B, T, output_dim), the learnt padding where the mask is False (Kyutai's `TensorConditioner`).
    """

    def __init__(
        self,
        output_dim: int,
        dim: int,
        force_linear: bool = True,
        learn_padding: bool = True,
        **_,
    ):
        super().__init__()
        if force_linear or dim != output_dim:
            self.output_proj = nn.Linear(dim, output_dim, bias=False)
        if learn_padding:
            self.learnt_padding = mx.zeros((1, 1, output_dim))
        self._dim = dim

    @property
    def dim(self) -> int:
        return self._dim

    def __call__(self, tensor: mx.array, mask: mx.array) -> mx.array:
        x = tensor.astype(mx.float32)
        if "output_proj" in self:
            x = self.output_proj(x)
        keep = mask.astype(x.dtype)[..., None]
        padding = self.learnt_padding if "learnt_padding" in self else mx.zeros((), x.dtype)
        return x * keep + padding * (1 - keep)


class ConditionProvider(nn.Module):
    """The model's conditioners, by name (Kyutai's `condition_provider`), and its fuser."""

    def __init__(self, output_dim: int, conditioners: dict, fuser: dict | None):
        super().__init__()
        self.conditioners = {}
        for name, spec in conditioners.items():
            kind = spec.get("type")
            if kind == "lut":
                self.conditioners[name] = LutConditioner(output_dim, **spec["lut"])
            elif kind == "tensor":
                self.conditioners[name] = TensorConditioner(output_dim, **spec["tensor"])
            else:
                raise NotImplementedError(f"conditioner type {kind!r} is not supported")
        fuser = dict(fuser or {})
        if fuser.get("prepend"):
            raise NotImplementedError("condition fusing by 'prepend' is not supported")
        self._sum = list(fuser.get("sum", []))
        self._cross = list(fuser.get("cross", []))
        self._cross_pos_emb = bool(fuser.get("cross_attention_pos_emb", False))
        self._cross_pos_emb_scale = float(fuser.get("cross_attention_pos_emb_scale", 1.0))
        for name in self._sum + self._cross:
            if name not in self.conditioners:
                raise ValueError(f"the fuser names {name!r}, which is not a conditioner")
        for names, kind, how in (
            (self._sum, LutConditioner, "sum"),
            (self._cross, TensorConditioner, "cross"),
        ):
            wrong = [n for n in names if not isinstance(self.conditioners[n], kind)]
            if wrong:
                raise NotImplementedError(
                    f"conditions {wrong} cannot be fused by {how!r}: lookup tables are summed, "
                    "tensors attended to (cross)"
                )

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

    def condition_cross(self, conditions: list[dict]) -> mx.array | None:
        """Per batch row, {name: (tensor (T, dim), mask (T,))} -> the cross-attention source
        (B, S, output_dim), the `cross` conditions concatenated along time; None if none."""
        parts = []
        for name in self._cross:
            tensors, masks = [], []
            for c in conditions:
                if c.get(name) is None:
                    raise ValueError(f"this model needs the tensor condition {name!r}")
                tensor, mask = c[name]
                tensors.append(mx.array(tensor))
                masks.append(mx.array(mask).astype(mx.bool_))
            parts.append(self.conditioners[name](mx.stack(tensors), mx.stack(masks)))
        if not parts:
            return None
        cross = mx.concatenate(parts, axis=1)
        if self._cross_pos_emb:
            pos = sin_embedding(mx.arange(cross.shape[1]), cross.shape[-1], 10000.0)
            cross = cross + self._cross_pos_emb_scale * pos.astype(cross.dtype)
        return cross
