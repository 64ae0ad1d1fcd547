"""Quantization recipes: which modules of Moshi's language model get which bits and group size.

The model is cut into parts (the Helium temporal transformer's attention and MLP, the depth
decoder's attention, MLP and projections, the embeddings, the text head). A recipe gives each part
a precision: `(bits, group_size)`, or None to keep it in float. Named recipes are in `RECIPES`; any
of them can be amended, or a recipe written out, with a spec string:

    q4                                  Kyutai's model.q4.safetensors (4 bits, group 32)
    q4,embeddings=q8,text_head=float    q4 with 8-bit embeddings and a float text head
    helium=q4,depformer=q8              parts not named stay in float

Only leaf modules with `to_quantized` are quantized (as `nn.quantize` does): an embedding with a
norm or low-rank projection attached is not a leaf, so its table stays in float.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import mlx.nn as nn
from mlx.utils import tree_flatten

from moshi_mlx.model.quantized import BITS, GROUP_SIZES

Precision = tuple[int, int] | None  # (bits, group_size); None keeps the weights in float
Q4: Precision = (4, 32)
Q8: Precision = (8, 64)

# Part -> the leaf modules (our paths, Kyutai's MLX names) it holds.
PARTS: dict[str, str] = {
    "embeddings": r"text_emb(\.out[12])?|audio_embs\.\d+"
    r"|depformer\.slices\.\d+\.emb(\.low_rank|\.out[12])?",
    "text_head": r"text_linear|extra_heads\.\d+",
    # self-attention, and the TTS's cross-attention over its voices
    "helium_attention": r"transformer\.layers\.\d+\.(self_attn|cross_attention)\.\w+",
    "helium_mlp": r"transformer\.layers\.\d+\.gating\.\w+",
    "depformer_attention": r"depformer\.slices\.\d+\.transformer\.layers\.\d+\.self_attn\.\w+",
    "depformer_mlp": r"depformer\.slices\.\d+\.transformer\.layers\.\d+\.gating\.\w+",
    "depformer_io": r"depformer\.slices\.\d+\.(linear_in|linear_out)",
}
GROUPS: dict[str, tuple[str, ...]] = {
    "helium": ("helium_attention", "helium_mlp"),
    "depformer": ("depformer_attention", "depformer_mlp", "depformer_io"),
    "all": tuple(PARTS),
}
_PATTERNS = {part: re.compile(f"(?:{rx})") for part, rx in PARTS.items()}
FLOAT_WORDS = ("float", "bf16", "none")


class RecipeError(ValueError):
    """An unknown recipe, part or precision. The message says what is accepted."""


def part_of(path: str) -> str | None:
    """The recipe part a module path belongs to (None: no part, the module stays in float)."""
    for part, pattern in _PATTERNS.items():
        if pattern.fullmatch(path):
            return part
    return None


def precision_name(p: Precision) -> str:
    return "float" if p is None else f"q{p[0]}g{p[1]}"


@dataclass(frozen=True)
class Recipe:
    """A precision for every part of the model.

    Attributes:
        name: the spec it was parsed from (`q4`, `q4-mlp`, `q4,text_head=float`, ...).
        parts: part -> precision (None: float).
        description: one line for `--help` and reports.
    """

    name: str
    parts: dict[str, Precision]
    description: str = ""

    def precision(self, path: str) -> Precision:
        part = part_of(path)
        return None if part is None else self.parts.get(part)

    def summary(self) -> str:
        """`helium_attention=q8g64, helium_mlp=q4g32, ...` in part order."""
        return ", ".join(f"{p}={precision_name(self.parts.get(p))}" for p in PARTS)


def _uniform(p: Precision) -> dict[str, Precision]:
    return dict.fromkeys(PARTS, p)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("q8", _uniform(Q8), "8 bits, group 64, everywhere (Kyutai's model.q8.safetensors)"),
        Recipe("q4", _uniform(Q4), "4 bits, group 32, everywhere (Kyutai's model.q4.safetensors)"),
        Recipe(
            "q4-mlp",
            {**_uniform(Q8), "helium_mlp": Q4},
            "4-bit Helium MLP; 8-bit Helium attention, depth decoder, embeddings and text head",
        ),
        Recipe(
            "q4-helium",
            {**_uniform(Q8), "helium_attention": Q4, "helium_mlp": Q4},
            "4-bit Helium transformer; 8-bit depth decoder, embeddings and text head",
        ),
    )
}


def parse_precision(text: str) -> Precision:
    """`q4` (group 32), `q8` (group 64), `q<bits>g<group>`, or `float` -> a precision."""
    text = text.strip().lower()
    if text in FLOAT_WORDS:
        return None
    m = re.fullmatch(r"q(\d+)(?:g(\d+))?", text)
    if m is None:
        raise RecipeError(
            f"unknown precision {text!r}: use q4, q8, q<bits>g<group> (e.g. q6g64) or float"
        )
    bits = int(m.group(1))
    group = int(m.group(2)) if m.group(2) else (32 if bits <= 4 else 64)
    if bits not in BITS:
        raise RecipeError(
            f"unsupported bits {bits} in {text!r}: MLX quantizes to "
            f"{', '.join(map(str, BITS))} bits"
        )
    if group not in GROUP_SIZES:
        raise RecipeError(
            f"unsupported group size {group} in {text!r}: use {', '.join(map(str, GROUP_SIZES))}"
        )
    return bits, group


def _parts_named(name: str) -> tuple[str, ...]:
    key = name.strip().lower().replace("-", "_")
    if key in PARTS:
        return (key,)
    if key in GROUPS:
        return GROUPS[key]
    choices = ", ".join([*PARTS, *GROUPS])
    raise RecipeError(f"unknown recipe part {name!r}: choose from {choices}")


def get_recipe(spec: str | Recipe) -> Recipe:
    """A named recipe, amended by `part=precision` items (see the module docstring).

    Raises:
        RecipeError: unknown recipe, part or precision, unsupported bits or group size.
    """
    if isinstance(spec, Recipe):
        return spec
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise RecipeError(f"empty recipe: choose from {', '.join(RECIPES)}")
    parts: dict[str, Precision] = _uniform(None)
    base = None
    if "=" not in items[0]:
        base = items.pop(0).lower()
        if base not in RECIPES:
            raise RecipeError(
                f"unknown recipe {base!r}: choose from {', '.join(RECIPES)}, or write one as "
                "'part=precision,...' (e.g. 'helium=q4,depformer=q8,embeddings=q8,text_head=q8')"
            )
        parts = dict(RECIPES[base].parts)
    for item in items:
        if "=" not in item:
            raise RecipeError(f"expected part=precision in the recipe, got {item!r}")
        name, value = item.split("=", 1)
        precision = parse_precision(value)
        for part in _parts_named(name):
            parts[part] = precision
    if base is None:
        description = "custom: " + ", ".join(items)
    else:
        description = RECIPES[base].description
        if items:
            description += "; amended: " + ", ".join(items)
    return Recipe(",".join([base] * (base is not None) + items), parts, description)


@dataclass
class Plan:
    """What a recipe does to one model.

    Attributes:
        layers: module path -> (group_size, bits), as `moshi_mlx.quantized.quantize_layers` takes.
        float_layers: quantizable leaf modules kept in float.
        notes: module path -> why it stayed in float although its part asked for bits.
    """

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def predicate(self, path: str, module: nn.Module) -> bool | dict:
        """A `class_predicate` for `nn.quantize` that applies this plan."""
        if path not in self.layers:
            return False
        group_size, bits = self.layers[path]
        return {"group_size": group_size, "bits": bits}

    def uniform(self) -> Precision:
        """(bits, group_size) if every quantizable module has it, else None."""
        kinds = set(self.layers.values())
        if self.float_layers or len(kinds) != 1:
            return None
        group_size, bits = kinds.pop()
        return bits, group_size

    def config_entry(self, recipe: Recipe) -> dict:
        """The `quantization` entry of config.json, as mlx-lm writes it: the most common
        `group_size`/`bits`, then the modules that differ (a dict, or false for float)."""
        entry: dict = {"recipe": recipe.name, "mode": "affine"}
        if not self.layers:
            return entry
        (group_size, bits), _ = Counter(self.layers.values()).most_common(1)[0]
        entry.update(group_size=group_size, bits=bits)
        for path, (g, b) in self.layers.items():
            if (g, b) != (group_size, bits):
                entry[path] = {"group_size": g, "bits": b}
        for path in self.float_layers:
            entry[path] = False
        return entry


def quantizable_leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules `nn.quantize` would visit that can be quantized, with their paths."""
    leaves = tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
    return [(path, m) for path, m in leaves if hasattr(m, "to_quantized")]


def make_plan(model: nn.Module, recipe: Recipe | str) -> Plan:
    """Apply a recipe to a model's modules (shapes only; the weights are not touched).

    A module whose input width is not a multiple of its group size stays in float, with a note.
    """
    recipe = get_recipe(recipe)
    plan = Plan()
    for path, module in quantizable_leaves(model):
        precision = recipe.precision(path)
        if precision is None:
            plan.float_layers.append(path)
            continue
        bits, group_size = precision
        width = module.weight.shape[-1]
        if width % group_size:
            plan.float_layers.append(path)
            plan.notes[path] = f"input width {width} is not a multiple of group size {group_size}"
            continue
        plan.layers[path] = (group_size, bits)
    leaves = {path for path, _ in quantizable_leaves(model)}
    for path, module in model.named_modules():
        if hasattr(module, "to_quantized") and path not in leaves and recipe.precision(path):
            plan.notes[path] = "not a leaf (a norm or low-rank projection attached), as nn.quantize"
    return plan
