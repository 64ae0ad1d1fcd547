"""Loading Mimi checkpoints: format detection and declarative name tables.

Two layouts are read, told apart by their tensor names:
- Kyutai's (`tokenizer-e351c8d8-checkpoint125.safetensors`):
  `encoder.model.0.conv.conv.weight`, ...
- transformers' (`kyutai/mimi`: `config.json` + `model.safetensors`):
  `encoder.layers.0.conv.weight`, ...

Each table row maps one of our parameter names to its source name(s) and a transform.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mimi_mlx.constants import KYUTAI_FILE

from .config import MimiConfig
from .io.hub import (
    CheckpointError,
    hub_file,
    listing,
    looks_like_repo_id,
    missing_hint,
    read_json,
    shape_mismatches,
)
from .model import Mimi
from .nn.backend import codec_compute_dtype
from .quantizer import centroids

HF_FILE = "model.safetensors"


# -- transforms: source tensors (PyTorch layouts) -> ours -------------------------------------
def copy(x: mx.array) -> mx.array:
    return x


def conv(x: mx.array) -> mx.array:
    """PyTorch Conv1d (out, in, k) -> MLX (out, k, in)."""
    return x.transpose(0, 2, 1)


def conv_transpose(x: mx.array) -> mx.array:
    """PyTorch ConvTranspose1d (in, out, k) -> ours (in, k, out)."""
    return x.transpose(0, 2, 1)


def pointwise(x: mx.array) -> mx.array:
    """A 1x1 Conv1d (out, in, 1) used as a Linear (out, in)."""
    return x[..., 0]


def hf_qkv(num_heads: int) -> Callable[..., mx.array]:
    """transformers' q, k, v -> Kyutai's fused in_proj, undoing the q/k row permutation.

    transformers rotates split halves where Kyutai rotates interleaved pairs, so its converter
    permuted each head's rows from (pairs, 2) to (2, pairs) order; we permute them back.
    """

    def unpermute(w: mx.array) -> mx.array:
        out_dim, in_dim = w.shape
        head_dim = out_dim // num_heads
        w = w.reshape(num_heads, 2, head_dim // 2, in_dim).transpose(0, 2, 1, 3)
        return w.reshape(out_dim, in_dim)

    return lambda q, k, v: mx.concatenate([unpermute(q), unpermute(k), v], axis=0)


Row = tuple[str, tuple[str, ...], Callable[..., mx.array]]  # ours, sources, transform

# The inverse of each transform, to write our weights in Kyutai's layout.
TO_KYUTAI: dict[Callable, Callable[[mx.array], tuple[mx.array, ...]]] = {
    copy: lambda x: (x,),
    conv: lambda x: (x.transpose(0, 2, 1),),
    conv_transpose: lambda x: (x.transpose(0, 2, 1),),
    pointwise: lambda x: (x[..., None],),
    centroids: lambda x: (x, mx.ones((x.shape[0],), dtype=x.dtype)),  # usage 1: sum = centroid
}


# -- SEANet: Kyutai and transformers index the same nn.Sequential; the ELUs take indices too ---
def _seanet_rows(cfg: MimiConfig, side: str, fmt: str) -> list[Row]:
    n_res, n_blocks = cfg.seanet.n_residual_layers, len(cfg.seanet.ratios)
    if fmt == "kyutai":
        seq, conv_w, convtr_w = f"{side}.model", "conv.conv", "convtr.convtr"
    else:
        seq, conv_w, convtr_w = f"{side}.layers", "conv", "conv"

    def conv_rows(ours: str, src: str, kind: str = "conv") -> list[Row]:
        inner = convtr_w if kind == "convtr" else conv_w
        fn = conv_transpose if kind == "convtr" else conv
        return [
            (f"{side}.{ours}.weight", (f"{seq}.{src}.{inner}.weight",), fn),
            (f"{side}.{ours}.bias", (f"{seq}.{src}.{inner}.bias",), copy),
        ]

    def residual_rows(ours: str, index: int) -> list[Row]:
        return conv_rows(f"{ours}.conv1", f"{index}.block.1") + conv_rows(
            f"{ours}.conv2", f"{index}.block.3"
        )

    rows = conv_rows("init_conv", "0")
    i = 1
    for b in range(n_blocks):
        if side == "encoder":  # residuals, ELU, strided conv
            for j in range(n_res):
                rows += residual_rows(f"blocks.{b}.residuals.{j}", i + j)
            rows += conv_rows(f"blocks.{b}.downsample", str(i + n_res + 1))
        else:  # ELU, transposed conv, residuals
            rows += conv_rows(f"blocks.{b}.upsample", str(i + 1), "convtr")
            for j in range(n_res):
                rows += residual_rows(f"blocks.{b}.residuals.{j}", i + 2 + j)
        i += n_res + 2
    return rows + conv_rows("final_conv", str(i + 1))


# -- transformers: (ours, Kyutai, transformers) per layer ---------------------------------------
TRANSFORMER_LAYER = [
    ("self_attn.out_proj.weight", "self_attn.out_proj.weight", "self_attn.o_proj.weight"),
    ("norm1.weight", "norm1.weight", "input_layernorm.weight"),
    ("norm1.bias", "norm1.bias", "input_layernorm.bias"),
    ("norm2.weight", "norm2.weight", "post_attention_layernorm.weight"),
    ("norm2.bias", "norm2.bias", "post_attention_layernorm.bias"),
    ("gating.linear1.weight", "linear1.weight", "mlp.fc1.weight"),
    ("gating.linear2.weight", "linear2.weight", "mlp.fc2.weight"),
    ("layer_scale_1.scale", "layer_scale_1.scale", "self_attn_layer_scale.scale"),
    ("layer_scale_2.scale", "layer_scale_2.scale", "mlp_layer_scale.scale"),
]


def _transformer_rows(cfg: MimiConfig, name: str, fmt: str) -> list[Row]:
    rows: list[Row] = []
    for i in range(cfg.transformer.num_layers):
        ours = f"{name}.layers.{i}"
        src = f"{name}.transformer.layers.{i}" if fmt == "kyutai" else f"{name}.layers.{i}"
        for our_suffix, kyutai_suffix, hf_suffix in TRANSFORMER_LAYER:
            suffix = kyutai_suffix if fmt == "kyutai" else hf_suffix
            rows.append((f"{ours}.{our_suffix}", (f"{src}.{suffix}",), copy))
        if fmt == "kyutai":
            rows.append(
                (f"{ours}.self_attn.in_proj.weight", (f"{src}.self_attn.in_proj_weight",), copy)
            )
        else:
            qkv = tuple(f"{src}.self_attn.{p}_proj.weight" for p in "qkv")
            rows.append(
                (f"{ours}.self_attn.in_proj.weight", qkv, hf_qkv(cfg.transformer.num_heads))
            )
    return rows


def _quantizer_rows(cfg: MimiConfig, fmt: str) -> list[Row]:
    q = cfg.quantizer
    rows: list[Row] = []
    for ours, hf, n in (
        ("rvq_first", "semantic_residual_vector_quantizer", q.n_q_semantic),
        ("rvq_rest", "acoustic_residual_vector_quantizer", q.n_q - q.n_q_semantic),
    ):
        src = f"quantizer.{ours}" if fmt == "kyutai" else f"quantizer.{hf}"
        for proj in ("input_proj", "output_proj"):
            rows.append((f"quantizer.{ours}.{proj}.weight", (f"{src}.{proj}.weight",), pointwise))
        for i in range(n):
            if fmt == "kyutai":
                book, total = f"{src}.vq.layers.{i}._codebook", "embedding_sum"
            else:
                book, total = f"{src}.layers.{i}.codebook", "embed_sum"
            sources = (f"{book}.{total}", f"{book}.cluster_usage")
            rows.append((f"quantizer.{ours}.layers.{i}.embedding", sources, centroids))
    return rows


def name_table(cfg: MimiConfig, fmt: str) -> list[Row]:
    """Every parameter of `Mimi(cfg)` with its source tensor names in format `fmt`."""
    if fmt == "kyutai":
        resample = [
            ("downsample.weight", ("downsample.conv.conv.conv.weight",), conv),
            ("upsample.weight", ("upsample.convtr.convtr.convtr.weight",), conv_transpose),
        ]
    else:
        resample = [
            ("downsample.weight", ("downsample.conv.weight",), conv),
            ("upsample.weight", ("upsample.conv.weight",), conv_transpose),
        ]
    return (
        _seanet_rows(cfg, "encoder", fmt)
        + _transformer_rows(cfg, "encoder_transformer", fmt)
        + resample
        + _quantizer_rows(cfg, fmt)
        + _transformer_rows(cfg, "decoder_transformer", fmt)
        + _seanet_rows(cfg, "decoder", fmt)
    )


def kyutai_state(model: Mimi) -> dict[str, mx.array]:
    """Our weights under Kyutai's released names and layouts (float32), ready to save."""
    ours = dict(tree_flatten(model.parameters()))
    state = {}
    for name, sources, fn in name_table(model.cfg, "kyutai"):
        for source, x in zip(sources, TO_KYUTAI[fn](ours[name]), strict=True):
            state[source] = mx.contiguous(x.astype(mx.float32))
    return state


