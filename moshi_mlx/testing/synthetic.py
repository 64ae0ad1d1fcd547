"""Random checkpoints of any size in Kyutai's PyTorch layout, written tensor by tensor.

For benchmarks and memory tests: the 7B model's 15 GB file is written in the memory of its
largest tensor. Tensor names come from `moshi_mlx`'s name table; the shapes are ours, put back in
Kyutai's form (RMSNorm `alpha` as (1, 1, d); depth-decoder attention stacked over weight sets).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from tqdm import tqdm

from moshi_mlx.model.config import LmConfig
from moshi_mlx.model.lm import Lm
from moshi_mlx.model.name_tables import name_table
from quantize.writer import SafetensorsWriter


def pytorch_layout(cfg: LmConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of Kyutai's PyTorch checkpoint for `cfg`: (name, shape), in table order."""
    ours = {k: tuple(v.shape) for k, v in tree_flatten(Lm(cfg).parameters())}
    users: dict[str, list] = defaultdict(list)  # source tensor -> the rows that read it
    for name, (source,), transform in name_table(cfg, "pytorch"):
        users[source].append((name, transform))
    layout = []
    for source, rows in users.items():
        name, transform = rows[0]
        shape = ours[name]
        if source.endswith(".alpha"):
            layout.append((source, (1, 1, *shape)))
            continue
        # a tensor stacked over m weight sets gives each row one block of shape[0] rows
        for m in range(1, len(rows) + 1):
            candidate = (m * shape[0], *shape[1:])
            if tuple(transform(mx.zeros(candidate)).shape) == shape:
                layout.append((source, candidate))
                break
        else:
            raise ValueError(f"no PyTorch shape found for {source}")
    return layout


def _random(name: str, shape: tuple[int, ...], dtype: mx.Dtype, tile_rows: int | None) -> mx.array:
    if tile_rows is not None and len(shape) >= 2 and shape[0] > tile_rows:
        block = _random(name, (tile_rows, *shape[1:]), dtype, None)
        reps = -(-shape[0] // tile_rows)
        return mx.tile(block, (reps,) + (1,) * (len(shape) - 1))[: shape[0]]
    module = name.rsplit(".", 2)[-2] if name.count(".") else ""
    if name.endswith(".alpha") or ("norm" in module and name.endswith(".weight")):
        return (1 + 0.1 * mx.random.normal(shape)).astype(dtype)
    if name.endswith(".bias"):
        return (0.01 * mx.random.normal(shape)).astype(dtype)
    return mx.random.normal(shape, dtype=dtype, scale=shape[-1] ** -0.5)


def write_random_checkpoint(
    folder: str | Path,
    cfg: LmConfig | None = None,
    seed: int = 0,
    dtype: mx.Dtype = mx.bfloat16,
    progress: bool = False,
    tile_rows: int | None = None,
) -> Path:
    """A Kyutai PyTorch repo folder (`model.safetensors`, `config.json`) with random weights.

    Args:
        folder: where to write (created).
        cfg: the model (default: the 7B Moshiko).
        seed: random seed.
        dtype: the weights' dtype (Kyutai's release is bfloat16).
        progress: show a progress bar.
        tile_rows: draw only this many rows of each matrix and repeat them (much faster to
            write; as good for timing and memory, not for accuracy figures). Default: all rows.

    Returns:
        The weights file.
    """
    cfg = cfg or LmConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layout = pytorch_layout(cfg)
    path = folder / "model.safetensors"
    writer = SafetensorsWriter(path, [(n, dtype, s) for n, s in layout], {"format": "pt"})
    mx.random.seed(seed)
    try:
        with tqdm(total=writer.data_bytes, unit="B", unit_scale=True, disable=not progress) as bar:
            for name, shape in layout:
                bar.update(writer.write(name, _random(name, shape, dtype, tile_rows)))
                mx.clear_cache()
        writer.close()
    except BaseException:
        writer.abort()
        path.unlink(missing_ok=True)
        raise
    config = {**cfg.to_dict(), "moshi_name": path.name, "model_type": "moshi"}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path
