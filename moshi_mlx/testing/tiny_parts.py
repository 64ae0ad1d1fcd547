"""The parts every tiny checkpoint holds: a tiny random Mimi (Kyutai's layout, with its
`mimi_config.json`) and a tiny SentencePiece model (ids 0-3 not word pieces, as Kyutai's)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mimi_mlx.config import MimiConfig
from mimi_mlx.constants import KYUTAI_FILE
from mimi_mlx.export import save_mimi_kyutai
from mimi_mlx.model import Mimi
from mimi_mlx.quantizer import QuantizerConfig
from mimi_mlx.seanet import SeanetConfig


def tiny_mimi_config() -> MimiConfig:
    """Mimi's structure (24 kHz, 12.5 Hz, 32 codebooks of 2048) at a tiny width."""
    return MimiConfig(
        seanet=SeanetConfig(dimension=32, n_filters=4),
        transformer=replace(
            MimiConfig().transformer, d_model=32, num_heads=4, num_layers=2, dim_feedforward=64
        ),
        quantizer=QuantizerConfig(dimension=16, input_dimension=32, output_dimension=32),
    )


CORPUS = [
    "Hello, how are you doing today?",
    "I am Moshi, a speech model made by Kyutai.",
    "The quick brown fox jumps over the lazy dog.",
    "What would you like to talk about?",
    "It is a beautiful day, the sun is shining and the birds are singing.",
    "Tell me a story about a cat who learned to fly.",
    "Numbers like one, two, three, four and five are easy to say.",
    "Speech, text and audio tokens stream together in real time.",
]


def _random_mimi(seed: int) -> Mimi:
    """Mimi with random weights (fan-in scaled) and random codebooks: it decodes to noise."""
    mx.random.seed(seed)
    mimi = Mimi(tiny_mimi_config())
    weights = []
    for name, p in tree_flatten(mimi.parameters()):
        if p.ndim >= 2:  # convolutions, projections, codebooks
            fan_in = 1 if name.endswith(".embedding") else p.size // p.shape[0]
            weights.append((name, mx.random.normal(p.shape) * fan_in**-0.5))
        elif name.endswith(".bias") and "norm" not in name:
            weights.append((name, 0.01 * mx.random.normal(p.shape)))
    mimi.update(tree_unflatten(weights))
    return mimi


def _train_tokenizer(prefix: Path, vocab_size: int) -> None:
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=3,  # as in Kyutai's tokenizer, ids 0 and 3 are not word pieces
        minloglevel=2,
    )


def write_tiny_tokenizer(folder: Path, name: str) -> None:
    """A tiny SentencePiece model (200 pieces; ids 0-3 are not word pieces) as `folder/name`."""
    _train_tokenizer(folder / Path(name).stem, vocab_size=200)
    (folder / Path(name).with_suffix(".vocab").name).unlink(missing_ok=True)


def write_tiny_mimi(folder: Path, seed: int) -> None:
    """A tiny random Mimi in Kyutai's layout, with its `mimi_config.json`."""
    write_tiny_mimi_as(folder, KYUTAI_FILE, seed)


def write_tiny_mimi_as(folder: Path, name: str, seed: int) -> None:
    """`write_tiny_mimi` under the file name `name`."""
    mimi = _random_mimi(seed)
    save_mimi_kyutai(mimi, folder / name)
    (folder / "mimi_config.json").write_text(json.dumps(mimi.cfg.to_dict(), indent=2))
