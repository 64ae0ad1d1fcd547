"""Find and load Moshi checkpoints: a hub repo id, a local folder, or a weights file.

Kyutai's repos carry a `config.json` that names the files (`moshi_name`, `mimi_name`,
`tokenizer_name`) and, in recent repos, the model's hyper-parameters; repos without one hold the 7B
model. transformers' repos (`kmhf/hf-moshiko`) carry their own `config.json` and possibly sharded
weights. The weights' layout and quantization always come from the tensors themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mimi_mlx.constants import KYUTAI_FILE
from mimi_mlx.io.hub import CheckpointError, hub_file, looks_like_repo_id, missing_hint, read_json
from mimi_mlx.io.safetensors import read_header, read_safetensors
from mimi_mlx.model import Mimi
from mimi_mlx.nn.backend import lm_compute_dtype

from .config import LmConfig
from .lm import Lm
from .lora import Lora, LoraError, fuse_lora, lora_file, lora_of, raise_quantized
from .lora_unfused import attach_lora
from .tokenizer import TOKENIZER_FILE, TextTokenizer
from .weights import detect_format, load_weights, normalize_names

# Kyutai's weight files, in the order a repo without config.json is searched.
MOSHI_FILES = ("model.safetensors", "model.q8.safetensors", "model.q4.safetensors")
HF_INDEX = "model.safetensors.index.json"


@dataclass
class CheckpointFiles:
    """Where the pieces of a checkpoint are."""

    weights: list[Path]  # one file, or transformers' shards
    config: dict | None  # the raw config.json, None if absent
    layout: str  # "kyutai" or "hf" (from config.json; the tensors decide the rest)
    root: str  # the folder or repo id, for Mimi and the tokenizer
    get: Callable[[str], Path | None]  # fetch another file of the same folder or repo


def _getter(checkpoint: str | Path, revision: str | None) -> tuple[Callable, str, Path | None]:
    path = Path(checkpoint).expanduser()
    if path.is_file():
        folder = path.parent
        return (
            (lambda name: (folder / name) if (folder / name).is_file() else None),
            str(folder),
            path,
        )
    if path.is_dir():
        return (lambda name: (path / name) if (path / name).is_file() else None), str(path), None
    if looks_like_repo_id(str(checkpoint)):
        return (lambda name: hub_file(str(checkpoint), name, revision)), str(checkpoint), None
    raise CheckpointError(
        f"no such file or folder: {checkpoint} (and it is not a hub repo id like "
        "'kyutai/moshiko-mlx-q4')"
    )


def resolve(checkpoint: str | Path, revision: str | None = None) -> CheckpointFiles:
    """Locate the language model's weights and config of a repo id, folder or file."""
    get, root, file = _getter(checkpoint, revision)
    config_path = get("config.json")
    raw = read_json(config_path) if config_path is not None else None
    # transformers' MoshiConfig (Kyutai's configs also say "model_type": "moshi")
    is_hf = raw is not None and ("depth_decoder_config" in raw or "architectures" in raw)
    layout = "hf" if is_hf else "kyutai"
    if file is not None:
        return CheckpointFiles([file], raw, layout, root, get)
    if layout == "hf":
        index = get(HF_INDEX)
        if index is not None:
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            files = [get(s) for s in shards]
            missing = [s for s, f in zip(shards, files, strict=True) if f is None]
            if missing:
                raise CheckpointError(f"{root} lacks the shards {missing} listed in {HF_INDEX}")
            return CheckpointFiles(files, raw, layout, root, get)
        names = ("model.safetensors",)
    elif raw is not None and "moshi_name" in raw:
        names = (raw["moshi_name"],)
    else:
        names = MOSHI_FILES
    for name in names:
        weights = get(name)
        if weights is not None:
            return CheckpointFiles([weights], raw, layout, root, get)
    raise CheckpointError(
        f"{root} holds no Moshi weights: looked for {' or '.join(names)}{missing_hint(root)}"
    )


def tensor_names(path: Path) -> set[str]:
    """The tensor names of a safetensors file, from its header (nothing else is read); empty
    for an unreadable file (loading it then says what is wrong)."""
    return set(read_header(path) or ())


def config_from(files: CheckpointFiles) -> LmConfig:
    """The model configuration a checkpoint describes (7B when it says nothing).

    A repo whose config.json names no hyper-parameters (or has none) holds a 7B model; which
    one is told by its tensors: a depth decoder of 16 steps is NVIDIA's PersonaPlex.
    """
    raw = files.config
    if raw is not None and files.layout == "hf":
        return LmConfig.from_hf_config(raw)
    if raw is not None and "dim" in raw:
        return with_user_stream(LmConfig.from_dict(raw), raw)
    # Kyutai's 7B (their repo configs only name files), or PersonaPlex (a stub config.json)
    names = set().union(*(tensor_names(f) for f in files.weights))
    if is_personaplex(names):
        return LmConfig.personaplex_7b()
    return LmConfig()


