"""The assistant: a user's turn (from the STT) to a text LLM, its reply spoken by the TTS.

Kyutai's Unmute idea in one process: `Assistant.reply(user_text)` starts a `Reply`, which the
caller steps (`step`: one unit of work, an LLM piece or an 80 ms frame of speech) so that a live
loop can read the microphone between two units. The LLM's text goes to the TTS as it is written
(`ReplySpeech`). A reply that is cut short (barge-in) is `cancel`led at the sample the speaker
got to: the LLM stops, and the conversation keeps only the words that were spoken.

    assistant = Assistant(llm, tts, [voice], TtsSettings(temperature=0), system="Be brief.")
    reply = assistant.reply("What is the capital of France?")
    while (frame := reply.next_frame()) is not None:
        play(frame.pcm)
    reply.finish()  # the exchange goes into `assistant.messages`
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mimi_mlx.constants import SAMPLE_RATE

from .llm import TextModel
from .reply_speech import ReplySpeech, SpeechFrame
from .tts import TextToSpeech, TtsSettings


@dataclass
class SpokenWord:
    """A word of the reply as spoken: seconds from the start of the reply's speech."""

    text: str
    start: float
    end: float

    def to_dict(self, offset: float = 0.0) -> dict:
        return {
            "word": self.text,
            "start": round(self.start + offset, 3),
            "end": round(self.end + offset, 3),
        }


@dataclass
class ReplyTimings:
    """Seconds from the start of the reply (the end of the user's turn) to each milestone."""

    llm_first_token: float | None = None
    llm_done: float | None = None
    first_audio: float | None = None
    done: float | None = None

    def to_dict(self) -> dict:
        return {k: None if v is None else round(v, 4) for k, v in self.__dict__.items()}


@dataclass
class Reply:
    """One reply being written and spoken; step it, then `finish` or `cancel` it.

    Attributes:
        user: what the user said.
        text: what the LLM wrote so far.
        words: the words started in the frames produced so far, with their start times.
        samples: samples of speech produced so far.
        interrupted: cancelled before its end (barge-in).
    """

    assistant: Assistant
    user: str
    text: str = ""
    words: list[SpokenWord] = field(default_factory=list)
    samples: int = 0
    interrupted: bool = False
    timings: ReplyTimings = field(default_factory=ReplyTimings)

    def __post_init__(self):
        a = self.assistant
        self._started = time.perf_counter()
        self._pieces: Iterator[str] | None = iter(a.llm.stream(a.conversation(self.user)))
        self._speech = ReplySpeech(a.tts, a.voices, a.tts_settings)
        self._open = True

    def _since(self) -> float:
        return time.perf_counter() - self._started

    @property
    def done(self) -> bool:
        """Everything written was spoken (or the reply was cancelled)."""
        return self._speech.finished

    def step(self) -> SpeechFrame | None:
        """One unit of work: the next frame of speech if one can be made, else one more piece
        of the LLM's text (None then, and when the reply is done)."""
        frame = self._speech.pull()
        if frame is not None:
            return self._take(frame)
        self.write()
        return None

    def write(self) -> bool:
        """One more piece of the LLM's text; False once the LLM has finished."""
        if self._pieces is None:
            return False
        piece = next(self._pieces, None)
        if piece is None:
            self._pieces = None
            self._speech.end()
            self.timings.llm_done = self._since()
            return False
        if self.timings.llm_first_token is None:
            self.timings.llm_first_token = self._since()
        self.text += piece
        self._speech.push(piece)
        return True

    def next_frame(self) -> SpeechFrame | None:
        """Step until the next frame of speech; None when the reply is done."""
        while not self.done:
            frame = self.step()
            if frame is not None:
                return frame
        return None

    def _take(self, frame: SpeechFrame) -> SpeechFrame:
        if frame.pcm.size and self.timings.first_audio is None:
            self.timings.first_audio = self._since()
        for w in frame.words:  # a word lasts until the next one starts
            if self.words:
                self.words[-1].end = w.start
            self.words.append(SpokenWord(w.text, w.start, w.start))
        self.samples += len(frame.pcm)
        if self.words:
            self.words[-1].end = max(self.words[-1].start, self.samples / SAMPLE_RATE)
        return frame

    def spoken(self, played: int | None = None) -> list[SpokenWord]:
        """The words spoken in the first `played` samples (default: all produced)."""
        limit = (self.samples if played is None else played) / SAMPLE_RATE
        return [w for w in self.words if w.start < limit]

    def cancel(self, played: int) -> None:
        """Barge-in: stop the LLM and the speech; the conversation keeps the words spoken in
        the first `played` samples."""
        self.interrupted = True
        self._close(" ".join(w.text for w in self.spoken(played)))

    def finish(self) -> None:
        """The reply was spoken to its end: the conversation keeps it."""
        while not self.done:  # (the caller normally pulled every frame)
            self.step()
        self._close(self.text.strip())

    def _close(self, said: str) -> None:
        if not self._open:
            return
        self._open = False
        if self._pieces is not None:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()  # cancels the LLM (a server's response is closed)
            self._pieces = None
        self._speech.close()
        self.timings.done = self._since()
        self.assistant.messages += [
            {"role": "user", "content": self.user},
            {"role": "assistant", "content": said},
        ]


class Assistant:
    """A conversation with a text model, spoken by Kyutai's TTS.

    Args:
        llm: the text model (`MlxTextModel`, `ServerTextModel`).
        tts: the TTS (`TextToSpeech`).
        voices: the TTS voices (`load_voice`).
        tts_settings: how the TTS speaks.
        system: the system prompt (None: none).
    """

    def __init__(
        self,
        llm: TextModel,
        tts: TextToSpeech,
        voices: list[np.ndarray],
        tts_settings: TtsSettings,
        system: str | None = None,
    ):
        self.llm, self.tts, self.voices, self.tts_settings = llm, tts, voices, tts_settings
        self.system = system
        self.messages: list[dict] = []  # the exchanges so far (what was spoken)

    def conversation(self, user: str) -> list[dict]:
        """The messages the LLM gets for the user's next turn."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages + [{"role": "user", "content": user}]

    def reply(self, user: str) -> Reply:
        """Start answering the user's turn (the LLM starts on the first `step`)."""
        return Reply(self, user)
