"""Quantized layers in a checkpoint: found from the tensor shapes, swapped in before loading.

A quantized layer `p` stores `p.weight` (uint32, `bits` bits per value packed along the input
axis), `p.scales` and `p.biases` (one per group of `group_size` inputs). With the layer's full
shape (out, in) known from the model, `bits = 32 * packed_in / in` and
`group_size = in / n_groups`: the user never matches a flag to a file.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mimi_mlx.io.hub import CheckpointError

BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)


def find_quantized(
    tensors: dict[str, mx.array], shapes: dict[str, tuple[int, ...]], source: str
) -> dict[str, tuple[int, int]]:
    """{module path: (group_size, bits)} of the layers the checkpoint stores quantized.

    Args:
        tensors: the checkpoint's tensors (our names).
        shapes: our full-precision parameter shapes, by name.
        source: the file, for error messages.
    """
    found = {}
    for name, scales in tensors.items():
        if not name.endswith(".scales"):
            continue
        path = name[: -len(".scales")]
        weight = tensors.get(f"{path}.weight")
        full = shapes.get(f"{path}.weight")
        if weight is None or full is None or len(full) != 2:
            continue  # reported as missing / unexpected tensors by the caller
        out_dim, in_dim = full
        packed = weight.shape[-1]
        bits, rem = divmod(32 * packed, in_dim)
        groups = scales.shape[-1]
        group_size = in_dim // groups if groups else 0
        ok = (
            weight.dtype == mx.uint32
            and rem == 0
            and bits in BITS
            and group_size in GROUP_SIZES
            and group_size * groups == in_dim
            and weight.shape[0] == out_dim
            and scales.shape[0] == out_dim
        )
        if not ok:
            raise CheckpointError(
                f"{source}: the quantized layer {path} does not fit this configuration: weight "
                f"{tuple(weight.shape)} {weight.dtype}, scales {tuple(scales.shape)} for a layer "
                f"of shape {full} (a different model size?)"
            )
        found[path] = (group_size, bits)
    return found


def _parent(root: nn.Module, path: str) -> tuple[object, str]:
    parts = path.split(".")
    node: object = root
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def quantize_layers(model: nn.Module, layers: dict[str, tuple[int, int]]) -> None:
    """Replace each named layer by its quantized version with the given (group_size, bits).

    The replaced weights are never evaluated: building the model and quantizing it stays lazy,
    so no full-precision copy of a quantized checkpoint is ever materialized.
    """
    for path, (group_size, bits) in layers.items():
        parent, attr = _parent(model, path)
        layer = parent[int(attr)] if isinstance(parent, list) else parent[attr]
        if (getattr(layer, "group_size", None), getattr(layer, "bits", None)) == (group_size, bits):
            continue  # a shared layer, already quantized through another name
        if not hasattr(layer, "to_quantized"):
            raise CheckpointError(f"the checkpoint quantizes {path}, which cannot be quantized")
        quantized = layer.to_quantized(group_size=group_size, bits=bits)
        if isinstance(parent, list):
            parent[int(attr)] = quantized
        else:
            setattr(parent, attr, quantized)
