"""A Moshi checkpoint read one tensor at a time, in any layout `moshi_mlx` loads.

`mx.load` opens a safetensors file lazily: nothing is read until an array is evaluated, and then
only that tensor. An evaluated array keeps its data while it is referenced, so the lazy handles
are dropped after each output tensor (`release`) and opened again for the next one: at any time
only the tensors of the current output are in memory.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mimi_mlx.io.hub import CheckpointError
from mimi_mlx.io.safetensors import read_safetensors
from moshi_mlx.model.checkpoint import (
    CheckpointFiles,
    config_from,
    end_of_text_as_padding,
    hears_end_of_text_as_padding,
    lora_for,
    resolve,
)
from moshi_mlx.model.config import LmConfig
from moshi_mlx.model.lm import Lm
from moshi_mlx.model.lora import linear_layers, lora_deltas
from moshi_mlx.model.name_tables import name_table, unused_sources
from moshi_mlx.model.weights import LAYOUT_NAMES, detect_format, ignored, normalize_names


def _listing(names: list[str], limit: int = 8) -> str:
    more = " ..." if len(names) > limit else ""
    return f"({len(names)}): {', '.join(names[:limit])}{more}"


class SourceCheckpoint:
    """The float weights of a Moshi checkpoint (Kyutai PyTorch, Kyutai MLX or transformers).

    Args:
        checkpoint: hub repo id, folder or `.safetensors` file (as `moshi_mlx.load_model`).
        revision: hub revision.
        lora, lora_scaling: a LoRA adapter fused into the weights instead of the one
            config.json names (as `moshi_mlx.load_model`).

    Attributes:
        files: where the pieces are (`moshi_mlx.checkpoint.CheckpointFiles`).
        config: the model configuration.
        format: "pytorch", "mlx" or "hf".
        rows: our parameter name -> (source tensor names, transform), in table order.

    Raises:
        CheckpointError: not a Moshi checkpoint, already quantized, or not matching its config.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        revision: str | None = None,
        lora: str | Path | None = None,
        lora_scaling: float | None = None,
    ):
        self.files: CheckpointFiles = resolve(checkpoint, revision)
        self.where: dict[str, Path] = {}  # our spelling of a source tensor -> its file
        for path in self.files.weights:
            for name in normalize_names(read_safetensors(Path(path))):  # lazy: nothing read
                self.where[name] = Path(path)
        self.format = detect_format(self.where)
        packed = sorted(n for n in self.where if n.endswith(".scales"))
        if packed:
            raise CheckpointError(
                f"{self.source} is already quantized ({packed[0]}, ...): convert from the float "
                "(bf16) checkpoint instead"
            )
        try:
            self.config: LmConfig = config_from(self.files)
        except (ValueError, TypeError, NotImplementedError) as e:
            raise CheckpointError(f"{self.files.root}: unusable config.json: {e}") from e
        self.rows = {ours: (srcs, fn) for ours, srcs, fn in name_table(self.config, self.format)}
        self._check_names()
        self._open: dict[Path, dict[str, mx.array]] = {}
        self.lora = lora_for(self.files, lora, lora_scaling)  # a fine-tune: fused first
        self._deltas = {}
        if self.lora is not None:
            model = Lm(self.config)  # shapes only: never evaluated
            shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
            self._deltas = lora_deltas(self.config, linear_layers(model), shapes, self.lora)

    @property
    def source(self) -> str:
        files = self.files.weights
        return str(files[0]) if len(files) == 1 else self.files.root

    def _check_names(self) -> None:
        expected = {s for srcs, _ in self.rows.values() for s in srcs}
        missing = sorted(expected - self.where.keys())
        unused = unused_sources(self.config, self.format)
        unexpected = sorted(
            n for n in self.where if n not in expected and n not in unused and not ignored(n)
        )
        if missing or unexpected:
            problems = [f"missing {_listing(missing)}"] * bool(missing)
            problems += [f"unexpected {_listing(unexpected)}"] * bool(unexpected)
            raise CheckpointError(
                f"{self.source} does not match the language model's configuration (layout: "
                f"{LAYOUT_NAMES[self.format]}): {'; '.join(problems)}. A config.json for another "
                "model, or an incomplete file?"
            )

    def _tensor(self, name: str) -> mx.array:
        path = self.where[name]
        if path not in self._open:  # aliases renamed, per-set projections stacked, lazily
            self._open[path] = normalize_names(read_safetensors(path))
        return self._open[path][name]

    def param(self, ours: str) -> mx.array:
        """Our parameter `ours`, lazily computed from the source tensors (nothing is read yet)."""
        sources, transform = self.rows[ours]
        x = transform(*(self._tensor(s) for s in sources))
        if ours == "text_emb.weight" and hears_end_of_text_as_padding(
            self.files.config, self.format
        ):  # (what loading the source does: the quantized model keeps it)
            x = end_of_text_as_padding(x)
        if ours in self._deltas:  # W + scaling * B @ A
            x = (x.astype(mx.float32) + self._deltas[ours]).astype(x.dtype)
        return x

    def release(self) -> None:
        """Drop the lazy handles (and with them any data read so far)."""
        self._open.clear()

    def file(self, name: str) -> Path | None:
        """Another file of the same folder or hub repo (Mimi, tokenizer), None if absent."""
        return self.files.get(name)
