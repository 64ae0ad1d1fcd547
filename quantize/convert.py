"""Convert a float Moshi checkpoint into a quantized MLX checkpoint folder, in bounded memory.

The output folder is what `kyutai/moshiko-mlx-q4` holds, ready for `moshi_mlx.load_checkpoint`:
- the language model in Kyutai's MLX layout (`model.q4.safetensors` / `model.q8.safetensors` for
  the plain recipes, the very file Kyutai's `nn.quantize` + `save_weights` would write; for other
  recipes `model.<recipe>.safetensors`). Quantized layers hold `.weight` (uint32), `.scales` and
  `.biases`; every other tensor is bfloat16, as in Kyutai's files;
- `config.json`: the model's hyper-parameters (Kyutai's keys), the file names, and
  `quantization` (the recipe, and each module's bits and group size where they differ);
- Mimi and the SentencePiece tokenizer, copied from the source (never hard-linked: rewriting the
  source must not change the output; a reflink where the file system can). A transformers source
  bundles Mimi in its weights: it is written out in Kyutai's layout.

Tensors are read, quantized and written one at a time; the folder appears under its name only
once complete.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from tqdm import tqdm

from mimi_mlx.constants import KYUTAI_FILE
from mimi_mlx.io.hub import CheckpointError
from mimi_mlx.io.output_file import OutputError
from moshi_mlx.model.checkpoint import bundled_mimi
from moshi_mlx.model.config import FILE_KEYS, LmConfig
from moshi_mlx.model.lm import Lm
from moshi_mlx.model.lora import LORA_KEYS
from moshi_mlx.model.tokenizer import TOKENIZER_FILE

from .recipes import Q4, Q8, RECIPES, Plan, Recipe, get_recipe, make_plan
from .source import SourceCheckpoint
from .writer import SafetensorsWriter, Spec, check_output_folder, staged_output

MIMI_CONFIG_FILE = "mimi_config.json"
REPORT_FILE = "quantization_report.json"


@dataclass
class Conversion:
    """What `convert` wrote.

    Attributes:
        output: the checkpoint folder.
        weights: the language model's file in it.
        recipe, plan: the recipe and what it did to this model.
        source_format: the source's layout ("pytorch", "mlx" or "hf").
        config: the model configuration.
        nbytes: size of the weights file.
        seconds: wall time of the conversion.
        warnings: things the output lacks (no Mimi, no tokenizer in the source).
    """

    output: Path
    weights: Path
    recipe: Recipe
    plan: Plan
    source_format: str
    config: LmConfig
    nbytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


def weights_file_name(recipe: Recipe, plan: Plan) -> str:
    """Kyutai's names for their two layouts (their loaders read the precision from the name)."""
    uniform = plan.uniform()
    if uniform in (Q4, Q8):
        return f"model.q{uniform[0]}.safetensors"
    tag = recipe.name if recipe.name in RECIPES else "mixed"
    return f"model.{tag}.safetensors"


def _outputs(
    source: SourceCheckpoint, ours: str, quant: tuple[int, int] | None, dtype: mx.Dtype
) -> list[tuple[str, mx.array]]:
    """The output tensors of one of our parameters, lazily: itself, or its packed weight,
    scales and biases."""
    x = source.param(ours).astype(dtype)
    if quant is None:
        return [(ours, x)]
    group_size, bits = quant
    module = ours.rsplit(".", 1)[0]
    w, scales, biases = mx.quantize(x, group_size, bits)
    return [(ours, w), (f"{module}.scales", scales), (f"{module}.biases", biases)]


def _plan_outputs(
    source: SourceCheckpoint, plan: Plan, dtype: mx.Dtype
) -> tuple[list[tuple[str, tuple[int, int] | None]], list[Spec]]:
    """Every output tensor's name, dtype and shape (lazily computed: nothing is read)."""
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(Lm(source.config).parameters())}
    items, specs, wrong = [], [], []
    for ours in source.rows:
        module, leaf = ours.rsplit(".", 1)
        quant = plan.layers.get(module) if leaf == "weight" else None
        shape = tuple(source.param(ours).shape)
        if shape != shapes[ours]:
            wrong.append(f"{ours}: checkpoint {shape} vs model {shapes[ours]}")
            continue
        items.append((ours, quant))
        specs += [(n, a.dtype, tuple(a.shape)) for n, a in _outputs(source, ours, quant, dtype)]
    source.release()
    if wrong:
        raise CheckpointError(
            f"{source.source} has tensors of the wrong shape for its configuration (a "
            "config.json for another model size?):\n  " + "\n  ".join(wrong[:8])
        )
    return items, specs


