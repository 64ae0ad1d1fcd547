"""Kyutai's Mimi neural audio codec on Apple's MLX."""

from .checkpoint import load_mimi
from .config import MimiConfig
from .io.hub import CheckpointError
from .model import Mimi

__all__ = ["CheckpointError", "Mimi", "MimiConfig", "load_mimi"]
__version__ = "0.1.0"
