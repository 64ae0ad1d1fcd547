"""Moshi checkpoint layouts: format detection and declarative name tables.

Three layouts are read, told apart by their tensor names (never by a file name or a flag):
- Kyutai MLX (`kyutai/moshiko-mlx-*`): our own parameter names, `audio_embs.0.weight`,
  `depformer.slices.0.transformer.layers.0...`; possibly quantized (`.scales`, `.biases`).
- Kyutai PyTorch (`kyutai/moshiko-pytorch-bf16`): `emb.0.weight`, `in_proj_weight`, RMSNorm
  `.alpha` of shape (1, 1, d), depth-decoder projections stacked over weight sets.
- transformers (`kmhf/hf-moshiko`): `decoder.model.layers.0...`, `depth_decoder...`, q/k/v split
  with RoPE-permuted rows, depth-decoder weights stacked over codebooks.

Each table row maps one of our parameter names to its source tensor name(s) and a transform.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mimi_mlx.io.hub import CheckpointError, listing, shape_mismatches
from mimi_mlx.nn.transformer import NORMS
from mimi_mlx.weights import hf_qkv

from .config import LmConfig
from .quantized import find_quantized, quantize_layers

Row = tuple[str, tuple[str, ...], Callable[..., mx.array]]  # ours, sources, transform


# -- transforms -------------------------------------------------------------------------------
def copy(x: mx.array) -> mx.array:
    return x


def alpha(x: mx.array) -> mx.array:
    """Kyutai's PyTorch RMSNorm scale (1, 1, d) -> (d,)."""
    return x.reshape(-1)


def chunk(n: int, i: int) -> Callable[[mx.array], mx.array]:
    """Rows `i` of `n` equal row blocks: Kyutai stacks per-step projections as (n * out, in)."""

    def take(x: mx.array) -> mx.array:
        rows = x.shape[0] // n
        return x[i * rows : (i + 1) * rows]

    return take


def index(i: int) -> Callable[[mx.array], mx.array]:
    """Entry `i` of a stacked (n, out, in) tensor (transformers' per-codebook weights)."""
    return lambda x: x[i]


def concat_indexed(i: int) -> Callable[..., mx.array]:
    """transformers' per-codebook q, k, v (n, out, in) -> our fused in_proj of codebook i."""
    return lambda *xs: mx.concatenate([x[i] for x in xs], axis=0)


# -- our parameter names, per block -------------------------------------------------------------
def _is_rms(norm: str) -> bool:
    return NORMS[norm][0] == "rms"


def _norm_rows(ours: str, src: str, norm: str, fmt: str) -> list[Row]:
    if _is_rms(norm):
        if fmt == "pytorch":
            return [(f"{ours}.weight", (f"{src}.alpha",), alpha)]
        return [(f"{ours}.weight", (f"{src}.weight",), copy)]
    return [(f"{ours}.weight", (f"{src}.weight",), copy), (f"{ours}.bias", (f"{src}.bias",), copy)]


def _emb_rows(
    ours: str, src: str, cfg: LmConfig, low_rank: bool, fmt: str, demux: bool = False
) -> list[Row]:
    rows = [(f"{ours}.weight", (f"{src}.weight",), copy)]
    if demux:  # two text streams in one token: two output projections, no norm
        return rows + [
            (f"{ours}.{o}.weight", (f"{src}.{o}.weight",), copy) for o in ("out1", "out2")
        ]
    if cfg.norm_emb:
        rows += _norm_rows(f"{ours}.norm", f"{src}.norm", "layer_norm", fmt)
    if low_rank and cfg.depformer_low_rank_embeddings is not None:
        rows.append((f"{ours}.low_rank.weight", (f"{src}.low_rank.weight",), copy))
    return rows


def unused_sources(cfg: LmConfig, fmt: str) -> set[str]:
    """Tensors Kyutai's PyTorch files hold but their model never uses (so neither do we)."""
    if fmt == "pytorch" and cfg.demux_second_text_stream and cfg.depformer_low_rank_embeddings:
        return {"depformer_text_emb.low_rank.weight"}  # created, then bypassed by the demux
    return set()


