"""LoRA fine-tunes (Kyutai's moshi-finetune), fused into the base weights: `W + scaling * B @ A`.

Kyutai's loader (`moshi/models/loaders.py: get_lora_moshi`, `moshi/modules/lora.py`) puts an
adapter on every linear layer and reads `X.lora_A.weight` (rank, in) and `X.lora_B.weight`
(out, rank), X a linear layer of their in-memory model: `transformer.layers.0.self_attn.in_projs.0`,
`depformer.layers.1.gating.3.linear_in` (the depth decoder's per-step sets), `linears.5` (the
output heads), `depformer_in.2`, `text_linear`, ... Each adapter's product is read through the
same declarative table as Kyutai's PyTorch weights (`weights.name_table(cfg, "pytorch")`), so it
lands on our parameter whatever the layout of the base. A checkpoint's `config.json` names its
adapter (`lora`, `lora_name`, `lora_rank`, `lora_scaling`); `--lora FILE` adds one to any base.
`lora_unfused` keeps an adapter beside its base instead (quantized bases, shared bases).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mimi_mlx.io.hub import CheckpointError
from mimi_mlx.io.safetensors import read_metadata, read_safetensors

from .config import LmConfig
from .name_tables import name_table
from .weights import STACKED, stacked_name

LORA_KEYS = ("lora", "lora_name", "lora_rank", "lora_scaling")
LORA_FILE = "lora.safetensors"  # moshi-finetune's adapter, in checkpoint_N/consolidated/
DEFAULT_SCALING = 2.0  # Kyutai's `lora_scaling` when a config does not say
A, B = ".lora_A.weight", ".lora_B.weight"


class LoraError(CheckpointError):
    """An adapter that does not fit its base (one line, naming the tensor)."""


@dataclass(frozen=True)
class Lora:
    """An adapter file and how to apply it.

    Attributes:
        path: the safetensors file of `lora_A` / `lora_B` tensors.
        scaling: `lora_scaling`.
        rank: `lora_rank` as a config says it (checked against the tensors), None: any.
    """

    path: Path
    scaling: float = DEFAULT_SCALING
    rank: int | None = None


def _from_config(path: Path, config: dict) -> Lora:
    rank = config.get("lora_rank")
    return Lora(path, float(config.get("lora_scaling", DEFAULT_SCALING)), rank)


def lora_of(config: dict | None, get: Callable[[str], Path | None], root: str) -> Lora | None:
    """The adapter a checkpoint's `config.json` names, None if it names none."""
    config = config or {}
    name = config.get("lora_name")
    if not name:
        if config.get("lora"):
            raise LoraError(
                f"{root}/config.json says lora but names no lora_name file: pass --lora FILE"
            )
        return None
    path = get(name)
    if path is None:
        raise LoraError(f"{root} lacks the LoRA file {name} that its config.json names")
    return _from_config(path, config)


def lora_file(
    path: str | Path, base_config: dict | None = None, scaling: float | None = None
) -> Lora:
    """`--lora FILE`: an adapter for any base (a folder: its `lora.safetensors`).

    Its `lora_scaling` and `lora_rank` come from, first to last: `scaling` (`--lora-scaling`),
    the file's own safetensors metadata, a `config.json` beside it (moshi-finetune writes
    `checkpoint_N/consolidated/{lora.safetensors, config.json}`), the base's config, Kyutai's
    defaults (scaling 2, any rank).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / LORA_FILE).is_file():
            raise LoraError(f"--lora: the folder {path} holds no {LORA_FILE}")
        path = path / LORA_FILE
    if not path.is_file():
        raise LoraError(f"--lora: no such file: {path}")
    beside = path.parent / "config.json"
    try:
        config = json.loads(beside.read_text()) if beside.is_file() else (base_config or {})
    except (OSError, ValueError) as e:
        raise LoraError(f"--lora: cannot read {beside}: {' '.join(str(e).split())}") from None
    keys = {k: v for k, v in config.items() if k in ("lora_rank", "lora_scaling")}
    meta = read_metadata(path)
    try:
        keys.update({k: float(meta[k]) for k in ("lora_scaling",) if k in meta})
        keys.update({k: int(meta[k]) for k in ("lora_rank",) if k in meta})
    except ValueError:
        raise LoraError(f"{path}: its metadata lora_rank / lora_scaling are not numbers") from None
    if scaling is not None:
        keys["lora_scaling"] = scaling
    return _from_config(path, keys)


Parts = dict[int | None, tuple[mx.array, mx.array, str]]  # weight set -> (A, B, adapted layer)


def _factors(lora: Lora) -> dict[str, Parts]:
    """{released source name: {weight set (None: not per set): (A, B, adapted layer)}}."""
    tensors = read_safetensors(lora.path)
    bases = []
    for name in tensors:
        if not name.endswith((A, B)):
            raise LoraError(f"{lora.path}: {name} is not a LoRA tensor (NAME{A} or NAME{B})")
        if name.endswith(A):
            bases.append(name[: -len(A)])
    parts: dict[str, Parts] = {}
    for base in bases:
        down, up = tensors[base + A], tensors.get(base + B)
        if up is None:
            raise LoraError(f"{lora.path}: {base}{A} has no {base}{B}")
        rank = down.shape[0]
        if lora.rank is not None and rank != lora.rank:
            raise LoraError(
                f"{lora.path}: {base}{A} has rank {rank}, the config lora_rank {lora.rank}"
            )
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != rank:
            raise LoraError(
                f"{lora.path}: {base}{B} {tuple(up.shape)} does not fit {base}{A} "
                f"{tuple(down.shape)} (expected (out, {rank}))"
            )
        released, index = stacked_name(base + ".weight") or (base + ".weight", None)
        parts.setdefault(released, {})[index] = (down, up, base)
    orphans = sorted(n[: -len(B)] for n in tensors if n.endswith(B) and n[: -len(B)] not in bases)
    if orphans:
        raise LoraError(f"{lora.path}: {orphans[0]}{B} has no {orphans[0]}{A}")
    return parts


def _stack(parts: Parts, count: int, path: Path) -> tuple[mx.array, mx.array, str]:
    """The factors of a released tensor: a single layer's, or `count` weight sets' stacked along
    their rows (A: (count * rank, in), B: (count * out, rank)), so that the name table's row
    block of weight set w (`chunk(count, w)`) takes A_w and B_w, as it takes W_w."""
    if None in parts:
        return parts[None]
    for i in range(count):
        if i not in parts:
            name = next(iter(parts.values()))[2].rsplit(".", 1)[0]
            raise LoraError(f"{path}: missing {name}.{i}{A} (and {B})")
    if len(parts) != count:
        name = parts[max(parts)][2]
        raise LoraError(f"{path}: {name}{A} adapts no weight set of this model ({count} sets)")
    ranks = {parts[i][0].shape[0] for i in range(count)}
    if len(ranks) > 1:
        raise LoraError(f"{path}: the weight sets of {parts[0][2]} have ranks {sorted(ranks)}")
    down = mx.concatenate([parts[i][0] for i in range(count)], axis=0)
    up = mx.concatenate([parts[i][1] for i in range(count)], axis=0)
    return down, up, parts[0][2]


def _adapter_name(source: str) -> str:
    """The adapter Kyutai's in-memory model has for a released tensor name."""
    for split, stacked in STACKED.items():
        if source.endswith(stacked):
            return f"{source[: -len(stacked)]}{split}.0{A}"
    return source.removesuffix(".weight") + A


