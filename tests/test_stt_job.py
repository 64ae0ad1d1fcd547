"""The STT job on the tiny random STT checkpoint: batches, streams of samples, long streams,
words and subtitles."""

from __future__ import annotations

import re

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from moshi_app import RATE, make_speech

from moshi_mlx import load_checkpoint, load_model
from moshi_mlx.formats.subtitles import LINE_CHARS, cues, to_srt, to_vtt
from moshi_mlx.formats.words import Word, WordBuilder
from moshi_mlx.jobs.stt import SttStream
from moshi_mlx.jobs.transcribe import padded_frames, transcribe_files
from moshi_mlx.model.config import LmConfig
from moshi_mlx.testing.tiny import TINY_STT


@pytest.fixture(scope="module")
def stt_checkpoint(tmp_path_factory):
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_stt") / "ckpt", kind="stt")


@pytest.fixture(scope="module")
def ckpt(stt_checkpoint):
    return load_checkpoint(stt_checkpoint)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    """Three files of different lengths, rates and channel counts."""
    folder = tmp_path_factory.mktemp("stt_audio")
    a = make_speech(folder / "a.wav", "Hello, this is the first recording of the batch.")
    b = make_speech(folder / "b.wav", "A short one.")
    c = folder / "c.flac"  # 44.1 kHz stereo: mixed down and resampled
    speech, _ = sf.read(str(make_speech(folder / "c24.wav", "And a third, in stereo.")))
    import soxr

    stereo = soxr.resample(speech, RATE, 44100)
    sf.write(str(c), np.stack([stereo, 0.5 * stereo], axis=1), 44100)
    return [a, b, c]


def test_a_batch_of_files_of_different_lengths_equals_each_file_alone(ckpt, wavs):
    together = transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, wavs, batch_size=3)
    pairs = transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, wavs, batch_size=2)
    lengths = {len(r.tokens) for r in together}
    assert len(lengths) == 3  # really different lengths
    for i, wav in enumerate(wavs):
        (alone,) = transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [wav])
        settings_frames = sum(1 for _ in padded_frames(wav, _settings(ckpt)))
        assert len(alone.tokens) == settings_frames
        for other in (together[i], pairs[i]):
            assert other.tokens == alone.tokens
            assert other.words == alone.words and other.text == alone.text
        assert alone.words, "the tiny model writes words"
        assert alone.text == ckpt.tokenizer.decode(alone.tokens).strip()


def _settings(ckpt):
    from moshi_mlx.jobs.stt import SttSettings

    return SttSettings.of(ckpt.lm)


def test_feeding_samples_in_any_chunks_equals_the_file_mode(ckpt, wavs):
    """The live path (samples as they come, prefix added by the stream, tail at `finish`)."""
    (file_mode,) = transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [wavs[0]], vad=True)
    audio, _ = sf.read(str(wavs[0]), dtype="float32")
    stream = SttStream(ckpt.lm, ckpt.mimi, ckpt.tokenizer, vad=True)
    rng = np.random.default_rng(0)
    steps, start = [], 0
    while start < len(audio):
        n = int(rng.integers(1, 5000))
        steps += stream.feed(audio[start : start + n])
        start += n
    tail, closed = stream.finish()
    steps += tail
    assert [s[0].token for s in steps] == file_mode.tokens
    words = [w for s in steps for w in s[0].words] + closed[0]
    assert words == file_mode.words
    assert all(0 <= s[0].end_of_turn <= 1 for s in steps)
    ended = [s[0].heard - 0.5 for s in steps if s[0].turn_ended]
    assert ended and [max(0.0, t) for t in ended] == pytest.approx(file_mode.end_of_turn)


def test_a_long_stream_runs_in_bounded_memory(stt_checkpoint):
    """Many times the model's context (ring cache) and Mimi's, with flat memory."""
    ck = load_checkpoint(stt_checkpoint)
    small = LmConfig.from_dict({**TINY_STT, "context": 20, "model_type": "stt"})
    lm = load_model(stt_checkpoint, config=small)
    stream = SttStream(lm, ck.mimi, ck.tokenizer)
    rng = np.random.default_rng(1)
    memory = []
    for i in range(900):
        stream.step(0.1 * rng.standard_normal((1, 1920)).astype(np.float32))
        if i % 150 == 149:
            mx.clear_cache()
            memory.append(mx.get_active_memory())
    stream.flush()
    print("active memory every 150 steps:", memory)
    assert stream.steps == 900
    assert max(memory[2:]) <= memory[1] * 1.01 + 64 * 1024  # flat once the rings are full