# Tensors the checkpoints carry that the model does not use.
def _ignored(name: str) -> bool:
    return name.endswith(("._initialized", ".codebook.initialized"))


# Kyutai's in-memory attention names, as `state_dict()` writes them (released files use the
# `in_proj_weight` / `out_proj.weight` forms of the table).
KYUTAI_ALIASES = {
    "self_attn.in_projs.0.weight": "self_attn.in_proj_weight",
    "self_attn.out_projs.0.weight": "self_attn.out_proj.weight",
}


def detect_format(names) -> str:
    """'kyutai' or 'hf' from the tensor names; CheckpointError if neither."""
    names = set(names)
    if "encoder.model.0.conv.conv.weight" in names:
        return "kyutai"
    if "encoder.layers.0.conv.weight" in names:
        return "hf"
    sample = ", ".join(sorted(names)[:5])
    raise CheckpointError(
        "this is not a Mimi checkpoint: expected Kyutai's tensor names "
        "(encoder.model.0.conv.conv.weight, ...) or transformers' (encoder.layers.0.conv.weight, "
        f"...), found {len(names)} tensors such as: {sample}"
    )


def safetensors_header(path: str | Path) -> dict:
    """A safetensors file's JSON header (tensor entries and `__metadata__`), nothing else read;
    {} for an unreadable file (loading it then says what is wrong)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(min(size, 100_000_000)))
        return header if isinstance(header, dict) else {}
    except (OSError, ValueError):
        return {}


def read_safetensors(path: Path) -> dict[str, mx.array]:
    """All tensors of a safetensors file, with a clear error for missing or corrupt files."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return mx.load(str(path), format="safetensors")
    except Exception as e:
        raise CheckpointError(
            f"cannot read {path} as safetensors ({e}); the file is corrupt, truncated or not a "
            "checkpoint"
        ) from e


