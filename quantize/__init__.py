"""Quantize Moshi's language model: recipes, bounded-memory checkpoint conversion into Kyutai's
MLX layout, and an accuracy report (quantized vs float logits, per-layer weight error)."""

from mimi_mlx.io.output_file import OutputError

from .convert import Conversion, convert
from .recipes import RECIPES, Plan, Recipe, RecipeError, get_recipe, make_plan
from .report import Report, accuracy_report, weight_errors

__all__ = [
    "RECIPES",
    "Conversion",
    "OutputError",
    "Plan",
    "Recipe",
    "RecipeError",
    "Report",
    "accuracy_report",
    "convert",
    "get_recipe",
    "make_plan",
    "weight_errors",
]
