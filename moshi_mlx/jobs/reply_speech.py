"""Text written piece by piece in, speech frames out: how the LLM's reply reaches the TTS.

`ReplySpeech` is the assistant's whole contract with the TTS: `push` text as the LLM writes it,
`end` when it is done, `pull` the next 80 ms of speech whenever the caller has time for one
(None: nothing can be spoken yet). Each pulled frame says which words start in it, so a caller
that stops playing (barge-in) knows exactly what was said.

Words go to the TTS's incremental input (`SpeechStream`) as soon as they are whole (a word is
whole once white space follows it), so speech starts after the first words, while the LLM is
still writing. The speech is that of the whole text given at once (`SpeechStream`'s rule), which
is `moshi-mlx speak`'s for any reply that fits one of speak's chunks (a quarter of the TTS's
attention context, about 750 text tokens for Kyutai's; a longer reply is one utterance here and
several there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..formats.words import Word
from .tts import TextToSpeech, TtsSettings
from .tts_stream import SpeechStream


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

    def __init__(self, tts: TextToSpeech, voices: list[np.ndarray], settings: TtsSettings):
        self.tts = tts
        self.stream = SpeechStream(tts, voices, settings)
        self.text = ""
        self._unsent = ""  # the text after the last whole word
        self.ended = False
        self.finished = False  # every frame was pulled (or the speech was closed)
        self._spoke = False

    def push(self, text: str) -> None:
        """Add text the LLM wrote (any piece: part of a word, several words)."""
        if self.ended:
            raise ValueError("the reply's text has ended: start a new ReplySpeech")
        self.text += text
        self._unsent += text
        cut = max(self._unsent.rfind(c) for c in " \t\n")
        if cut > 0 and self._unsent[:cut].strip():
            self.stream.push(self._unsent[:cut])
            self._unsent = self._unsent[cut:]

    def end(self) -> None:
        """No more text: speak what is left."""
        if self._unsent.strip():
            self.stream.push(self._unsent)
        self._unsent = ""
        self.stream.end()
        self.ended = True
        if not self.text.strip():
            self.close()  # nothing to say

    def pull(self) -> SpeechFrame | None:
        """The next frame of speech, or None when none can be made yet (or all was spoken)."""
        if self.finished:
            return None
        for frame in self.stream.frames():  # stops once it needs more text
            if frame.codes.size:
                return SpeechFrame(self.stream.decode(frame), frame.words)
            return SpeechFrame(np.zeros(0, np.float32), frame.words)  # words after the end
        if self.ended:  # (and the stream is done)
            self.close()
        return None

    def close(self) -> None:
        """Stop speaking (the rest is dropped) and leave the TTS ready for the next reply."""
        if not self.finished:
            self.finished = True
            self.tts.mimi.reset_decoder()