def with_user_stream(cfg: LmConfig, raw: dict) -> LmConfig:
    """A dialogue model whose depth decoder also predicts the user's codebooks (PersonaPlex's
    layout in a full config.json: `dep_q == n_q`, the second half starting with a semantic
    codebook of delay 0) generates only the first half."""
    dialogue = raw.get("model_type") not in ("tts", "stt")
    n = cfg.n_q
    if (
        cfg.generated_codebooks is None
        and dialogue
        and cfg.dep_q == n
        and n % 2 == 0
        and cfg.delays[1] == cfg.delays[1 + n // 2] == 0
        and cfg.delays[1 : 1 + n // 2] == cfg.delays[1 + n // 2 :]
    ):
        cfg.generated_codebooks = n // 2
    return cfg


def is_personaplex(names: set[str]) -> bool:
    """16 depth-decoder steps on 16 audio codebooks (PyTorch `linears.15`, MLX slice 15)."""
    return "linears.15.weight" in names or any(n.startswith("depformer.slices.15.") for n in names)


def read_tensors(files: list[Path]) -> dict[str, mx.array]:
    tensors: dict[str, mx.array] = {}
    for f in files:
        tensors.update(read_safetensors(Path(f)))
    return tensors


def load_model(
    checkpoint: str | Path,
    config: LmConfig | None = None,
    dtype: mx.Dtype | None = None,
    revision: str | None = None,
    lora: str | Path | None = None,
    lora_scaling: float | None = None,
    fuse_lora: bool | None = None,
) -> Lm:
    """Build Moshi's language model and load a checkpoint into it.

    Args:
        checkpoint: hub repo id (`kyutai/moshiko-mlx-q4`), local folder (config.json + weights),
            or a `.safetensors` file. Kyutai MLX (bf16, q8, q4), Kyutai PyTorch and transformers
            layouts are recognised from the tensors; quantized layers from their shapes.
        config: overrides the checkpoint's config.json (default: read it, else the 7B config).
        dtype: activation and weight dtype (default: `lm_compute_dtype()`, float32 on CPU).
        revision: hub revision.
        lora: a LoRA adapter file to fuse instead of the one config.json names (if any).
        lora_scaling: the adapter's `lora_scaling` (default: its metadata, a config.json beside
            it, the checkpoint's config, else Kyutai's 2).
        fuse_lora: True: fuse the adapter into the weights (float only); False: keep it beside
            them (`lora_unfused`); None (default): fuse into float weights, keep it beside
            quantized ones.

    Returns:
        The model, evaluated and ready (`load_checkpoint` also gives Mimi, the tokenizer and
        where it all came from).
    """
    files = resolve(checkpoint, revision)
    adapter = lora_for(files, lora, lora_scaling, fuse_lora)
    return _load_lm(files, config, dtype, adapter, fuse_lora)[0]


def weights_layout(checkpoint: str | Path, revision: str | None = None) -> str:
    """The layout of a checkpoint's weights, from their names alone: "mlx", "pytorch" or "hf"."""
    files = resolve(checkpoint, revision)
    return detect_format(normalize_names(read_tensors(files.weights)))  # lazy: nothing read


def hears_end_of_text_as_padding(config: dict | None, fmt: str) -> bool:
    """Whether Kyutai's PyTorch loader (`CheckpointInfo.get_moshi`) would give this Hibiki's
    end-of-text token (2) the padding token's (3) input embedding: a translation that says it
    too early goes on as if it had said padding (PyTorch files of model type "hibiki")."""
    return fmt == "pytorch" and (config or {}).get("model_type") == "hibiki"


def end_of_text_as_padding(text_emb: mx.array) -> mx.array:
    """The text embedding table (rows: tokens) with row 2 replaced by row 3."""
    return mx.concatenate([text_emb[:2], text_emb[3:4], text_emb[3:]], axis=0)


def lora_for(
    files: CheckpointFiles,
    lora: str | Path | None,
    scaling: float | None = None,
    fuse: bool | None = True,
) -> Lora | None:
    """The adapter to apply: `lora` (a file), else the one the checkpoint's config.json names;
    to be `fuse`d into quantized weights, refused at once (told by their headers, before the
    long load)."""
    if lora is not None:
        adapter = lora_file(lora, files.config, scaling)
    elif scaling is not None:
        raise LoraError("a LoRA scaling was given without a LoRA file (--lora FILE)")
    else:
        adapter = lora_of(files.config, files.get, files.root)
    if adapter is not None and fuse:
        packed = sorted(n for f in files.weights for n in tensor_names(f) if n.endswith(".scales"))
        if packed:
            raise_quantized(packed[0].removesuffix(".scales"))
    return adapter


def _load_lm(
    files: CheckpointFiles,
    config: LmConfig | None,
    dtype: mx.Dtype | None,
    adapter: Lora | None = None,
    fuse: bool | None = None,
) -> tuple[Lm, str]:
    """The model with its weights (and adapter) loaded, and the weights' layout."""
    model = Lm(config or config_from(files), dtype=dtype or lm_compute_dtype())
    source = str(files.weights[0]) if len(files.weights) == 1 else files.root
    layout = load_weights(model, read_tensors(files.weights), source)
    if hears_end_of_text_as_padding(files.config, layout):
        model.text_emb.weight = end_of_text_as_padding(model.text_emb.weight)
        mx.eval(model.text_emb.weight)
    if adapter is not None:
        if fuse is None:  # float weights take it in; quantized ones keep it beside them
            fuse = not any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
        if fuse:
            fuse_lora(model, adapter)
        else:
            attach_lora(model, adapter)
    return model, layout


@dataclass
class Checkpoint:
    """Everything a job needs, and where it came from: the language model, Mimi, the text
    tokenizer, the checkpoint's files, what was asked for and the weights' layout."""

    lm: Lm
    mimi: Mimi
    tokenizer: TextTokenizer | None
    files: CheckpointFiles
    source: str  # what was asked for: a hub repo id, a folder or a file
    format: str  # the weights' layout as read: "mlx", "pytorch" or "hf"

    @property
    def config(self) -> LmConfig:
        return self.lm.cfg

    @property
    def raw_config(self) -> dict | None:
        """The checkpoint's config.json as read (None if it has none)."""
        return self.files.config

    @property
    def folder(self) -> Path | None:
        """The local folder holding the checkpoint (None for a hub repo id)."""
        where = Path(self.source).expanduser()
        return where if where.is_dir() else where.parent if where.is_file() else None


def bundled_mimi(files: CheckpointFiles) -> Mimi | None:
    """The Mimi transformers bundles under `audio_encoder.` (None where there is none)."""
    from mimi_mlx.config import MimiConfig
    from mimi_mlx.weights import load_weights as load_mimi_weights

    prefix = "audio_encoder."
    tensors = {k[len(prefix) :]: v for k, v in read_tensors(files.weights).items()
               if k.startswith(prefix)}  # fmt: skip
    if not tensors:
        return None
    mimi = Mimi(MimiConfig.from_hf_config((files.config or {}).get("audio_encoder_config") or {}),
                source=f"{files.root} (audio_encoder)")  # fmt: skip
    load_mimi_weights(mimi, tensors, source=mimi.source)
    return mimi


def _load_mimi(files: CheckpointFiles) -> Mimi:
    from mimi_mlx import load_mimi

    if files.layout == "hf":  # transformers bundles Mimi under `audio_encoder.`
        mimi = bundled_mimi(files)
        if mimi is None:
            raise CheckpointError(f"{files.root} holds no Mimi weights (audio_encoder.*)")
        return mimi
    name = (files.config or {}).get("mimi_name", KYUTAI_FILE)
    path = files.get(name)
    if path is None:
        raise CheckpointError(
            f"{files.root} holds no Mimi checkpoint ({name}){missing_hint(files.root)}"
        )
    return load_mimi(path.parent if files.config else path)


def load_checkpoint(
    checkpoint: str | Path,
    revision: str | None = None,
    dtype: mx.Dtype | None = None,
    lora: str | Path | None = None,
    lora_scaling: float | None = None,
    fuse_lora: bool | None = None,
) -> Checkpoint:
    """Load the language model, Mimi and the text tokenizer of one repo, folder or file.

    Mimi comes from the same place (`mimi_name` of config.json, Kyutai's
    `tokenizer-e351c8d8-checkpoint125.safetensors` by default, or transformers' bundled audio
    encoder); the SentencePiece model from `tokenizer_name` (`tokenizer_spm_32k_3.model`).
    The tokenizer is None where the checkpoint has none (transformers' repos). A LoRA adapter
    (`lora`, or the one config.json names; `lora_scaling` and `fuse_lora` as in `load_model`)
    is applied to the language model.
    """
    return load_files(
        resolve(checkpoint, revision), str(checkpoint), dtype, lora, lora_scaling, fuse_lora
    )


def load_files(
    files: CheckpointFiles,
    source: str,
    dtype: mx.Dtype | None = None,
    lora: str | Path | None = None,
    lora_scaling: float | None = None,
    fuse_lora: bool | None = None,
) -> Checkpoint:
    """`load_checkpoint` of a checkpoint already resolved (`resolve(source)` gave `files`)."""
    adapter = lora_for(files, lora, lora_scaling, fuse_lora)  # (fails before the load)
    lm, layout = _load_lm(files, None, dtype, adapter, fuse_lora)
    mimi = _load_mimi(files)
    tokenizer_name = (files.config or {}).get("tokenizer_name", TOKENIZER_FILE)
    tokenizer_path = files.get(tokenizer_name) if files.layout == "kyutai" else None
    tokenizer = TextTokenizer(tokenizer_path) if tokenizer_path is not None else None
    return Checkpoint(lm, mimi, tokenizer, files, source, layout)
