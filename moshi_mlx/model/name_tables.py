"""Declarative name tables: each of our parameters with its source tensor(s) in each layout.

Each row maps one of our parameter names to its source tensor name(s) and a transform; the three
layouts (Kyutai MLX, Kyutai PyTorch, transformers) are described in `weights`, which detects them
and loads through these tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx

from mimi_mlx.nn.layers import NORMS
from mimi_mlx.weights import hf_qkv

from .config import LmConfig

Row = tuple[str, tuple[str, ...], Callable[..., mx.array]]  # ours, sources, transform


# -- transforms -------------------------------------------------------------------------------
def as_is(x: mx.array) -> mx.array:
    """The tensor as stored (same name, shape and layout)."""
    return x


def alpha(x: mx.array) -> mx.array:
    """Kyutai's PyTorch RMSNorm scale (1, 1, d) -> (d,)."""
    return x.reshape(-1)


@dataclass(frozen=True)
class chunk:  # (lower case: a transform, named as the others)
    """Rows `i` of `n` equal row blocks: Kyutai stacks per-step projections as (n * out, in)."""

    n: int
    i: int

    def __call__(self, x: mx.array) -> mx.array:
        rows = x.shape[0] // self.n
        return x[self.i * rows : (self.i + 1) * rows]


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
        return [(f"{ours}.weight", (f"{src}.weight",), as_is)]
    return [
        (f"{ours}.weight", (f"{src}.weight",), as_is),
        (f"{ours}.bias", (f"{src}.bias",), as_is),
    ]


def _emb_rows(
    ours: str, src: str, cfg: LmConfig, low_rank: bool, fmt: str, demux: bool = False
) -> list[Row]:
    rows = [(f"{ours}.weight", (f"{src}.weight",), as_is)]
    if demux:  # two text streams in one token: two output projections, no norm
        return rows + [
            (f"{ours}.{o}.weight", (f"{src}.{o}.weight",), as_is) for o in ("out1", "out2")
        ]
    if cfg.norm_emb:
        rows += _norm_rows(f"{ours}.norm", f"{src}.norm", "layer_norm", fmt)
    if low_rank and cfg.depformer_low_rank_embeddings is not None:
        rows.append((f"{ours}.low_rank.weight", (f"{src}.low_rank.weight",), as_is))
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
        (f"{ours}.self_attn.in_proj.weight", (f"{src}.{attn_in}",), as_is),
        (f"{ours}.self_attn.out_proj.weight", (f"{src}.self_attn.out_proj.weight",), as_is),
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
        (f"{ours}.cross_attention.in_proj.weight", (f"{src}.{attn_in}",), as_is),
        (
            f"{ours}.cross_attention.out_proj.weight",
            (f"{src}.cross_attention.out_proj.weight",),
            as_is,
        ),
    ]
    rows += _norm_rows(f"{ours}.norm_cross", f"{src}.norm_cross", "layer_norm", fmt)
    if tcfg.layer_scale is not None:
        name = "layer_scale_cross.scale"
        rows.append((f"{ours}.{name}", (f"{src}.{name}",), as_is))
    return rows


def _mlp_rows(ours: str, src: str, tcfg, fmt: str, weight_set: int | None) -> list[Row]:
    if tcfg.gating == "none":
        mlx_src = ("gating.linear1", "gating.linear2") if fmt == "mlx" else ("linear1", "linear2")
        return [
            (f"{ours}.gating.linear1.weight", (f"{src}.{mlx_src[0]}.weight",), as_is),
            (f"{ours}.gating.linear2.weight", (f"{src}.{mlx_src[1]}.weight",), as_is),
        ]
    gating = "gating" if weight_set is None else f"gating.{weight_set}"
    return [
        (f"{ours}.gating.linear_in.weight", (f"{src}.{gating}.linear_in.weight",), as_is),
        (f"{ours}.gating.linear_out.weight", (f"{src}.{gating}.linear_out.weight",), as_is),
    ]