def test_words_from_pieces_with_timestamps(ckpt):
    tok = ckpt.tokenizer
    first, second = tok.encode("hello"), tok.encode("fox")
    assert len(first) >= 1 and len(second) >= 1
    pad, eop = 3, 0
    # step times 0.08 apart; offset 0.5 s (the text delay)
    seq = [pad] * 10 + [eop] + first + [pad] * 3 + [eop] + second + [pad] * 40
    builder = WordBuilder(tok, offset=0.5)
    words = []
    for i, t in enumerate(seq):
        words += builder.add(t, (i + 1) * 0.08)
    words += builder.finish((len(seq) + 1) * 0.08)
    assert [w.text for w in words] == ["hello", "fox"]
    start1 = 12 * 0.08 - 0.5  # the first piece is token 11: heard up to 12 frames
    assert words[0].start == pytest.approx(start1)
    end1 = (12 + len(first) + 3) * 0.08 - 0.5  # the next end-of-padding token
    assert words[0].end == pytest.approx(end1)
    start2 = (12 + len(first) + 4) * 0.08 - 0.5
    assert words[1].start == pytest.approx(start2)
    assert words[1].end == pytest.approx(start2 + 1.0)  # no end marker: one second at most


def test_subtitles_do_not_overlap_and_keep_lines_short():
    words = [Word(f"word{i:02d}", 0.3 * i, 0.3 * i + 0.25) for i in range(40)]
    words += [Word("after", 20.0, 20.2), Word("pause", 20.3, 20.5)]
    cs = cues(words)
    assert len(cs) > 3
    for (a, b, text), nxt in zip(cs, cs[1:] + [(1e9, 0, "")], strict=True):
        assert a < b <= nxt[0]
        assert all(len(line) <= LINE_CHARS for line in text.splitlines())
        assert len(text.splitlines()) <= 2
    assert cs[-1][2] == "after pause" and cs[-1][0] == 20.0
    srt = to_srt(words)
    assert srt.startswith("1\n00:00:00,000 --> ")
    assert re.search(r"\n\d+\n00:00:20,000 --> 00:00:20,\d{3}\nafter pause\n", srt)
    vtt = to_vtt(words)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")


class _BurstMicrophone:
    """A microphone whose frames come in bursts of `burst` (a model far behind real time)."""

    def __init__(self, audio: np.ndarray, burst: int):
        from types import SimpleNamespace

        n = len(audio) // 1920
        self.frames = [audio[i * 1920 : (i + 1) * 1920] for i in range(n)]
        self.burst, self.ready = burst, 0
        self.device = SimpleNamespace(name="burst")
        self.capture = SimpleNamespace(pace=SimpleNamespace(count=n))
        self.active = True
        self.dropped = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def frames_waiting(self) -> int:
        if self.ready == 0:  # the next burst
            self.ready = min(self.burst, len(self.frames))
        return self.ready

    def drop_frames(self, keep: int = 1) -> int:
        n = max(0, self.frames_waiting() - keep)
        self.frames, self.ready, self.dropped = self.frames[n:], self.ready - n, self.dropped + n
        return n

    def read_frame(self):
        if not self.frames_waiting():
            return None
        self.ready -= 1
        return self.frames.pop(0)

    def stats(self) -> dict:
        return {"skipped_frames": self.dropped}


def test_dictation_skips_what_it_cannot_keep_up_with_and_says_so(ckpt, wavs, tmp_path, capsys):
    from moshi_mlx.live.dictation import DictationOptions, run_dictation

    audio, _ = sf.read(str(wavs[0]), dtype="float32")
    mic = _BurstMicrophone(np.concatenate([audio] * 3), burst=10)
    total = len(mic.frames)
    heard = tmp_path / "heard.wav"
    stream = SttStream(ckpt.lm, ckpt.mimi, ckpt.tokenizer)
    options = DictationOptions(duration=4.0, max_lag_frames=3, save_audio=heard, tty=True)
    result = run_dictation(stream, mic, options)
    out, err = capsys.readouterr()
    kept = total - mic.dropped
    assert mic.dropped > total // 2 and "lagging: skipped" in err
    assert options.stats["skipped_frames"] == mic.dropped
    assert len(read_wav(heard)) == kept * 1920 == round(result.duration * 24000)
    assert "\r" in out and out.endswith("\n")  # the line rewritten in place on a terminal
    (again,) = transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [heard])
    assert again.tokens == result.tokens and again.words == result.words


def read_wav(path) -> np.ndarray:
    return sf.read(str(path), dtype="float32")[0]


def test_a_stream_takes_the_checkpoint_as_the_tts_does(ckpt, wavs):
    """`SttStream(checkpoint)` is `SttStream(lm, mimi, tokenizer)`; its words have `.text`."""
    (file_mode,) = transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [wavs[0]], vad=True)
    audio, _ = sf.read(str(wavs[0]), dtype="float32")
    stream = SttStream(ckpt, vad=True)
    steps = stream.feed(audio)
    tail, closed = stream.finish()
    steps += tail
    assert [s[0].token for s in steps] == file_mode.tokens
    words = [w for s in steps for w in s[0].words] + closed[0]
    assert [w.text for w in words] == [w.text for w in file_mode.words] and words
    with pytest.raises(TypeError, match="needs a Checkpoint"):
        SttStream(ckpt.lm)
