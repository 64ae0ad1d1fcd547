"""Finding and loading a Mimi checkpoint: a hub repo id, a folder or a file, in either layout.

A folder is read as its `config.json` says: transformers' (`"model_type": "mimi"`) holds
`model.safetensors`; a Kyutai model repo names `mimi_name` (and possibly `mimi_config_name`);
otherwise Kyutai's file name is looked for, then transformers'.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .config import MimiConfig
from .constants import HF_FILE, KYUTAI_FILE
from .io.hub import CheckpointError, hub_file, looks_like_repo_id, missing_hint, read_json
from .io.safetensors import read_safetensors
from .model import Mimi
from .weights import detect_format, load_weights


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
    model = Mimi(cfg, source=str(checkpoint))
    load_weights(model, tensors, source=str(weights))
    return model