def convert_state(tensors: dict[str, mx.array], cfg: MimiConfig, source: str = "checkpoint"):
    """Map a checkpoint's tensors to our parameter names; clear errors for any mismatch."""
    for alias, name in KYUTAI_ALIASES.items():
        for key in [k for k in tensors if k.endswith(alias)]:
            tensors[key[: -len(alias)] + name] = tensors.pop(key)
    fmt = detect_format(tensors)
    rows = name_table(cfg, fmt)
    expected = {s for _, sources, _ in rows for s in sources}
    missing = sorted(s for s in expected if s not in tensors)
    unexpected = sorted(k for k in tensors if k not in expected and not _ignored(k))
    if missing or unexpected:
        expected_file = KYUTAI_FILE if fmt == "kyutai" else f"{HF_FILE} with its config.json"
        raise CheckpointError(
            f"{source} does not match the Mimi configuration (layout: {fmt}; expected "
            f"{expected_file}).\n  missing {listing(missing)}\n  unexpected {listing(unexpected)}"
        )
    return {ours: fn(*(tensors[s] for s in sources)) for ours, sources, fn in rows}, fmt


def load_weights(model: Mimi, tensors: dict[str, mx.array], source: str = "checkpoint") -> str:
    """Load checkpoint tensors (either layout) into `model`; returns the detected layout."""
    state, fmt = convert_state(dict(tensors), model.cfg, source)
    wrong = shape_mismatches(state, dict(tree_flatten(model.parameters())))
    if wrong:
        raise CheckpointError(
            f"{source} has tensors of the wrong shape for this Mimi configuration "
            f"(a different model size?):\n  " + "\n  ".join(wrong)
        )
    # Transposes are lazy views: make each weight contiguous once, not on every call.
    dtype = codec_compute_dtype()
    model.update(tree_unflatten([(k, mx.contiguous(v.astype(dtype))) for k, v in state.items()]))
    mx.eval(model.parameters())
    return fmt