def _layer_scale_rows(ours: str, src: str, tcfg) -> list[Row]:
    if tcfg.layer_scale is None:
        return []
    return [
        (f"{ours}.layer_scale_{i}.scale", (f"{src}.layer_scale_{i}.scale",), as_is) for i in (1, 2)
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
    rows.append(("text_linear.weight", ("text_linear.weight",), as_is))
    if cfg.bias_proj:
        rows.append(("text_linear.bias", ("text_linear.bias",), as_is))
    for i in range(cfg.extra_heads_num_heads):
        rows.append((f"extra_heads.{i}.weight", (f"extra_heads.{i}.weight",), as_is))
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
        rows += [(f"{p}.{part}", (f"{p}.{part}",), as_is) for part in parts]
    return rows


def _slice_rows_mlx(cfg: LmConfig, k: int) -> list[Row]:
    p = f"depformer.slices.{k}"
    dcfg = cfg.depformer_config(k)
    demux = k == 0 and cfg.demux_second_text_stream
    rows = _emb_rows(f"{p}.emb", f"{p}.emb", cfg, True, "mlx", demux)
    rows.append((f"{p}.linear_in.weight", (f"{p}.linear_in.weight",), as_is))
    rows.append((f"{p}.linear_out.weight", (f"{p}.linear_out.weight",), as_is))
    if cfg.bias_proj:
        rows.append((f"{p}.linear_out.bias", (f"{p}.linear_out.bias",), as_is))
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
        (f"{p}.linear_in.weight", (f"depformer_in.{cfg.depformer_in_index(k)}.weight",), as_is)
    )
    rows.append((f"{p}.linear_out.weight", (f"linears.{k}.weight",), as_is))
    if cfg.bias_proj:
        rows.append((f"{p}.linear_out.bias", (f"linears.{k}.bias",), as_is))
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
    rows: list[Row] = [("text_emb.weight", ("decoder.model.embed_tokens.weight",), as_is)]
    rows += [
        (f"audio_embs.{i}.weight", (f"embed_tokens.{i}.weight",), as_is) for i in range(cfg.n_q)
    ]
    qkv = hf_qkv(cfg.num_heads)  # undo transformers' RoPE row permutation of q and k

    for i in range(cfg.num_layers):
        ours, src = f"transformer.layers.{i}", f"decoder.model.layers.{i}"
        proj = tuple(f"{src}.self_attn.{p}_proj.linear.weight" for p in "qkv")
        rows += [
            (f"{ours}.self_attn.in_proj.weight", proj, qkv),
            (
                f"{ours}.self_attn.out_proj.weight",
                (f"{src}.self_attn.o_proj.linear.weight",),
                as_is,
            ),
            (f"{ours}.norm1.weight", (f"{src}.input_layernorm.weight",), as_is),
            (f"{ours}.norm2.weight", (f"{src}.post_attention_layernorm.weight",), as_is),
            (f"{ours}.gating.linear_in.weight", (f"{src}.mlp.fc1.weight",), as_is),
            (f"{ours}.gating.linear_out.weight", (f"{src}.mlp.fc2.weight",), as_is),
        ]
    rows += [
        ("out_norm.weight", ("decoder.model.norm.weight",), as_is),
        ("text_linear.weight", ("decoder.lm_head.weight",), as_is),
    ]
    dep = "depth_decoder"
    for k in range(cfg.dep_q):
        p = f"depformer.slices.{k}"
        emb = f"{dep}.text_embed_tokens" if k == 0 else f"{dep}.embed_tokens.{k - 1}"
        rows += [
            (f"{p}.emb.weight", (f"{emb}.weight",), as_is),
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
                (f"{ours}.norm1.weight", (f"{src}.input_layernorm.weight",), as_is),
                (f"{ours}.norm2.weight", (f"{src}.post_attention_layernorm.weight",), as_is),
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
