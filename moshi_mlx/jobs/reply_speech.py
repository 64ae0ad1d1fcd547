"""Text written piece by piece in, speech frames out: how the LLM's reply reaches the TTS.

`ReplySpeech` is the assistant's whole contract with the TTS: `push` text as the LLM writes it,
`end` when it is done, `pull` the next 80 ms of speech whenever the caller has time for one
(None: nothing can be spoken yet). Each pulled frame says which words start in it, so a caller
that stops playing (barge-in) knows exactly what was said.

This implementation speaks through `TextToSpeech.frames`, the whole-text path: speech starts
once the text has ended, and is then exactly `moshi-mlx speak` of the reply. (The incremental
text input of `TextToSpeech`, which starts after the first words, replaces it behind the same
three calls.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .tts import TextToSpeech, TTSFrame, TTSSettings, Word


@dataclass
class SpeechFrame:
    """80 ms of speech (1920,) float32 at 24 kHz and the words that start in it."""

    pcm: np.ndarray
    words: list[Word] = field(default_factory=list)


class ReplySpeech:
    """One reply's speech, fed as it is written.

    Args:
        tts: the loaded TTS.
        voices: its voice embeddings (`load_voice`).
        settings: how to speak (temperature, seed, ...).
    """

    def __init__(self, tts: TextToSpeech, voices: list[np.ndarray], settings: TTSSettings):
        self.tts, self.voices, self.settings = tts, voices, settings
        self.text = ""
        self.ended = False
        self.finished = False  # every frame was pulled
        self._frames: Iterator[TTSFrame] | None = None

    def push(self, text: str) -> None:
        """Add text the LLM wrote (any piece: part of a word, several words)."""
        if self.ended:
            raise ValueError("the reply's text has ended: start a new ReplySpeech")
        self.text += text

    def end(self) -> None:
        """No more text: speak what is left."""
        self.ended = True

    def pull(self) -> SpeechFrame | None:
        """The next frame of speech, or None when none is ready (or all was spoken)."""
        if not self.ended or self.finished:
            return None
        if self._frames is None:
            if not self.text.strip():
                self.finished = True
                return None
            self._frames = self.tts.frames(self.text, self.voices, self.settings)
        words: list[Word] = []
        for frame in self._frames:
            words += frame.words
            if frame.codes.size:
                return SpeechFrame(self.tts.decode(frame), words)
        self.close()
        return SpeechFrame(np.zeros(0, np.float32), words) if words else None

    def close(self) -> None:
        """Stop speaking (the rest is dropped) and leave the TTS ready for the next reply."""
        if self._frames is not None:
            self._frames.close()
            self._frames = None
            self.tts.mimi.reset_decoder()
        self.finished = True
