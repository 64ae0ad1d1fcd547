"""The TTS word-level state machine and script cutting against Kyutai's (`moshi.models.tts`)
over many random scripts (breaks, long words, accents, punctuation, empty lines, turns) and
random model predictions."""

from __future__ import annotations

import random

import pytest

from moshi_mlx.jobs.tts_script import StateMachine, TokenIds, script_entries

WORDS = [
    "Hello,", "world.", "the", "antidisestablishmentarianism", "été", "naïve", "Ça", "va?",
    "l’école", "(aside)", "note:", "x", "42", "ünïcödé", "—", "!", "don't", "self-aware",
]  # fmt: skip
BREAKS = [  # durations that round up and down to steps at 12.5 Hz
    '<break time="0.3s"/>',
    '<break time="0.7s" />',
    '<break time="0.5s"/>',
    '<break time="1s"/>',
    '<break time="0.24s" />',
    '<break time="2.0s">',
]


class Tokenizer:
    """A deterministic stand-in for SentencePiece: 1-4 tokens per word, sometimes token 0
    (SentencePiece's unknown piece, which is also the new-word id) to reach that corner."""

    def encode(self, word: str) -> list[int]:
        codes = [(ord(c) * 7 + i) % 57 for i, c in enumerate(word)]
        return [codes[i] if codes[i] % 11 else 0 for i in range(0, len(codes), 3)][:4]


def random_script(rng: random.Random) -> list[str]:
    turns = []
    for _ in range(rng.randint(1, 4)):
        parts = []
        for _ in range(rng.randint(0, 12)):
            r = rng.random()
            parts.append(rng.choice(BREAKS) if r < 0.15 else rng.choice(WORDS))
            parts.append(rng.choice([" ", "  ", "\n", "\t", ""]) if r < 0.15 else " ")
        turns.append("".join(parts))
    if rng.random() < 0.2:
        turns.insert(0, "")  # start with the other speaker
    return turns


def kyutai_run(ids, script, settings, predictions):
    from moshi.models import tts

    entries = tts.script_to_entries(
        Tokenizer(), tts.TokenIds(ids.card), 12.5, script,
        multi_speaker=settings["multi_speaker"], padding_between=settings["padding_between"],
    )  # fmt: skip
    machine = tts.StateMachine(
        tts.TokenIds(ids.card), settings["ahead"], settings["max_padding"], settings["initial"]
    )
    state = machine.new_state(entries)
    outputs = [machine.process(step, state, t)[0] for step, t in enumerate(predictions)]
    words = [(e.tokens, e.text, e.padding) for e in entries]
    return words, outputs, state.end_step, state.consumption_times, state.transcript


def our_run(ids, script, settings, predictions):
    entries = script_entries(
        Tokenizer().encode, ids, 12.5, script,
        multi_speaker=settings["multi_speaker"], padding_between=settings["padding_between"],
    )  # fmt: skip
    machine = StateMachine(ids, settings["ahead"], settings["max_padding"], settings["initial"])
    state = machine.new_state(entries)
    outputs = [machine.process(step, state, t) for step, t in enumerate(predictions)]
    words = [(e.tokens, e.text, e.padding) for e in entries]
    return words, outputs, state.end_step, state.consumption_times, state.transcript


@pytest.mark.parametrize("seed", range(4))
def test_state_machine_matches_kyutai_on_random_scripts(seed):
    rng = random.Random(seed)
    ids = TokenIds(card=58)
    ended = 0
    for _ in range(150):
        script = random_script(rng)
        settings = {
            "ahead": rng.choice([0, 2, 2, 1]),
            "max_padding": rng.choice([3, 6, 8]),
            "initial": rng.choice([0, 2, 3]),
            "multi_speaker": rng.random() < 0.8,
            "padding_between": rng.choice([0, 1, 1, 2]),
        }
        p_word = rng.choice([0.1, 0.3, 0.6])  # the model's eagerness to start words
        predictions = [
            0 if rng.random() < p_word else rng.choice([3, 3, 5, 57])
            for _ in range(rng.randint(1, 160))
        ]
        ours = our_run(ids, script, settings, predictions)
        assert ours == kyutai_run(ids, script, settings, predictions), (script, settings)
        ended += ours[2] is not None
    assert ended > 30  # many scripts reach their end within the predictions
