"""Turn-taking: when has the user finished speaking? Decided from the STT's steps.

With the voice-activity heads (Kyutai's PyTorch and `-candle` STT repos), the turn ends on the
end-of-turn head (head 2, class 0 above 0.5 after some words: Kyutai's semantic VAD, as
Unmute uses it). Kyutai's `-mlx` repos lack the heads: the turn then ends after
`SILENCE_SECONDS` without a new text piece (the text lags the audio by the model's delay, so
this is a pause of that long in the speech). The end of the input ends a turn too.

A live caller also tells the taker, frame by frame, whether the microphone heard a voice
(`hear`): a turn then needs the user's voice (words the STT writes for noise or silence start
no reply) and also ends after `SILENCE_SECONDS` of quiet audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mimi_mlx.constants import FRAME_SECONDS

from ..formats.words import Word
from .stt import SttStep, SttStream

SILENCE_SECONDS = 1.0  # a pause that ends the turn without the heads
HEAD, SILENCE, END_OF_INPUT = "end-of-turn head", "silence", "end of input"


@dataclass
class UserTurn:
    """What the user said in one turn.

    Attributes:
        text: the transcript (the turn's tokens decoded, as `transcribe` decodes a file's).
        words: its words with times (seconds of the input).
        heard: seconds of the input the STT had heard when the turn ended.
        rule: what ended it (`HEAD`, `SILENCE` or `END_OF_INPUT`).
    """

    text: str
    words: list[Word] = field(default_factory=list)
    heard: float = 0.0
    rule: str = END_OF_INPUT

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "words": [w.to_dict() for w in self.words],
            "heard": round(self.heard, 3),
            "ended_by": self.rule,
        }


class TurnTaker:
    """Collects one stream's STT steps into user turns.

    Args:
        stream: the STT stream the steps come from (row 0); with `vad` its heads decide.
        silence_seconds: the pause that ends a turn without the heads.
    """

    def __init__(self, stream: SttStream, silence_seconds: float = SILENCE_SECONDS):
        self.stream = stream
        self.rule = HEAD if stream.vad else SILENCE
        self.silence_steps = max(1, round(silence_seconds / FRAME_SECONDS))
        self.hearing = False  # `hear` was called: the audio's level counts too
        self._quiet = 0  # quiet frames in a row
        self.reset()

    def reset(self) -> None:
        """Forget the turn in progress (the stream was reset)."""
        self._tokens: list[int] = []
        self._words: list[Word] = []
        self._last_piece: int | None = None  # step index of the last text piece
        self._voiced = False  # (with `hear`) the microphone heard a voice in this turn

    @property
    def speaking(self) -> bool:
        """The user has said something in this turn."""
        return self._last_piece is not None

    def hear(self, voiced: bool) -> None:
        """Live: whether the frame just given to the STT holds a voice (its level)."""
        self.hearing = True
        self._voiced = self._voiced or voiced
        self._quiet = 0 if voiced else self._quiet + 1

    def add(self, step: SttStep) -> UserTurn | None:
        """Take one step; the turn it ended, if any."""
        self._tokens.append(step.token)
        self._words += step.words
        if step.piece is not None:
            self._last_piece = step.index
        if self.hearing and not self._voiced:
            if self._quiet >= self.silence_steps:
                self.reset()  # what the STT wrote without a voice is no turn
            return None
        if self._last_piece is None:
            return None
        if self.hearing and self._quiet >= self.silence_steps:
            return self._end(step.heard, SILENCE)
        if self.rule == HEAD:
            ended = step.turn_ended
        else:
            ended = step.index - self._last_piece >= self.silence_steps
        return self._end(step.heard, self.rule) if ended else None

    def finish(self, heard: float) -> UserTurn | None:
        """The input ended (after `SttStream.finish`'s steps went through `add`)."""
        return self._end(heard, END_OF_INPUT) if self._tokens else None

    def _end(self, heard: float, rule: str) -> UserTurn | None:
        self._words += self.stream.close_row(0)  # the last word, open until now
        text = self.stream.tokenizer.decode(self._tokens).strip()
        turn = UserTurn(text, self._words, heard, rule) if self._last_piece is not None else None
        self.reset()
        return turn