def lora_deltas(
    cfg: LmConfig, linears: set[str], shapes: dict[str, tuple], lora: Lora
) -> dict[str, mx.array]:
    """{our parameter: its float32 delta `scaling * B @ A` (lazy)} for every linear layer of
    `Lm(cfg)` (arguments and errors as `lora_factors`)."""
    return {
        ours: lora.scaling * (up.astype(mx.float32) @ down.astype(mx.float32))
        for ours, (down, up) in lora_factors(cfg, linears, shapes, lora).items()
    }


def lora_factors(
    cfg: LmConfig, linears: set[str], shapes: dict[str, tuple], lora: Lora
) -> dict[str, tuple[mx.array, mx.array]]:
    """{our parameter: (A (rank, in), B (out, rank)) as stored} for every linear layer of
    `Lm(cfg)`.

    Args:
        linears: our linear layers' module paths.
        shapes: our parameters' shapes.

    Raises:
        LoraError: a linear layer without adapter, an adapter of no linear layer, a wrong rank
            or shape; the message names the tensor.
    """
    products = _factors(lora)
    factors, used, stacked = {}, set(), {}
    for ours, sources, transform in name_table(cfg, "pytorch"):
        if not ours.endswith(".weight") or ours[: -len(".weight")] not in linears:
            continue
        (source,) = sources
        if source not in products:
            raise LoraError(f"{lora.path}: missing {_adapter_name(source)} (and {B})")
        if source not in stacked:  # the depth decoder's projections: one per weight set
            count = cfg.num_weight_sets if source.startswith("depformer.") else 1
            stacked[source] = _stack(products[source], count, lora.path)
        down, up, name = stacked[source]
        down, up = transform(down), transform(up)
        shape = (up.shape[0], down.shape[1])
        if shape != tuple(shapes[ours]):
            raise LoraError(
                f"{lora.path}: {name}{B} @ {name}{A} gives {shape} for {ours}, "
                f"which is {tuple(shapes[ours])} (a LoRA of another model?)"
            )
        factors[ours] = (down, up)
        used.add(source)
    unexpected = sorted(next(iter(products[s].values()))[2] for s in products.keys() - used)
    if unexpected:
        raise LoraError(
            f"{lora.path}: {unexpected[0]}{A} adapts no linear layer of this model"
            + (f" (nor {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    return factors


def raise_quantized(layer: str) -> None:
    raise LoraError(
        f"a LoRA cannot be fused into quantized weights ({layer}, ...): load the float "
        "checkpoint with it (--precision bf16 with a --model), or quantize the fused model with "
        "moshi-mlx-quantize BASE OUT --lora FILE"
    )


def linear_layers(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def fuse_lora(model, lora: Lora) -> None:
    """Add the adapter's `scaling * B @ A` to every linear layer of an `Lm`, in place."""
    quantized = [n for n, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    if quantized:
        raise_quantized(quantized[0])
    params = dict(tree_flatten(model.parameters()))
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    deltas = lora_deltas(model.cfg, linear_layers(model), shapes, lora)
    seen, fused = set(), []
    for name, delta in deltas.items():
        weight = params[name]
        if id(weight) in seen:
            continue  # a layer shared by several depth-decoder steps: fused once
        seen.add(id(weight))
        fused.append((name, (weight.astype(mx.float32) + delta).astype(weight.dtype)))
    model.update(tree_unflatten(fused))
    mx.eval(model.parameters())