def _layer_rows_same_names(ours: str, src: str, tcfg, fmt: str) -> list[Row]:
    """A temporal-transformer layer in the MLX or PyTorch layout (one weight set)."""
    attn_in = "self_attn.in_proj.weight" if fmt == "mlx" else "self_attn.in_proj_weight"
    rows = [
        (f"{ours}.self_attn.in_proj.weight", (f"{src}.{attn_in}",), copy),
        (f"{ours}.self_attn.out_proj.weight", (f"{src}.self_attn.out_proj.weight",), copy),
    ]
    rows += _norm_rows(f"{ours}.norm1", f"{src}.norm1", tcfg.norm, fmt)
    rows += _norm_rows(f"{ours}.norm2", f"{src}.norm2", tcfg.norm, fmt)
    rows += _mlp_rows(ours, src, tcfg, fmt, None)
    rows += _layer_scale_rows(ours, src, tcfg)
    if tcfg.cross_attention:
        rows += _cross_attention_rows(ours, src, tcfg, fmt)
    return rows


def _cross_attention_rows(ours: str, src: str, tcfg, fmt: str) -> list[Row]:
    """A layer's cross-attention block: fused q/k/v projection, output projection, LayerNorm."""
    attn_in = "cross_attention.in_proj.weight" if fmt == "mlx" else "cross_attention.in_proj_weight"
    rows = [
        (f"{ours}.cross_attention.in_proj.weight", (f"{src}.{attn_in}",), copy),
        (
            f"{ours}.cross_attention.out_proj.weight",
            (f"{src}.cross_attention.out_proj.weight",),
            copy,
        ),
    ]
    rows += _norm_rows(f"{ours}.norm_cross", f"{src}.norm_cross", "layer_norm", fmt)
    if tcfg.layer_scale is not None:
        name = "layer_scale_cross.scale"
        rows.append((f"{ours}.{name}", (f"{src}.{name}",), copy))
    return rows


def _mlp_rows(ours: str, src: str, tcfg, fmt: str, weight_set: int | None) -> list[Row]:
    if tcfg.gating == "none":
        mlx_src = ("gating.linear1", "gating.linear2") if fmt == "mlx" else ("linear1", "linear2")
        return [
            (f"{ours}.gating.linear1.weight", (f"{src}.{mlx_src[0]}.weight",), copy),
            (f"{ours}.gating.linear2.weight", (f"{src}.{mlx_src[1]}.weight",), copy),
        ]
    gating = "gating" if weight_set is None else f"gating.{weight_set}"
    return [
        (f"{ours}.gating.linear_in.weight", (f"{src}.{gating}.linear_in.weight",), copy),
        (f"{ours}.gating.linear_out.weight", (f"{src}.{gating}.linear_out.weight",), copy),
    ]


def _layer_scale_rows(ours: str, src: str, tcfg) -> list[Row]:
    if tcfg.layer_scale is None:
        return []
    return [
        (f"{ours}.layer_scale_{i}.scale", (f"{src}.layer_scale_{i}.scale",), copy) for i in (1, 2)
    ]


# -- the three layouts ----------------------------------------------------------------------------
def _same_name_table(cfg: LmConfig, fmt: str) -> list[Row]:
    """Kyutai MLX (`fmt="mlx"`) or Kyutai PyTorch (`fmt="pytorch"`)."""
    mlx = fmt == "mlx"
    tcfg = cfg.transformer_config()
    rows = _emb_rows("text_emb", "text_emb", cfg, False, fmt, cfg.demux_second_text_stream)
    for i in range(cfg.n_q):
        rows += _emb_rows(
            f"audio_embs.{i}", f"audio_embs.{i}" if mlx else f"emb.{i}", cfg, False, fmt
        )
    for i in range(cfg.num_layers):
        rows += _layer_rows_same_names(
            f"transformer.layers.{i}", f"transformer.layers.{i}", tcfg, fmt
        )
    rows += _norm_rows("out_norm", "out_norm", cfg.norm, fmt)
    rows.append(("text_linear.weight", ("text_linear.weight",), copy))
    if cfg.bias_proj:
        rows.append(("text_linear.bias", ("text_linear.bias",), copy))
    for i in range(cfg.extra_heads_num_heads):
        rows.append((f"extra_heads.{i}.weight", (f"extra_heads.{i}.weight",), copy))
    for k in range(cfg.dep_q):
        rows += _slice_rows_mlx(cfg, k) if mlx else _slice_rows_pytorch(cfg, k)
    return rows + _condition_rows(cfg)


