"""`SttStream` rows that start apart, on the tiny STT checkpoint: a stream restarted on a row of
a running batch, or given a row added to it, gets exactly the tokens and words `transcribe`
gives its audio alone, while the other rows go on unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from moshi_app import make_speech

from moshi_mlx import load_checkpoint
from moshi_mlx.jobs.stt import SttSettings, SttStream
from moshi_mlx.jobs.transcribe import padded_frames, transcribe_files


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    return load_checkpoint(make_tiny_checkpoint(tmp_path_factory.mktemp("stt") / "c", kind="stt"))


LONG = "Hello, this is the first and longest recording, with more words to last while others go."


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stt_rows")
    return [
        make_speech(folder / "a.wav", LONG),
        make_speech(folder / "b.wav", "A second one, shorter."),
        make_speech(folder / "c.wav", "And a third."),
    ]


@pytest.fixture(scope="module")
def alone(ckpt, wavs):
    """Each file transcribed alone (`transcribe`), with the voice-activity heads."""
    return [transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [w], vad=True)[0] for w in wavs]


class Row:
    """One file streamed on a row from a given step: its frames in, its steps and words out."""

    def __init__(self, path, settings):
        self.frames = list(padded_frames(path, settings))
        self.next, self.tokens, self.words, self.turns, self.done = 0, [], [], [], False
        self.delay = settings.audio_delay_seconds

    def take(self, stream: SttStream, b: int, step) -> None:
        if step is None or self.done:
            return
        assert step.index == len(self.tokens)
        self.tokens.append(step.token)
        self.words += step.words
        if step.turn_ended:  # (as `transcribe` reads the voice-activity head)
            self.turns.append(max(0.0, step.heard - self.delay))
        if len(self.tokens) == len(self.frames):
            self.words += stream.close_row(b)
            self.done = True


def run(stream: SttStream, rows: list, events: dict, steps: int, rng) -> None:
    """Step the batch: `events[t]` (a callable) changes its rows before step t; a row starting
    gets noise (ignored), a row past its file silence, a free row (None) noise."""
    for t in range(steps):
        if t in events:
            events[t]()
        frames = []
        for b in range(stream.batch_size):
            row = rows[b] if b < len(rows) else None
            if row is None or b in stream.starting or row.next >= len(row.frames):
                frames.append(rng.uniform(-0.3, 0.3, 1920).astype(np.float32))
                if row is not None and b not in stream.starting:
                    frames[-1][:] = 0.0
                continue
            frames.append(row.frames[row.next])
            row.next += 1
        for result in stream.step(np.stack(frames)):
            for b, step in enumerate(result):
                if b < len(rows) and rows[b] is not None:
                    rows[b].take(stream, b, step)
    for result in stream.flush():
        for b, step in enumerate(result):
            if b < len(rows) and rows[b] is not None:
                rows[b].take(stream, b, step)


def assert_same(row: Row, want, vad: bool = False) -> None:
    assert row.done
    assert row.tokens == want.tokens
    assert row.words == want.words and want.words
    if vad:
        assert row.turns == want.end_of_turn


def test_a_row_restarted_mid_batch_equals_its_file_alone(ckpt, wavs, alone):
    settings = SttSettings.of(ckpt.lm)
    stream = SttStream(ckpt, batch_size=2, vad=True)
    a, noise_row, b = Row(wavs[0], settings), Row(wavs[2], settings), Row(wavs[1], settings)
    rows = [a, noise_row]

    def restart():
        stream.restart_row(1)
        rows[1] = b

    run(stream, rows, {13: restart}, len(a.frames) + 2, np.random.default_rng(0))
    assert_same(a, alone[0], vad=True)
    assert_same(b, alone[1], vad=True)
    assert any(r.turns for r in (a, b)), "the heads ended a turn"
    assert len(b.frames) + 13 < len(a.frames)  # it really ran inside a's stream
    assert not noise_row.done  # its stream was cut by the restart


def test_rows_added_and_dropped_equal_their_files_alone(ckpt, wavs, alone):
    settings = SttSettings.of(ckpt.lm)
    stream = SttStream(ckpt, batch_size=1)
    a, b, c = (Row(w, settings) for w in wavs)
    rows = [a]

    def add(row):
        def event():
            stream.resize(len(rows) + 1)
            rows.append(row)

        return event

    def drop():
        assert b.done
        stream.resize(1)
        rows.pop()

    events = {5: add(b), 5 + len(b.frames) + 3: drop, 5 + len(b.frames) + 6: add(c)}
    assert 5 + len(b.frames) + 6 + len(c.frames) < len(a.frames)
    run(stream, rows, events, len(a.frames) + 2, np.random.default_rng(1))
    for row, want in zip((a, b, c), alone, strict=True):
        assert_same(row, want)


def test_restart_before_the_first_step_is_the_plain_batch(ckpt, wavs, alone):
    settings = SttSettings.of(ckpt.lm)
    stream = SttStream(ckpt, batch_size=2)
    stream.restart_row(1)
    assert stream.starting == []
    rows = [Row(wavs[1], settings), Row(wavs[2], settings)]
    run(stream, rows, {}, len(rows[0].frames) + 1, np.random.default_rng(2))
    assert_same(rows[0], alone[1])
    assert_same(rows[1], alone[2])
    assert stream.lm.transformer._starts is None  # the default path throughout
