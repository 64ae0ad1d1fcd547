"""Random LoRA adapters in moshi-finetune's format, and tiny fine-tune folders around them.

moshi-finetune saves `X.lora_A.weight` (rank, in) and `X.lora_B.weight` (out, rank) for every
linear layer X of Kyutai's in-memory `LMModel` (`transformer.layers.0.self_attn.in_projs.0`,
`depformer.layers.1.self_attn.in_projs.2` for the depth decoder's weight set 2,
`depformer.layers.0.gating.1.linear_in`, `depformer_in.3`, `linears.5`, `text_linear`, ...) in
`checkpoint_N/consolidated/lora.safetensors`, with the base's config plus `lora`, `lora_rank`
and `lora_scaling` in a `config.json` beside it. The names here come from our name table (the
released tensor each linear layer reads), split per weight set as Kyutai's model holds them;
tests/test_lora.py checks them against Kyutai's own `replace_all_linear_with_lora`.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx

from ..model.config import LmConfig
from ..model.lm import Lm
from ..model.lora import LORA_FILE, linear_layers
from ..model.name_tables import name_table
from ..model.weights import STACKED
from .synthetic import pytorch_layout
from .tiny import TINY_KINDS, make_tiny_checkpoint

TINY_RANK, TINY_SCALING = 4, 1.5


def adapter_layout(cfg: LmConfig) -> list[tuple[str, int, int]]:
    """(adapted layer in Kyutai's in-memory names, out, in) for every linear layer of `cfg`."""
    linears = linear_layers(Lm(cfg))
    sources = {
        source
        for ours, (source,), _ in name_table(cfg, "pytorch")
        if ours.endswith(".weight") and ours[: -len(".weight")] in linears
    }
    layout = []
    for source, shape in pytorch_layout(cfg):
        if source not in sources:
            continue
        rows, cols = shape
        for split, stacked in STACKED.items():
            if source.endswith(stacked):  # one projection per weight set, stacked on release
                count = cfg.num_weight_sets if source.startswith("depformer.") else 1
                prefix = source[: -len(stacked)]
                layout += [(f"{prefix}{split}.{i}", rows // count, cols) for i in range(count)]
                break
        else:
            layout.append((source.removesuffix(".weight"), rows, cols))
    return layout


def save_random_lora(
    cfg: LmConfig, path: str | Path, rank: int = TINY_RANK, seed: int = 0
) -> dict[str, mx.array]:
    """A random adapter of `rank` on every linear layer, in bfloat16 (moshi-finetune's
    `param_dtype`); drawn large enough (A ~ N(0, 1/in), B ~ N(0, 1/(4 rank))) that a missing
    or misplaced adapter changes the outputs."""
    mx.random.seed(seed)
    tensors = {}
    for name, rows, cols in adapter_layout(cfg):
        down = mx.random.normal((rank, cols), scale=cols**-0.5)
        up = mx.random.normal((rows, rank), scale=0.5 * rank**-0.5)
        tensors[f"{name}.lora_A.weight"] = down.astype(mx.bfloat16)
        tensors[f"{name}.lora_B.weight"] = up.astype(mx.bfloat16)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path), tensors)
    return tensors


def lora_config(rank: int, scaling: float, name: str | None = None) -> dict:
    """The keys Kyutai's loader reads from a fine-tune's config.json (`lora_name`: the adapter
    file beside it, which moshi-finetune's own config does not name)."""
    keys = {"lora": True, "lora_rank": rank, "lora_scaling": scaling}
    return keys if name is None else {**keys, "lora_name": name}


def make_tiny_lora_checkpoint(
    folder: str | Path,
    seed: int = 0,
    kind: str = "moshi",
    rank: int = TINY_RANK,
    scaling: float = TINY_SCALING,
) -> Path:
    """A tiny random fine-tune: the `kind` tiny checkpoint (float weights) whose config.json
    names its adapter (`lora.safetensors` beside it: it loads fused, with no flag), and
    moshi-finetune's own output of the same adapter in `consolidated/` (`lora.safetensors`
    and its `config.json`), for `--lora FILE` on the base.
    """
    if kind not in TINY_KINDS:
        raise ValueError(f"a tiny LoRA goes on one of {tuple(TINY_KINDS)}, not {kind!r}")
    folder = make_tiny_checkpoint(folder, seed=seed, kind=kind)
    config = json.loads((folder / "config.json").read_text())
    cfg = LmConfig.from_dict(TINY_KINDS[kind])
    save_random_lora(cfg, folder / LORA_FILE, rank, seed + 100)
    consolidated = folder / "consolidated"
    consolidated.mkdir()
    (consolidated / LORA_FILE).write_bytes((folder / LORA_FILE).read_bytes())
    finetune = {k: v for k, v in config.items() if k in TINY_KINDS[kind]}
    (consolidated / "config.json").write_text(
        json.dumps({**finetune, **lora_config(rank, scaling)}, indent=2)
    )
    config.update(lora_config(rank, scaling, LORA_FILE))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