def _condition_rows(cfg: LmConfig) -> list[Row]:
    """Conditioners (lookup tables, tensors): the same names in Kyutai's PyTorch and MLX files."""
    rows: list[Row] = []
    for name, spec in (cfg.conditioners or {}).items():
        p = f"condition_provider.conditioners.{name}"
        kind = spec.get("type", "lut")
        args = spec.get(kind, {})
        parts = ["embed.weight"] if kind == "lut" else []
        if args.get("force_linear", True) or args.get("dim") != cfg.dim:
            parts.append("output_proj.weight")
        if args.get("learn_padding", True):
            parts.append("learnt_padding")
        rows += [(f"{p}.{part}", (f"{p}.{part}",), copy) for part in parts]
    return rows


def _slice_rows_mlx(cfg: LmConfig, k: int) -> list[Row]:
    p = f"depformer.slices.{k}"
    dcfg = cfg.depformer_config(k)
    demux = k == 0 and cfg.demux_second_text_stream
    rows = _emb_rows(f"{p}.emb", f"{p}.emb", cfg, True, "mlx", demux)
    rows.append((f"{p}.linear_in.weight", (f"{p}.linear_in.weight",), copy))
    rows.append((f"{p}.linear_out.weight", (f"{p}.linear_out.weight",), copy))
    if cfg.bias_proj:
        rows.append((f"{p}.linear_out.bias", (f"{p}.linear_out.bias",), copy))
    if cfg.depformer_norm is not None:
        rows += _norm_rows(f"{p}.norm", f"{p}.norm", cfg.depformer_norm, "mlx")
    for i in range(dcfg.num_layers):
        layer = f"{p}.transformer.layers.{i}"
        rows += _layer_rows_same_names(layer, layer, dcfg, "mlx")
    return rows


def _slice_rows_pytorch(cfg: LmConfig, k: int) -> list[Row]:
    p = f"depformer.slices.{k}"
    dcfg = cfg.depformer_config(k)
    emb_src = "depformer_text_emb" if k == 0 else f"depformer_emb.{k - 1}"
    demux = k == 0 and cfg.demux_second_text_stream
    rows = _emb_rows(f"{p}.emb", emb_src, cfg, True, "pytorch", demux)
    rows.append(
        (f"{p}.linear_in.weight", (f"depformer_in.{cfg.depformer_in_index(k)}.weight",), copy)
    )
    rows.append((f"{p}.linear_out.weight", (f"linears.{k}.weight",), copy))
    if cfg.bias_proj:
        rows.append((f"{p}.linear_out.bias", (f"linears.{k}.bias",), copy))
    if cfg.depformer_norm is not None:
        rows += _norm_rows(f"{p}.norm", f"depformer_norms.{k}", cfg.depformer_norm, "pytorch")
    n, w = cfg.num_weight_sets, cfg.weight_set(k)
    per_step = cfg.depformer_weights_per_step
    for i in range(dcfg.num_layers):
        ours, src = f"{p}.transformer.layers.{i}", f"depformer.layers.{i}"
        rows += [
            (f"{ours}.self_attn.in_proj.weight", (f"{src}.self_attn.in_proj_weight",), chunk(n, w)),
            (
                f"{ours}.self_attn.out_proj.weight",
                (f"{src}.self_attn.out_proj.weight",),
                chunk(n, w),
            ),
        ]
        rows += _norm_rows(f"{ours}.norm1", f"{src}.norm1", dcfg.norm, "pytorch")
        rows += _norm_rows(f"{ours}.norm2", f"{src}.norm2", dcfg.norm, "pytorch")
        rows += _mlp_rows(ours, src, dcfg, "pytorch", w if per_step else None)
        rows += _layer_scale_rows(ours, src, dcfg)
    return rows


