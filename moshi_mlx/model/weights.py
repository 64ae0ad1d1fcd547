"""Moshi checkpoint layouts: format detection and loading.

Three layouts are read, told apart by their tensor names (never by a file name or a flag):
- Kyutai MLX (`kyutai/moshiko-mlx-*`): our own parameter names, `audio_embs.0.weight`,
  `depformer.slices.0.transformer.layers.0...`; possibly quantized (`.scales`, `.biases`).
- Kyutai PyTorch (`kyutai/moshiko-pytorch-bf16`): `emb.0.weight`, `in_proj_weight`, RMSNorm
  `.alpha` of shape (1, 1, d), depth-decoder projections stacked over weight sets.
- transformers (`kmhf/hf-moshiko`): `decoder.model.layers.0...`, `depth_decoder...`, q/k/v split
  with RoPE-permuted rows, depth-decoder weights stacked over codebooks.

Each layout's names are declared once, in `name_tables`; this module detects the layout and loads.
"""

from __future__ import annotations

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mimi_mlx.io.hub import CheckpointError, listing, shape_mismatches

from .name_tables import name_table, unused_sources
from .quantized import find_quantized, quantize_layers

# -- names that vary between writers of the same layout -----------------------------------------
ALIASES = {
    # transformers versions without the `MoshiLinear` wrapper
    f"self_attn.{p}_proj.weight": f"self_attn.{p}_proj.linear.weight"
    for p in "qkvo"
}
# Kyutai's in-memory `state_dict()` names (one tensor per weight set) -> their released files'
# (the weight sets stacked along the rows, as their load hook expects)
STACKED = {
    "self_attn.in_projs": "self_attn.in_proj_weight",
    "self_attn.out_projs": "self_attn.out_proj.weight",
    "cross_attention.in_projs": "cross_attention.in_proj_weight",
    "cross_attention.out_projs": "cross_attention.out_proj.weight",
}


def normalize_names(tensors: dict[str, mx.array]) -> dict[str, mx.array]:
    """One spelling per tensor: aliases renamed, per-set attention projections stacked."""
    out: dict[str, mx.array] = {}
    stacks: dict[str, dict[int, mx.array]] = {}
    for name, value in tensors.items():
        for alias, canonical in ALIASES.items():
            if name.endswith(alias):
                name = name[: -len(alias)] + canonical
                break
        for split, stacked in STACKED.items():
            prefix, sep, rest = name.partition(f".{split}.")
            if sep and rest.endswith(".weight") and rest[: -len(".weight")].isdigit():
                stacks.setdefault(f"{prefix}.{stacked}", {})[int(rest[: -len(".weight")])] = value
                break
        else:
            out[name] = value
    for name, parts in stacks.items():
        out[name] = mx.concatenate([parts[i] for i in sorted(parts)], axis=0)
    return out


def ignored(name: str) -> bool:
    """Tensors a checkpoint may carry that the language model does not use."""
    # transformers bundles Mimi; older transformers files also store RoPE frequencies
    return name.startswith("audio_encoder.") or name.endswith(".rotary_emb.inv_freq")


def detect_format(names) -> str:
    """'mlx', 'pytorch' or 'hf' from the tensor names; CheckpointError if none fits."""
    names = set(names)
    if "decoder.model.embed_tokens.weight" in names:
        return "hf"
    if "emb.0.weight" in names or "transformer.layers.0.self_attn.in_proj_weight" in names:
        return "pytorch"
    if "audio_embs.0.weight" in names or "transformer.layers.0.self_attn.in_proj.weight" in names:
        return "mlx"
    if any(n.startswith(("encoder.model.", "encoder.layers.")) for n in names):
        raise CheckpointError(
            "this is a Mimi (audio codec) checkpoint, not a Moshi language model; pass the "
            "language model's file (model.safetensors, model.q4.safetensors, ...) or its folder"
        )
    sample = ", ".join(sorted(names)[:5])
    raise CheckpointError(
        "unknown checkpoint format: expected Kyutai's MLX names (audio_embs.0.weight, ...), "
        "Kyutai's PyTorch names (emb.0.weight, ...) or transformers' "
        f"(decoder.model.embed_tokens.weight, ...); found {len(names)} tensors such as: {sample}"
    )