def _write_weights(
    source: SourceCheckpoint,
    path: Path,
    items: list[tuple[str, tuple[int, int] | None]],
    specs: list[Spec],
    dtype: mx.Dtype,
    progress: bool | None,
    desc: str,
) -> int:
    writer = SafetensorsWriter(path, specs)
    bar = tqdm(
        total=writer.data_bytes,
        unit="B",
        unit_scale=True,
        desc=desc,
        disable=None if progress is None else not progress,
    )
    try:
        with bar:
            for ours, quant in items:
                arrays = _outputs(source, ours, quant, dtype)
                mx.eval([a for _, a in arrays])
                for name, array in arrays:
                    bar.update(writer.write(name, array))
                del arrays
                source.release()  # drop what was read: one parameter in memory at a time
                mx.clear_cache()
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.nbytes


FICLONE = 0x40049409  # Linux: clone a file's blocks, copied on write (btrfs, XFS, ...)


def _copy(src: Path, dst: Path) -> None:
    """Copy `src` (a hub cache symlink is followed) as a reflink where possible, else bytes."""
    real = Path(src).resolve()
    try:
        import fcntl

        with open(real, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        return
    except (ImportError, OSError):
        pass
    shutil.copyfile(real, dst)


def _mimi_from_transformers(source: SourceCheckpoint, stage: Path) -> bool:
    """transformers bundles Mimi as `audio_encoder.*`: write it out in Kyutai's layout."""
    from mimi_mlx.export import save_mimi_kyutai

    mimi = bundled_mimi(source.files)
    if mimi is None:
        return False
    save_mimi_kyutai(mimi, stage / KYUTAI_FILE)
    (stage / MIMI_CONFIG_FILE).write_text(json.dumps(mimi.cfg.to_dict(), indent=2))
    return True


def _companions(source: SourceCheckpoint, stage: Path, warnings: list[str]) -> dict[str, str]:
    """Mimi, its config and the tokenizer next to the weights; returns their config.json keys."""
    raw = source.files.config or {}
    names: dict[str, str] = {}
    if source.files.layout == "hf":
        try:
            if _mimi_from_transformers(source, stage):
                names.update(mimi_name=KYUTAI_FILE, mimi_config_name=MIMI_CONFIG_FILE)
        except (CheckpointError, ValueError) as e:
            warnings.append(f"cannot convert the Mimi bundled in {source.source}: {e}")
        tokenizers = [TOKENIZER_FILE, "tokenizer.model"]
    else:
        mimi = source.file(raw.get("mimi_name", KYUTAI_FILE))
        if mimi is not None:
            _copy(mimi, stage / mimi.name)
            names["mimi_name"] = mimi.name
            mimi_config = raw.get("mimi_config_name")
            if mimi_config and (path := source.file(mimi_config)) is not None:
                _copy(path, stage / path.name)
                names["mimi_config_name"] = path.name
        tokenizers = [raw.get("tokenizer_name", TOKENIZER_FILE)]
    if "mimi_name" not in names:
        warnings.append(f"{source.files.root} has no Mimi checkpoint: the output holds no codec")
    for name in tokenizers:
        path = source.file(name)
        if path is not None:
            _copy(path, stage / path.name)
            names["tokenizer_name"] = path.name
            break
    else:
        warnings.append(f"{source.files.root} has no text tokenizer ({tokenizers[0]})")
    _carry_voices(source, stage, warnings)
    return names


def _float_notes(notes: dict[str, str]) -> list[str]:
    """One warning per reason a layer stays in float (not one per layer)."""
    by_reason: dict[str, list[str]] = {}
    for path, why in notes.items():
        by_reason.setdefault(why, []).append(path)
    out = []
    for why, paths in by_reason.items():
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        layers = "stays" if len(paths) == 1 else f"({len(paths)} layers) stay"
        out.append(f"{shown} {layers} in float: {why}")
    return out


def _carry_voices(source: SourceCheckpoint, stage: Path, warnings: list[str]) -> None:
    """The source's voice presets go along: PersonaPlex's `voices/` (converted), or its
    `voices.tgz` converted here (needs PyTorch; a warning says how otherwise)."""
    from .convert_voices import TORCH_INSTALL, VOICES_ARCHIVE, convert_voices

    voices = Path(source.files.root) / "voices"
    if voices.is_dir() and any(voices.glob("*.safetensors")):
        (stage / "voices").mkdir(exist_ok=True)
        for preset in sorted(voices.glob("*.safetensors")):
            _copy(preset, stage / "voices" / preset.name)
        return
    archive = source.file(VOICES_ARCHIVE)
    if archive is None:
        return
    try:
        convert_voices(archive, stage / "voices")
    except ValueError as e:
        warnings.append(
            f"the voice presets of {VOICES_ARCHIVE} are not carried over ({e}); with PyTorch "
            f"({TORCH_INSTALL}) run `moshi-mlx-quantize voices {archive} OUTPUT/voices`"
        )


def _config_json(source: SourceCheckpoint, files: dict[str, str], quantization: dict) -> dict:
    """Kyutai's repo config: their own keys kept (Kyutai sources), the model's, the files'."""
    base = dict(source.files.config or {}) if source.files.layout == "kyutai" else {}
    config = {**base, **source.config.to_dict()}
    for key in (*FILE_KEYS, *LORA_KEYS, "quantization"):  # a LoRA is fused in
        config.pop(key, None)
    config["model_type"] = source.config.model_type  # "moshi", "stt", ...
    return {**config, **files, "quantization": quantization}


def convert(
    source: str | Path,
    output: str | Path,
    recipe: str | Recipe = "q4",
    *,
    force: bool = False,
    dtype: mx.Dtype = mx.bfloat16,
    revision: str | None = None,
    progress: bool | None = True,
    lora: str | Path | None = None,
    lora_scaling: float | None = None,
) -> Conversion:
    """Quantize a float Moshi checkpoint into an MLX checkpoint folder.

    Args:
        source: hub repo id, folder or `.safetensors` file: Kyutai PyTorch
            (`kyutai/moshiko-pytorch-bf16`), Kyutai MLX bf16 or transformers layout.
        output: the folder to create.
        recipe: a recipe name or spec (`q4`, `q8`, `q4-mlp`, `q4,text_head=float`, ...).
        force: replace an existing checkpoint folder at `output`.
        dtype: dtype of the tensors left in float, and of the scales and biases (default
            bfloat16, as Kyutai's files).
        revision: hub revision of `source`.
        progress: show a progress bar (None: only on a terminal).
        lora, lora_scaling: a LoRA adapter to fuse before quantizing, instead of the one the
            source's config.json names (as `moshi_mlx.load_model`).

    Returns:
        What was written.

    Raises:
        RecipeError: bad recipe. CheckpointError: bad source. OutputError: the output exists,
        or cannot be written (read-only, full disk); nothing is left behind.
    """
    start = time.perf_counter()
    recipe = get_recipe(recipe)
    output = Path(output).expanduser()
    src = SourceCheckpoint(source, revision, lora, lora_scaling)
    plan = make_plan(Lm(src.config), recipe)  # shapes only: the model is never evaluated
    items, specs = _plan_outputs(src, plan, dtype)
    name = weights_file_name(recipe, plan)
    warnings = _float_notes(plan.notes)
    protected = [Path(src.files.root)] if Path(src.files.root).exists() else []
    check_output_folder(output, force, protected)
    try:
        with staged_output(output, force) as stage:
            nbytes = _write_weights(src, stage / name, items, specs, dtype, progress, recipe.name)
            files = {"moshi_name": name, **_companions(src, stage, warnings)}
            config = _config_json(src, files, plan.config_entry(recipe))
            (stage / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    except OSError as e:
        raise OutputError(f"cannot write {output}: {e.strerror or e}") from e
    return Conversion(
        output=output,
        weights=output / name,
        recipe=recipe,
        plan=plan,
        source_format=src.format,
        config=src.config,
        nbytes=nbytes,
        seconds=time.perf_counter() - start,
        warnings=warnings,
    )