def _config_for(weights: Path, fmt: str, config: MimiConfig | None, hf_config: Path | None):
    if config is not None:
        return config
    if fmt == "hf":
        if hf_config is None or not hf_config.is_file():
            raise CheckpointError(
                f"{weights} is in transformers' layout but has no config.json beside it"
            )
        return MimiConfig.from_hf_config(read_json(hf_config))
    return MimiConfig()


def resolve_mimi_files(
    checkpoint: str | Path, revision: str | None = None
) -> tuple[Path, Path | None]:
    """A Mimi checkpoint argument -> (weights file, config file or None).

    `checkpoint` is a `.safetensors` file, a folder (transformers' layout with `config.json`,
    or a Kyutai repo folder whose `config.json` may name `mimi_name` / `mimi_config_name`),
    or a hub repo id resolved through huggingface_hub (and its cache).
    """
    path = Path(checkpoint).expanduser()
    if path.is_file():  # read with the config its folder gives it, as when the folder is given
        try:
            weights, config = _resolve(_folder_getter(path.parent), str(path.parent))
        except CheckpointError:
            weights = None
        if weights is not None and weights.resolve() == path.resolve():
            return path, config
        return path, path.parent / "config.json"
    if path.is_dir():
        return _resolve(_folder_getter(path), str(path))
    if looks_like_repo_id(str(checkpoint)):
        return _resolve(lambda name: hub_file(str(checkpoint), name, revision), str(checkpoint))
    raise CheckpointError(
        f"no such file or folder: {checkpoint} (and it is not a hub repo id like 'kyutai/mimi')"
    )


def _folder_getter(folder: Path) -> Callable[[str], Path | None]:
    return lambda name: (folder / name) if (folder / name).is_file() else None


def _resolve(get: Callable[[str], Path | None], where: str) -> tuple[Path, Path | None]:
    """Pick the weights by what config.json says, so no absent file is asked for.

    transformers' config (`"model_type": "mimi"`) -> model.safetensors; a Kyutai model repo's
    config (`mimi_name`, `mimi_config_name`) -> the file it names; none -> Kyutai's file name.
    """
    config = get("config.json")
    raw = read_json(config) if config is not None else {}
    kyutai_config = None
    if raw.get("model_type") == "mimi" or "codebook_size" in raw:
        names = [HF_FILE]
    elif "mimi_name" in raw or "moshi_name" in raw:  # a Kyutai model repo
        names = [raw.get("mimi_name", KYUTAI_FILE)]
        if raw.get("mimi_config_name"):
            kyutai_config = get(raw["mimi_config_name"])
    else:
        names = [KYUTAI_FILE, HF_FILE]
    for name in names:
        weights = get(name)
        if weights is not None:
            return weights, (config if name == HF_FILE else kyutai_config)
    raise CheckpointError(
        f"{where} holds no Mimi checkpoint: looked for {' or '.join(names)}{missing_hint(where)}"
    )


def load_mimi(
    checkpoint: str | Path = "kyutai/mimi",
    revision: str | None = None,
    config: MimiConfig | None = None,
) -> Mimi:
    """Build Mimi and load a checkpoint (hub repo id, folder or file; either layout)."""
    weights, config_file = resolve_mimi_files(checkpoint, revision)
    tensors = read_safetensors(weights)
    fmt = detect_format(tensors)
    if config is None and config_file is not None and config_file.is_file() and fmt == "kyutai":
        raw = read_json(config_file)
        if "seanet" in raw or "quantizer" in raw:  # Kyutai's mimi_config layout
            config = MimiConfig.from_dict(raw)
    cfg = _config_for(weights, fmt, config, config_file)
    model = Mimi(cfg)
    load_weights(model, tensors, source=str(weights))
    model.checkpoint_id = str(checkpoint)
    return model