def _hf_table(cfg: LmConfig) -> list[Row]:
    """transformers' `MoshiForConditionalGeneration` (Moshi's 7B architecture only)."""
    rows: list[Row] = [("text_emb.weight", ("decoder.model.embed_tokens.weight",), copy)]
    rows += [
        (f"audio_embs.{i}.weight", (f"embed_tokens.{i}.weight",), copy) for i in range(cfg.n_q)
    ]
    qkv = hf_qkv(cfg.num_heads)  # undo transformers' RoPE row permutation of q and k

    for i in range(cfg.num_layers):
        ours, src = f"transformer.layers.{i}", f"decoder.model.layers.{i}"
        proj = tuple(f"{src}.self_attn.{p}_proj.linear.weight" for p in "qkv")
        rows += [
            (f"{ours}.self_attn.in_proj.weight", proj, qkv),
            (f"{ours}.self_attn.out_proj.weight", (f"{src}.self_attn.o_proj.linear.weight",), copy),
            (f"{ours}.norm1.weight", (f"{src}.input_layernorm.weight",), copy),
            (f"{ours}.norm2.weight", (f"{src}.post_attention_layernorm.weight",), copy),
            (f"{ours}.gating.linear_in.weight", (f"{src}.mlp.fc1.weight",), copy),
            (f"{ours}.gating.linear_out.weight", (f"{src}.mlp.fc2.weight",), copy),
        ]
    rows += [
        ("out_norm.weight", ("decoder.model.norm.weight",), copy),
        ("text_linear.weight", ("decoder.lm_head.weight",), copy),
    ]
    dep = "depth_decoder"
    for k in range(cfg.dep_q):
        p = f"depformer.slices.{k}"
        emb = f"{dep}.text_embed_tokens" if k == 0 else f"{dep}.embed_tokens.{k - 1}"
        rows += [
            (f"{p}.emb.weight", (f"{emb}.weight",), copy),
            (f"{p}.linear_in.weight", (f"{dep}.input_projections.weight",), index(k)),
            (f"{p}.linear_out.weight", (f"{dep}.lm_heads.weight",), index(k)),
        ]
        for i in range(cfg.depformer_config(k).num_layers):
            ours, src = f"{p}.transformer.layers.{i}", f"{dep}.layers.{i}"
            proj = tuple(f"{src}.self_attn.{x}_proj.linear.weight" for x in "qkv")
            rows += [
                (f"{ours}.self_attn.in_proj.weight", proj, concat_indexed(k)),
                (
                    f"{ours}.self_attn.out_proj.weight",
                    (f"{src}.self_attn.o_proj.linear.weight",),
                    index(k),
                ),
                (f"{ours}.norm1.weight", (f"{src}.input_layernorm.weight",), copy),
                (f"{ours}.norm2.weight", (f"{src}.post_attention_layernorm.weight",), copy),
                (f"{ours}.gating.linear_in.weight", (f"{src}.mlp.fc1.weight",), index(k)),
                (f"{ours}.gating.linear_out.weight", (f"{src}.mlp.fc2.weight",), index(k)),
            ]
    return rows


def name_table(cfg: LmConfig, fmt: str) -> list[Row]:
    """Every parameter of `Lm(cfg)` with its source tensor names in layout `fmt`."""
    if fmt in ("mlx", "pytorch"):
        return _same_name_table(cfg, fmt)
    if fmt == "hf":
        return _hf_table(cfg)
    raise ValueError(f"unknown layout {fmt!r}")


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


def stacked_name(name: str) -> tuple[str, int] | None:
    """(released name, weight set) of one of Kyutai's in-memory per-set projections
    (`...self_attn.in_projs.2.weight` -> (`...self_attn.in_proj_weight`, 2)), else None."""
    for split, stacked in STACKED.items():
        prefix, sep, rest = name.partition(f".{split}.")
        if sep and rest.endswith(".weight") and rest[: -len(".weight")].isdigit():
            return f"{prefix}.{stacked}", int(rest[: -len(".weight")])
    return None


def normalize_names(tensors: dict[str, mx.array]) -> dict[str, mx.array]:
    """One spelling per tensor: aliases renamed, per-set attention projections stacked."""
    out: dict[str, mx.array] = {}
    stacks: dict[str, dict[int, mx.array]] = {}
    for name, value in tensors.items():
        for alias, canonical in ALIASES.items():
            if name.endswith(alias):
                name = name[: -len(alias)] + canonical
                break
        stacked = stacked_name(name)
        if stacked is not None:
            stacks.setdefault(stacked[0], {})[stacked[1]] = value
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
