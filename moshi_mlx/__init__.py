"""Kyutai's Moshi speech model on Apple's MLX: the language model, its streaming generator and
checkpoint loading (Kyutai MLX bf16/q8/q4, Kyutai PyTorch, transformers)."""

from mimi_mlx.hub import CheckpointError

from .checkpoint import Checkpoint, load_checkpoint, load_model
from .config import LmConfig
from .generate import MoshiGenerator
from .lm import Lm, LmOutput
from .sampling import Rng, Sampler
from .tokenizer import TextTokenizer

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Lm",
    "LmConfig",
    "LmOutput",
    "MoshiGenerator",
    "Rng",
    "Sampler",
    "TextTokenizer",
    "load_checkpoint",
    "load_model",
]
