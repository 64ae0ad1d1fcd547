"""Moshi's text tokenizer (SentencePiece), with pieces shown as Kyutai's apps show them."""

from __future__ import annotations

from pathlib import Path

from mimi_mlx.io.hub import CheckpointError

TOKENIZER_FILE = "tokenizer_spm_32k_3.model"
SILENT_TOKENS = (0, 3)  # end of padding and padding: never printed


class TextTokenizer:
    """A SentencePiece model with Moshi's display rules.

    Args:
        path: the `.model` file (`tokenizer_spm_32k_3.model` in Kyutai's repos).
    """

    def __init__(self, path: str | Path):
        import sentencepiece

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"text tokenizer not found: {path}")
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except Exception as e:
            raise CheckpointError(f"cannot read {path} as a SentencePiece model ({e})") from e
        self.path = path

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eos_id(self) -> int:
        """The end-of-text token (Hibiki says it when its translation is done)."""
        return self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, tokens: list[int]) -> str:
        """Text of a token sequence, padding (and ids the vocabulary lacks) dropped."""
        n = self.vocab_size
        return self.sp.decode([t for t in tokens if t not in SILENT_TOKENS and 0 <= t < n])

    def piece(self, token: int) -> str | None:
        """What a live app prints for one text token: None for padding, `▁` shown as a space."""
        token = int(token)
        if token in SILENT_TOKENS or not 0 <= token < self.vocab_size:
            return None
        return self.sp.id_to_piece(token).replace("▁", " ")
