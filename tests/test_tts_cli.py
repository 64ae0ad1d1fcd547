"""`moshi-mlx speak` on the tiny TTS checkpoint: file output with word timings, the same seed
giving the same audio, streaming to a (virtual PulseAudio) speaker that records exactly the file
output, and bad inputs answered with one line and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from moshi_app import REPO, align, cli, read
from pulse_audio import pulse, read_raw

__all__ = ["pulse"]

TEXT = "Hello there. How are you today? Ça va très bien."


@pytest.fixture(scope="module")
def tts_checkpoint(tmp_path_factory) -> Path:
    from moshi_mlx.testing.tiny import make_tiny_tts_checkpoint

    return make_tiny_tts_checkpoint(tmp_path_factory.mktemp("tiny_tts") / "ckpt", seed=0)


def speak(ckpt: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli("speak", *args, "--checkpoint", ckpt, env=env)


def test_file_output_with_word_times_and_seed(tts_checkpoint, tmp_path):
    out, words = tmp_path / "out.wav", tmp_path / "out.json"
    args = ["--voice", "tiny", "--seed", 7, "--float"]
    r = speak(tts_checkpoint, TEXT, out, *args, "--json", words)
    assert r.returncode == 0, r.stderr
    assert "first audio after" in r.stderr and "real-time factor" in r.stderr
    audio = read(out)
    info = json.loads(words.read_text())
    assert [w["word"] for w in info["words"]] == TEXT.split()
    starts = [w["start"] for w in info["words"]]
    assert starts == sorted(starts) and 0 < starts[0] and starts[-1] < len(audio) / 24000
    assert info["seconds"] == pytest.approx(len(audio) / 24000) and info["seed"] == 7
    assert len(audio) % 1920 == 0 and np.abs(audio).max() > 0.01
    again = tmp_path / "again.wav"
    assert speak(tts_checkpoint, TEXT, again, *args).returncode == 0
    np.testing.assert_array_equal(read(again), audio)  # the seed decides everything
    other = tmp_path / "other.wav"
    assert speak(tts_checkpoint, TEXT, other, "--voice", "tiny2", "--seed", 7).returncode == 0
    assert not np.array_equal(read(other)[: len(audio)], audio[: len(read(other))])


def test_dialogue_stdin_and_fewer_codebooks(tts_checkpoint, tmp_path):
    out = tmp_path / "dialogue.wav"
    r = subprocess.run(
        [sys.executable, "-m", "moshi_mlx", "speak", "-", str(out), "--checkpoint",
         str(tts_checkpoint), "--voice", "tiny", "--voice", "tiny2", "--num-codebooks", "4",
         "--temperature", "0"],
        input="Good morning.\n\nGood morning to you!\n", cwd=REPO, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "6 words" in r.stderr and len(read(out)) > 0


def one_line_error(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_inputs_one_line_and_nothing_written(tts_checkpoint, tiny_moshi, tmp_path):
    import mlx.core as mx

    out = tmp_path / "out.wav"
    offline = {"HF_HUB_OFFLINE": "1"}
    one_line_error(speak(tts_checkpoint, "  \n", out, "--voice", "tiny"), 2, "empty")
    one_line_error(speak(tts_checkpoint, "Hi.", out, "--voice", "nobody", env=offline), 1, "nobody")
    wrong = tmp_path / "wrong.safetensors"
    mx.save_safetensors(str(wrong), {"speaker_wavs": mx.zeros((1, 7, 125))})
    one_line_error(speak(tts_checkpoint, "Hi.", out, "--voice", wrong), 1, "(1, 32, T)")
    one_line_error(speak(tts_checkpoint, "Hi.", out, "--voice", "tiny", "--cfg", "2.2"), 2, "cfg")
    one_line_error(
        speak(tts_checkpoint, "Hi.", out, "--voice", "tiny", "--num-codebooks", "9"), 2, "1..8"
    )
    one_line_error(speak(tiny_moshi, "Hi.", out, "--voice", "tiny"), 1, "not a text-to-speech")
    one_line_error(speak(tts_checkpoint, "Hi.", tmp_path / "out.xyz"), 2, "format")
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob(".*partial"))
    out.write_bytes(b"keep me")
    one_line_error(speak(tts_checkpoint, "Hi.", out, "--voice", "tiny"), 1, "--force")
    assert out.read_bytes() == b"keep me"


@pytest.fixture(scope="module")
def tiny_moshi(tmp_path_factory) -> Path:
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_moshi") / "ckpt", seed=0)


def test_streaming_to_the_speaker_records_exactly_the_file_output(pulse, tts_checkpoint, tmp_path):
    """The speaker path (jitter buffer, PortAudio output stream) plays the very samples the
    file gets. The whole utterance is buffered before playback (`--buffer`), so a machine slower
    than real time cannot make gaps; the time to first audio is still reported."""
    args = [TEXT, "--voice", "tiny", "--seed", 11]
    wav = tmp_path / "file.wav"
    assert speak(tts_checkpoint, *args[:1], wav, *args[1:], "--float").returncode == 0
    expected = read(wav)
    raw = tmp_path / "speaker.raw"
    recorder = pulse.record_speaker(raw)
    try:
        time.sleep(0.3)
        r = speak(tts_checkpoint, *args, "--buffer", "60", env=pulse.env)
        time.sleep(2.0)  # a starved sink client may still be playing
    finally:
        recorder.terminate()
        recorder.wait(timeout=10)
    assert r.returncode == 0, r.stderr
    assert "first audio after" in r.stderr and "played" in r.stderr
    recorded = read_raw(raw)
    total = -(-len(expected) // PIECE)
    found, resyncs = found_in_order(expected, recorded)
    # Every piece found is bit-exact and in order; on a loaded machine the sink itself may drop
    # a few fragments (starved client), which no player can prevent.
    assert found >= 0.95 * total and resyncs <= 5, (found, total, resyncs)


PIECE = 480  # 20 ms: parec's fragment


def found_in_order(expected: np.ndarray, recorded: np.ndarray) -> tuple[int, int]:
    """How many 20 ms pieces of `expected` appear bit-exact in `recorded`, in order, and how
    often the search had to resynchronise (on a loaded machine a starved client leaves gaps in
    the sink; every sample that reached the speaker must still be the file's)."""
    pos, found, resyncs = align(expected, recorded), 0, 0
    cursor = 0  # where the last piece found ends in `recorded`
    for i in range(0, len(expected), PIECE):
        piece = expected[i : i + PIECE]
        at = pos + i
        if not (at >= cursor and np.array_equal(recorded[at : at + len(piece)], piece)):
            starts = np.flatnonzero(recorded[cursor:] == piece[0]) + cursor
            starts = [j for j in starts if np.array_equal(recorded[j : j + len(piece)], piece)]
            if not starts:
                continue  # this piece never reached the sink intact
            at = starts[0]
            pos, resyncs = at - i, resyncs + 1
        cursor = at + len(piece)
        found += 1
    return found, resyncs


def test_a_voice_by_name_from_the_hub_cache(tts_checkpoint, tmp_path):
    """`--voice NAME` not in the checkpoint's `voices/` comes from `kyutai/tts-voices` in the
    Hugging Face cache (offline): the same embedding gives the same audio as the local file."""
    from hub_cache import add_repo

    local = next((tts_checkpoint / "voices").glob("tiny.*.safetensors"))
    suffix = local.name[len("tiny") :]
    cache = tmp_path / "hub"
    add_repo(cache, "kyutai/tts-voices", {f"expresso/demo{suffix}": local})
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    args = ["--seed", 3, "--float"]
    by_name, by_file = tmp_path / "name.wav", tmp_path / "file.wav"
    r = speak(tts_checkpoint, "Hello there.", by_name, "--voice", "expresso/demo", *args, env=env)
    assert r.returncode == 0, r.stderr
    assert speak(tts_checkpoint, "Hello there.", by_file, "--voice", local, *args).returncode == 0
    np.testing.assert_array_equal(read(by_name), read(by_file))
    r = speak(tts_checkpoint, "Hello.", tmp_path / "x.wav", "--voice", "expresso/nobody", env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "expresso/nobody" in r.stderr and not (tmp_path / "x.wav").exists()
