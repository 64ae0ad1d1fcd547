"""Text pieces of a speech-to-text stream -> words with start and end times.

Kyutai's STT models write each word as SentencePiece pieces (the first one starting with `▁`),
separated by padding (token 3); an end-of-padding token (0) comes just before each new word.
As in Kyutai's timestamp example (`stt_from_file_pytorch.py`), a word starts at the step of its
first piece and ends at the next end-of-padding token (or at the next word, whichever comes
first), and lasts one second at most (their rule for the last word, applied to every word, so a
word before a pause is closed one second after it started rather than when the speaker
resumes). Times are shifted by the text's delay behind the audio: seconds of the input audio.
"""

from __future__ import annotations

from dataclasses import dataclass

END_OF_PADDING = 0
LAST_WORD_SECONDS = 1.0  # the longest a word lasts (Kyutai's rule for a stream's last word)


@dataclass
class Word:
    """One word, recognised (STT) or spoken (TTS): seconds of the audio; `end` None while a
    spoken word is still being said."""

    text: str
    start: float
    end: float | None = None

    def to_dict(self) -> dict:
        """As transcripts write it (`word`, `start`, `end`)."""
        end = None if self.end is None else round(self.end, 3)
        return {"word": self.text, "start": round(self.start, 3), "end": end}


class WordBuilder:
    """Turns one stream's tokens into words, as the tokens come.

    Args:
        tokenizer: the text tokenizer (`TextTokenizer`).
        offset: seconds to subtract from a token's audio time (silence prefix + text delay).
        frame_seconds: audio time per step (0.08 s).
    """

    def __init__(self, tokenizer, offset: float, frame_seconds: float = 0.08):
        self.tokenizer = tokenizer
        self.offset = offset
        self.frame_seconds = frame_seconds
        self._pieces: list[int] = []  # tokens of the open word
        self._start: float | None = None

    def _time(self, audio_time: float) -> float:
        return max(0.0, audio_time - self.offset)

    @property
    def partial(self) -> str:
        """The word being written (its pieces so far), "" when none."""
        return self.tokenizer.decode(self._pieces).strip() if self._pieces else ""

    def add(self, token: int, audio_time: float) -> list[Word]:
        """Record the token heard up to `audio_time` (seconds of the model's input stream);
        returns the words this token completed (zero, one, or two when a word had no end)."""
        done: list[Word] = []
        is_piece = self.tokenizer.piece(token) is not None
        starts_word = is_piece and self.tokenizer.sp.id_to_piece(int(token)).startswith("▁")
        if self._pieces and (token == END_OF_PADDING or starts_word):
            done += self._close(min(audio_time, self._start + LAST_WORD_SECONDS))
        elif self._pieces and not is_piece and audio_time >= self._start + LAST_WORD_SECONDS:
            done += self._close(self._start + LAST_WORD_SECONDS)
        if is_piece:
            if not self._pieces:
                self._start = audio_time
            self._pieces.append(int(token))
        return done

    def finish(self, audio_time: float) -> list[Word]:
        """Close the open word at the end of the stream (`audio_time`: where the stream ended)."""
        if not self._pieces:
            return []
        return self._close(min(audio_time, self._start + LAST_WORD_SECONDS))

    def _close(self, end: float) -> list[Word]:
        text = self.tokenizer.decode(self._pieces).strip()
        start = self._start
        self._pieces, self._start = [], None
        if not text:
            return []
        names = text.split()
        if len(names) == 1:
            return [Word(text, self._time(start), self._time(end))]
        # several words without a separator: a step per piece, the last takes the rest (Kyutai)
        words = []
        for name in names[:-1]:
            step_end = start + len(self.tokenizer.encode(name)) * self.frame_seconds
            words.append(Word(name, self._time(start), self._time(min(step_end, end))))
            start = min(step_end, end)
        words.append(Word(names[-1], self._time(start), self._time(end)))
        return words
