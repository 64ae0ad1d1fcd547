"""Kyutai's TTS fed text as it comes: words pushed one by one, audio out as soon as it can be.

Kyutai's TTS reads its text word by word: at each step the model asks for the next word or
not (`tts_script.StateMachine`), so speech can start as soon as the first words are known and
the rest may arrive while it speaks (behind an LLM, say). A step may run without waiting for
more text unless the machine could pop a word this step: it can only when no word is being fed
and no pad is forced, and then it needs the next word and the `second_stream_ahead` words after
it (the lookahead text stream), or the end of the text. This is the rule of Kyutai's streaming
scripts (`tts_pytorch_streaming.py`: step while more than `second_stream_ahead` words wait),
relaxed to the steps that cannot pop. So at any temperature with a seed, a text pushed word by
word gives the same steps, tokens and audio as the whole text given at once
(`tests/test_tts_stream.py`); only when the steps run differs.

    stream = SpeechStream(tts, [voice], TtsSettings(temperature=0))
    stream.push("Hello")        # any time, any number of words
    for frame in stream.frames():  # every step possible with the text so far
        pcm = stream.decode(frame)
    stream.end()                # no more text: frames() then runs to the end
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from mimi_mlx.constants import FRAME_RATE

from .generate import MoshiGenerator
from .tts_script import Entry, StateMachine, script_entries

if TYPE_CHECKING:
    from .tts import TextToSpeech, TTSFrame, TtsSettings

OPEN_BREAK = re.compile(r"<break\b[^>]*$")  # a `<break time="..."/>` not closed yet


@dataclass
class Step:
    """One generation step of an utterance."""

    step: int
    text: int  # the text token fed to the model (both streams muxed)
    codes: np.ndarray | None  # (num_codebooks,) audio of time `step - max_delay` (-1: none)
    words: list[tuple[str, int]]  # words (text, step) whose tokens start at this step
    end_step: int | None  # once the last word is done, the step the model asked for another


class Utterance:
    """One utterance stepped through the word state machine, its words added as they come
    (Kyutai's `TTSModel.generate` when they are all added before the first step).

    Args:
        tts: the loaded TTS.
        gen: its generator (`TextToSpeech.generator`), reset here.
        settings: padding and the end (`final_padding`).
        seed: the random stream's seed (None: `settings.seed`).
    """

    def __init__(self, tts: TextToSpeech, gen: MoshiGenerator, settings: TtsSettings, seed=None):
        self.machine = StateMachine(
            tts.token_ids, tts.second_stream_ahead, settings.max_padding, settings.initial_padding
        )
        self.state = self.machine.new_state([])
        self.gen, self.settings = gen, settings
        self.delay_steps = tts.delay_steps
        gen.reset(settings.seed if seed is None else seed)
        self.index = 0  # the next step
        self.ended = False  # no more words will come

    def add(self, entries: list[Entry]) -> None:
        if self.ended:
            raise ValueError("the text has ended: no more words can be added")
        self.state.entries.extend(entries)

    def end(self) -> None:
        self.ended = True

    @property
    def done(self) -> bool:
        """The end's silence is generated: nothing more to step."""
        end = self.state.end_step
        return (
            end is not None and self.index >= end + self.delay_steps + self.settings.final_padding
        )

    def ready(self) -> bool:
        """The next step can run without more text (see the module's docstring)."""
        state = self.state
        if self.done:
            return False
        if self.ended or state.queued or state.forced_padding > 0:
            return True
        with_tokens = sum(1 for e in state.entries if e.tokens)
        return with_tokens > self.machine.second_stream_ahead

    def step(self) -> Step:
        """Run one step (call only when `ready()`)."""
        state, step = self.state, self.index

        def feed(text: mx.array) -> mx.array:
            return mx.array([self.machine.process(step, state, int(text[0]))], dtype=mx.int32)

        silent = [step < d + self.delay_steps for d in self.gen.audio_delays]
        words_before = len(state.transcript)
        text, frame = self.gen.step(None, text_hook=feed, silent=silent)
        codes = None if frame is None else np.array(frame[0])
        self.index += 1
        return Step(step, int(text[0]), codes, state.transcript[words_before:], state.end_step)


class SpeechStream:
    """Text pushed word by word, Mimi frames (with their word timings) and audio out.

    One utterance: a stream's text should fit the model's attention context (the ring caches
    keep it bounded in memory however long it runs; `TextToSpeech.frames` cuts long texts into
    sentences instead).

    Args:
        tts: the loaded TTS (its Mimi decodes `decode`'s frames; one stream at a time uses it).
        voices: 1 to 5 voice embeddings (`load_voice`).
        settings: how to speak.
        seed: the utterance's seed (default `settings.seed`).
    """

    def __init__(
        self,
        tts: TextToSpeech,
        voices: list[np.ndarray],
        settings: TtsSettings,
        seed: int | None = None,
        gen: MoshiGenerator | None = None,
    ):
        self.tts, self.settings = tts, settings
        self.utterance = Utterance(tts, gen or tts.generator(voices, settings), settings, seed)
        self._pending_text = ""
        self._first_word = True
        self._words: list = []  # words started, not yet given with a frame
        self.frame_index = 0  # the next audio frame
        self._start = tts.delay_steps + tts.lm.cfg.max_delay  # the step of the first frame
        tts.mimi.reset_decoder()

    # -- text in ---------------------------------------------------------------------------------
    def push(self, text: str) -> None:
        """Add whole words (a `<break time="..."/>` may come in pieces)."""
        self._pending_text = f"{self._pending_text} {text}".strip()
        if OPEN_BREAK.search(self._pending_text):
            return
        self._flush_text()

    def _flush_text(self) -> None:
        if not self._pending_text:
            return
        entries = script_entries(
            self.tts.tokenizer.encode,
            self.tts.token_ids,
            FRAME_RATE,
            [self._pending_text],
            self._first_word,  # the speaker's token goes before the first word only
            self.settings.padding_between,
        )
        self._pending_text = ""
        if entries:
            self._first_word = False
        self.utterance.add(entries)

    def end(self) -> None:
        """No more text: the stream runs to the end of the speech."""
        self._flush_text()
        self.utterance.end()

    @property
    def done(self) -> bool:
        return self.utterance.done

    def ready(self) -> bool:
        return self.utterance.ready()

    # -- frames out ------------------------------------------------------------------------------
    def step(self) -> TTSFrame | None:
        """One step (when `ready()`): its audio frame once the speech has started, else None."""
        from ..formats.words import Word
        from .tts import TTSFrame

        st = self.utterance.step()
        self._words += [Word(w, s / FRAME_RATE) for w, s in st.words]  # audio frame s
        if st.codes is None or st.step < self._start:
            return None
        index = self.frame_index
        ready = [w for w in self._words if w.start * FRAME_RATE < index + 1]
        self._words = self._words[len(ready) :]
        self.frame_index += 1
        return TTSFrame(st.codes, index, ready)

    def frames(self, limit: int | None = None) -> Iterator[TTSFrame]:
        """Every frame that can be generated with the text pushed so far (all of them once the
        text has ended), at most `limit`; words after the last frame come in a frame without
        codes."""
        count = 0
        while self.ready() and (limit is None or count < limit):
            frame = self.step()
            if frame is not None:
                count += 1
                yield frame
        if self.done and self._words:
            from .tts import TTSFrame

            yield TTSFrame(np.zeros(0, np.int32), self.frame_index, self._words)
            self._words = []

    def decode(self, frame: TTSFrame) -> np.ndarray:
        """One frame's audio (1920,) float32 in [-1, 1] (Mimi's streaming decoder)."""
        return self.tts.decode(frame)
