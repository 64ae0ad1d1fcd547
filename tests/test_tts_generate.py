"""TTS generation against Kyutai's PyTorch `TTSModel.generate` on the same strong random weights:
greedy decoding must give the same text fed at every step (the state machine's), the same audio
codes, the same end and word timings, for several texts, 1 and 2 voices, and fewer codebooks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import moshi_reference as R
from moshi_mlx import load_checkpoint
from moshi_mlx.jobs.tts import TextToSpeech, TtsSettings, load_voice

TOKENIZER = R.TTS_TOKENIZER
TEXTS = [
    ["Hello, world. How are you today?"],
    ['A long word, antidisestablishmentarianism <break time="0.5s"/> puis: ça va, l’été!'],
    ["First line.\n\nAfter an empty line (and a remark)."],
]
DIALOGUE = ["Hello there, how are you?", "Very well, thank you.", "Good."]


class _Codec:
    frame_rate = 12.5  # all Kyutai's `TTSModel.generate` reads of its codec


def kyutai_tts(reference, cfg: dict, folder: Path, n_q: int):
    import sentencepiece
    from moshi.models.tts import StateMachine, TokenIds, TTSModel

    ids = TokenIds(cfg["text_card"] + 1)
    machine = StateMachine(ids, second_stream_ahead=2, max_padding=8, initial_padding=2)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / TOKENIZER))
    delay = int(cfg["tts_config"]["audio_delay"] * 12.5)
    return TTSModel(
        lm=reference, mimi=_Codec(), tokenizer=sp, voice_suffix="", voice_repo="",
        machine=machine, delay_steps=delay, temp=0.0, n_q=n_q,
    )  # fmt: skip


def kyutai_generate(reference, cfg, folder, script, voices, n_q):
    tts = kyutai_tts(reference, cfg, folder, n_q)
    entries = tts.prepare_script(script, padding_between=1)
    attributes = tts.make_condition_attributes(voices, cfg_coef=2.0)
    from moshi.utils.compile import no_compile

    try:
        with no_compile():  # torch.compile of their norms costs seconds and changes nothing here
            result = tts.generate([entries], [attributes])
    finally:
        reference.dep_q = cfg["dep_q"]  # Kyutai's TTSModel sets the LM's dep_q to its n_q
    fed = [out for _, out in result.logged_text_tokens[0]]
    frames = [f[0, :, 0].numpy() for f in result.frames]
    return fed, frames, result.end_steps[0], result.all_transcripts[0]


def our_generate(tts: TextToSpeech, script, voices, n_q):
    settings = TtsSettings(temperature=0.0, cfg=2.0, num_codebooks=n_q)
    gen = tts.generator([load_voice(v, tts) for v in voices], settings)
    steps = list(tts.utterance(gen, tts.entries(script, 1), settings))
    transcript = [w for s in steps for w in s.words]
    return steps, steps[-1].end_step, transcript


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = R.TINY_TTS
    reference = R.make_kyutai_lm(cfg, seed=31)
    folder = R.save_tts_folder(reference, cfg, tmp_path_factory.mktemp("tts"))
    return cfg, reference, folder, TextToSpeech(load_checkpoint(folder))


def check(tiny, script, voice_names, n_q):
    cfg, reference, folder, tts = tiny
    voices = [folder / "voices" / f"{v}.{tts.voice_suffix[1:]}" for v in voice_names]
    fed, frames, end, transcript = kyutai_generate(reference, cfg, folder, script, voices, n_q)
    steps, our_end, our_transcript = our_generate(tts, script, voices, n_q)
    assert [s.text for s in steps] == fed
    assert (our_end, our_transcript) == (end, transcript)
    assert end is not None  # the whole text was spoken
    max_delay = max(cfg["delays"])
    assert [s.codes is None for s in steps] == [i < max_delay for i in range(len(steps))]
    for s, frame in zip(steps[max_delay:], frames, strict=True):
        np.testing.assert_array_equal(s.codes, frame[1 : 1 + n_q])
        assert frame[0] == fed[s.step - max_delay]
    audio = np.stack([s.codes for s in steps[max_delay:]])
    assert (audio[: tts.delay_steps] == -1).all()  # the first steps say nothing
    spoken = audio[tts.delay_steps :]
    assert (spoken >= 0).all() and len(np.unique(spoken)) > 10
    return steps


@pytest.mark.parametrize("script", TEXTS, ids=["plain", "break_accents", "empty_line"])
def test_greedy_generation_matches_kyutai_one_voice(tiny, script):
    check(tiny, script, ["v0"], n_q=R.TINY_TTS["n_q"])


def test_dialogue_two_voices_matches_kyutai(tiny):
    steps = check(tiny, DIALOGUE, ["v0", "v1"], n_q=R.TINY_TTS["n_q"])
    _, _, folder, tts = tiny
    voices = [folder / "voices" / f"{v}.{tts.voice_suffix[1:]}" for v in ("v1", "v0")]
    other, _, _ = our_generate(tts, DIALOGUE, voices, R.TINY_TTS["n_q"])
    codes = [s.codes for s in steps if s.codes is not None]
    other_codes = [s.codes for s in other if s.codes is not None]
    assert not all(np.array_equal(a, b) for a, b in zip(codes, other_codes, strict=False))


def test_fewer_codebooks_match_kyutai(tiny):
    check(tiny, TEXTS[0], ["v0"], n_q=4)


@pytest.mark.slow
def test_greedy_generation_at_real_widths_matches_kyutai(tmp_path):
    """`kyutai/tts-1.6b-en_fr` at real widths with 2 temporal layers, all 32 codebooks: the same
    text fed, audio codes, end and word timings as Kyutai's `TTSModel.generate`."""
    import gc

    cfg = R.tts_1_6b(num_layers=2)
    reference = R.make_kyutai_lm(cfg, seed=29, bf16_exact=True)
    folder = R.save_tts_folder(reference, cfg, tmp_path)
    tts = TextToSpeech(load_checkpoint(folder))
    assert tts.lm.cfg.dim == 2048 and tts.lm.cfg.dep_q == 32
    check((cfg, reference, folder, tts), ["Hello, world. Ça va?"], ["v0"], n_q=32)
    del reference, tts
    gc.collect()
