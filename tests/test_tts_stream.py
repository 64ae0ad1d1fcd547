"""Text pushed word by word (`SpeechStream`) speaks exactly as the whole text at once
(`TextToSpeech.frames`/`audio`): the same codes, word timings and audio, greedy and sampled with
a seed, whether the words come one at a time, in bursts or all before the first step; and the
speech starts before the text has ended."""

from __future__ import annotations

import numpy as np
import pytest

from moshi_mlx import load_checkpoint
from moshi_mlx.jobs.tts import TextToSpeech, TtsSettings, load_voice
from moshi_mlx.jobs.tts_stream import SpeechStream

TEXT = 'Hello there, this is a test <break time="0.4s"/> of streaming: words, one by one!'


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    from moshi_mlx.testing.tiny import make_tiny_tts_checkpoint

    folder = make_tiny_tts_checkpoint(tmp_path_factory.mktemp("tts") / "ckpt", seed=3)
    return TextToSpeech(load_checkpoint(folder))


def whole(tts, voice, settings):
    frames = list(tts.frames(TEXT, [voice], settings))
    tts.mimi.reset_decoder()
    pcm = [tts.decode(f) for f in frames if f.codes.size]
    tts.mimi.reset_decoder()
    return frames, np.concatenate(pcm)


def streamed(tts, voice, settings, pieces):
    """Push the pieces one after the other, running every step possible in between; returns the
    frames, the audio and how many frames came before the end of the text."""
    tts.mimi.reset_decoder()
    stream = SpeechStream(tts, [voice], settings)
    frames = []
    for piece in pieces:
        stream.push(piece)
        frames += list(stream.frames())
    before_end = sum(1 for f in frames if f.codes.size)
    stream.end()
    frames += list(stream.frames())
    assert stream.done and not stream.ready()
    pcm = np.concatenate([stream.decode(f) for f in frames if f.codes.size])
    tts.mimi.reset_decoder()
    return frames, pcm, before_end


def by_words(text):
    return text.split()


def in_bursts(text):
    words = text.split()
    return [" ".join(words[i : i + 3]) for i in range(0, len(words), 3)]


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (0.6, 5)])
@pytest.mark.parametrize("split", [by_words, in_bursts, lambda t: [t]])
def test_pushed_words_speak_as_the_whole_text(tts, temperature, seed, split):
    voice = load_voice("tiny", tts)
    settings = TtsSettings(temperature=temperature, seed=seed)
    frames, pcm = whole(tts, voice, settings)
    got, got_pcm, before_end = streamed(tts, voice, settings, split(TEXT))
    assert len(got) == len(frames) > 20
    for a, b in zip(got, frames, strict=True):
        assert a.index == b.index
        np.testing.assert_array_equal(a.codes, b.codes)
        assert [(w.text, w.start) for w in a.words] == [(w.text, w.start) for w in b.words]
    np.testing.assert_array_equal(got_pcm, pcm)
    if split is by_words:
        assert before_end > 0  # speech started before the text ended


def test_a_stream_waits_for_the_lookahead_words(tts):
    voice = load_voice("tiny", tts)
    stream = SpeechStream(tts, [voice], TtsSettings(temperature=0.0))
    stream.push("One")
    steps = 0
    while stream.ready():  # the forced initial pads only: then it needs two more words
        stream.step()
        steps += 1
    assert steps == 2 and not stream.done
    stream.push("two three")
    assert stream.ready()
    stream.end()
    list(stream.frames())
    assert stream.done
    with pytest.raises(ValueError, match="ended"):
        stream.push("four")