# -- loading ------------------------------------------------------------------------------------
LAYOUT_NAMES = {
    "mlx": "Kyutai MLX",
    "pytorch": "Kyutai PyTorch",
    "hf": "transformers",
}


def load_weights(model, tensors: dict[str, mx.array], source: str = "checkpoint") -> str:
    """Load checkpoint tensors (any layout, quantized or not) into an `Lm`; returns the layout.

    Quantized layers are detected from the shapes and swapped in before loading. Float weights
    take the model's dtype; quantized weights keep their packed values, scales and biases.

    Raises:
        CheckpointError: unknown layout, missing or unexpected tensors, or wrong shapes.
    """
    tensors = normalize_names(tensors)
    fmt = detect_format(tensors)
    rows = name_table(model.cfg, fmt)
    heads = [row for row in rows if row[0].startswith("extra_heads.")]
    if heads and not {s for _, sources, _ in heads for s in sources} & tensors.keys():
        # declared by the config but absent from the weights (Kyutai's STT `-mlx` repos)
        model.drop_extra_heads()
        rows = [row for row in rows if row not in heads]
    expected = {s for _, sources, _ in rows for s in sources}
    unused = unused_sources(model.cfg, fmt)
    quantized: dict[str, tuple[int, int]] = {}
    if fmt == "mlx":
        shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
        quantized = find_quantized(tensors, shapes, source)
        expected |= {f"{p}.{part}" for p in quantized for part in ("scales", "biases")}
    missing = sorted(expected - tensors.keys())
    unexpected = sorted(
        k for k in tensors if k not in expected and k not in unused and not ignored(k)
    )
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the language model's configuration (layout: "
            f"{LAYOUT_NAMES[fmt]}).\n  missing {listing(missing)}\n  unexpected "
            f"{listing(unexpected)}\nLikely cause: a config.json for another model (number of "
            "layers, codebooks, depth-decoder options), or an incomplete or converted file."
        )
    quantize_layers(model, quantized)
    ours = {k: v for k, v in tree_flatten(model.parameters())}
    # A parameter shared by several names (depth-decoder slices on one weight set) is loaded
    # once, through its first name.
    first = {}
    rows = [r for r in rows if first.setdefault(id(ours.get(r[0], r)), r[0]) == r[0]]
    state = {name: fn(*(tensors[s] for s in sources)) for name, sources, fn in rows}
    for path in quantized:
        if f"{path}.weight" not in state:
            continue  # a shared layer, loaded through another name
        for part in ("scales", "biases"):
            state[f"{path}.{part}"] = tensors[f"{path}.{part}"]
    tensors.clear()  # the sources now live only in `state`'s lazy graphs
    wrong = shape_mismatches(state, ours)
    if wrong:
        raise CheckpointError(
            f"{source} has tensors of the wrong shape for this configuration (a different model "
            "size, or a config.json that does not belong to it?):\n  " + "\n  ".join(wrong)
        )
    kept = {f"{p}.{part}" for p in quantized for part in ("weight", "scales", "biases")}
    model.update(tree_unflatten(list(_converted(state, kept, model.dtype))))
    return fmt


def _converted(state: dict[str, mx.array], kept: set[str], dtype: mx.Dtype):
    """Cast and evaluate the tensors one at a time, dropping each source as soon as it is used,
    so loading never holds the checkpoint and the converted model in full at once."""
    for name in list(state):
        value = state.pop(name)
        value = value if name in kept else value.astype(dtype)
        mx.eval(value)
        yield name, value
