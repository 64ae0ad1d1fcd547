"""Kyutai's TTS text feeding: a script cut into words, and the word-level state machine.

The TTS model does not read its text all at once: at each step it says whether the next step
starts a new word (`new_word`) or not (`pad`). On `new_word` the machine pops the next word and
feeds its tokens over the following steps; it also forces pads at the start (`initial_padding`),
after a `<break time="0.5s"/>`, and forces a new word after `max_padding` pads in a row. With a
second text stream (`second_stream_ahead`), the tokens of the word `second_stream_ahead` words
ahead go into that stream, and both tokens travel as one: `(second + 1) * card + first`.

The same rules as Kyutai's `moshi/models/tts.py` (`script_to_entries`, `StateMachine`), written
for our generator; `tests/test_tts_script.py` compares them over many random scripts.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# <break time="0.5s"/> (a pause of about that long), or a run of white space
EVENT = re.compile(r"(?:<break\s+time=\"([0-9]+(?:.[0-9]*)?)s\"\s*/?>)|(?:\s+)")
REPLACEMENTS = (("’", "'"), (":", " "), ("(", ""), (")", ""))


@dataclass(frozen=True)
class TokenIds:
    """Special text tokens of Kyutai's TTS; `card` (text_card + 1) muxes the two streams."""

    card: int
    new_word: int = 0
    pad: int = 3
    main: int = 1  # turn of the main speaker
    other: int = 2  # turn of the other speaker
    zero: int = -1  # embeds to zero


@dataclass
class Entry:
    """One word: its tokens (speaker token first at a turn change), its text, and pads to force
    after it (a break is an entry without tokens)."""

    tokens: list[int]
    text: str
    padding: int = 0


@dataclass
class State:
    """Where one text stands: words left, tokens being fed, padding counters, timings."""

    entries: deque[Entry]
    remaining_padding: int
    forced_padding: int
    queued: deque[int] = field(default_factory=deque)
    lookahead_queued: deque[int] = field(default_factory=deque)
    end_step: int | None = None  # the step at which the model asked for a word past the last
    consumption_times: list[int] = field(default_factory=list)
    transcript: list[tuple[str, int]] = field(default_factory=list)  # (word, step)

    def tokens_ahead(self, lookahead: int) -> list[int]:
        """Tokens of the `lookahead`-th word still queued that has tokens (breaks skipped)."""
        for entry in self.entries:
            if entry.tokens:
                lookahead -= 1
                if lookahead == 0:
                    return entry.tokens
        return []


@dataclass(frozen=True)
class StateMachine:
    """Turns the model's text predictions into the text it is fed (Kyutai's `StateMachine`).

    Args:
        token_ids: the special tokens.
        second_stream_ahead: words of lookahead in the second text stream (0: no second stream).
        max_padding: pads in a row after which a new word is forced.
        initial_padding: pads forced at the start.
    """

    token_ids: TokenIds
    second_stream_ahead: int = 0
    max_padding: int = 6
    initial_padding: int = 2

    def new_state(self, entries: Sequence[Entry]) -> State:
        return State(deque(entries), self.initial_padding, self.initial_padding)

    def process(self, step: int, state: State, token: int) -> int:
        """The model predicted `token` at `step`: return the text token to feed it next."""
        ids = self.token_ids
        if token != ids.new_word:
            token = ids.pad
        if state.queued or state.forced_padding > 0:
            token = ids.pad  # a word is still being fed, or pads are forced
        elif state.remaining_padding <= 0:
            token = ids.new_word  # too many pads in a row
        if token == ids.new_word:
            token = self._pop_word(step, state)

        if token == ids.pad:
            state.remaining_padding = max(state.remaining_padding - 1, 0)
            state.forced_padding = max(state.forced_padding - 1, 0)
            output = state.queued.popleft() if state.queued else ids.pad
        else:
            output = ids.new_word
        if not self.second_stream_ahead:
            return output
        second = -1
        if output == ids.new_word:  # the word marker goes to the second stream
            second = ids.new_word
            output = state.queued.popleft() if state.queued else ids.pad
        elif state.lookahead_queued:
            second = state.lookahead_queued.popleft()
        return (second + 1) * ids.card + output

    def _pop_word(self, step: int, state: State) -> int:
        """The model asks for a word: start feeding the next one; returns the token to act on."""
        ids = self.token_ids
        if not state.entries:  # past the last word: the end
            if state.end_step is None:
                state.end_step = step
                if self.second_stream_ahead:
                    return ids.new_word
            return ids.pad
        entry = state.entries.popleft()
        state.consumption_times.append(step)
        state.forced_padding = entry.padding
        if not entry.tokens:  # a break: pads only
            return ids.pad
        state.transcript.append((entry.text, step))
        state.queued.extend(entry.tokens)
        if self.second_stream_ahead:
            state.lookahead_queued.extend(state.tokens_ahead(self.second_stream_ahead))
        state.remaining_padding = self.max_padding
        return ids.new_word


def script_entries(
    encode: Callable[[str], list[int]],
    token_ids: TokenIds,
    frame_rate: float,
    script: Sequence[str],
    multi_speaker: bool = True,
    padding_between: int = 0,
) -> list[Entry]:
    """Cut a script into words (Kyutai's `script_to_entries`).

    Args:
        encode: the text tokenizer (text -> token ids).
        token_ids: the special tokens.
        frame_rate: model steps per second (12.5), for `<break time="...s"/>`.
        script: one string per turn, starting with the main speaker (an empty first turn starts
            with the other one).
        multi_speaker: the model marks turns with speaker tokens.
        padding_between: pads forced after each word (1 articulates a bit better).
    """
    speakers = (token_ids.main, token_ids.other)
    entries: list[Entry] = []
    last_speaker = None
    for turn, line in enumerate(script):
        first = True
        for word, pause in _events(line):
            if pause is not None:
                entries.append(Entry([], "", int(round(pause * frame_rate))))
                continue
            tokens = list(encode(word))
            if first:  # a new turn: mark its speaker if it changes
                speaker = turn % len(speakers)
                if multi_speaker and last_speaker != speaker:
                    last_speaker = speaker
                    tokens.insert(0, speakers[speaker])
                first = False
            padding = max(0, padding_between + len(tokens) - 1) if padding_between > 0 else 0
            entries.append(Entry(tokens, word, padding))
    return entries


def _events(line: str) -> list[tuple[str, float | None]]:
    """A turn's words `(word, None)` and breaks `("", seconds)`, in order."""
    for old, new in REPLACEMENTS:
        line = line.replace(old, new)
    events: list[tuple[str, float | None]] = []
    while line:
        match = EVENT.search(line)
        if match is None:
            break
        word, line = line[: match.start()], line[match.end() :]
        if word:
            events.append((word, None))
        if match.group(1):
            events.append(("", float(match.group(1))))
    if line:
        events.append((line, None))
    return events
