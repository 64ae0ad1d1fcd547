"""`moshi-mlx assistant IN OUT --json` on tiny models (STT, TTS, and a random Qwen2 in mlx-lm's
format with a real BPE tokenizer and chat template): the user's text is `transcribe`'s, the
reply is mlx-lm's own greedy generation for the same messages, the spoken words and the audio
are `speak`'s for the reply, though the speech started before the reply was written; the same
through a real `mlx_lm.server` (`--llm-url`)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from moshi_app import cli, make_speech, read

MAX_TOKENS = 12
SYSTEM = "Answer briefly."


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny STT (with and without the voice-activity heads), TTS and LLM folders."""
    from moshi_mlx.testing.tiny import (
        make_tiny_checkpoint,
        make_tiny_tts_checkpoint,
        strip_vad_heads,
    )
    from moshi_mlx.testing.tiny_llm import make_tiny_llm

    root = tmp_path_factory.mktemp("assistant_models")
    stt = make_tiny_checkpoint(root / "stt", kind="stt")
    return {
        "stt": stt,
        "stt_mlx": strip_vad_heads(stt, root / "stt-mlx"),
        "tts": make_tiny_tts_checkpoint(root / "tts", seed=0),
        "llm": make_tiny_llm(root / "llm", seed=0),
    }


@pytest.fixture(scope="module")
def question(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("assistant_audio")
    return make_speech(folder / "question.wav", "Hello there, how are you today?")


def assistant(models, *args, llm: tuple, stt="stt_mlx") -> subprocess.CompletedProcess:
    return cli(
        "assistant", *args, "--stt", models[stt], "--tts", models["tts"], "--voice", "tiny",
        "--system", SYSTEM, "--temperature", 0, "--tts-temperature", 0,
        "--max-tokens", MAX_TOKENS, "--float", *llm,
    )  # fmt: skip


def mlx_lm_replies(llm: Path, users: list[str]) -> list[str]:
    """mlx-lm's own greedy replies to the user turns, each with the history before it."""
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = mlx_lm.load(str(llm))
    messages = [{"role": "system", "content": SYSTEM}]
    replies = []
    for user in users:
        messages.append({"role": "user", "content": user})
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        reply = mlx_lm.generate(
            model, tokenizer, prompt, max_tokens=MAX_TOKENS, sampler=make_sampler(0.0)
        )
        replies.append(reply)
        messages.append({"role": "assistant", "content": reply.strip()})
    return replies


def transcript(models, stt: str, audio: Path) -> str:
    r = cli("transcribe", audio, "--checkpoint", models[stt], "-q")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def check_speech(models, data: dict, out: Path, tmp_path: Path) -> None:
    """Each answer is `speak` of its reply at temperature 0: the same words, times and audio."""
    audio = read(out)
    end = 0
    for i, turn in enumerate(data["turns"]):
        said, words = tmp_path / f"speak{i}.wav", tmp_path / f"speak{i}.json"
        r = cli(
            "speak", turn["reply"], said, "--json", words, "--checkpoint", models["tts"],
            "--voice", "tiny", "--temperature", 0, "--float",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        expected = read(said)
        start = round(turn["audio_start"] * 24000)
        assert start == end and turn["audio_seconds"] == pytest.approx(len(expected) / 24000)
        np.testing.assert_array_equal(audio[start : start + len(expected)], expected)
        spoken = json.loads(words.read_text())["words"]
        shifted = [
            {**w, "start": w["start"] + turn["audio_start"], "end": w["end"] + turn["audio_start"]}
            for w in spoken
        ]
        assert [w["word"] for w in turn["spoken"]] == [w["word"] for w in spoken]
        assert [w["word"] for w in spoken] == _tts_words(turn["reply"])
        for ours, theirs in zip(turn["spoken"], shifted, strict=True):
            assert ours["start"] == pytest.approx(theirs["start"], abs=2e-3)
            assert ours["end"] == pytest.approx(theirs["end"], abs=2e-3)
        end = start + len(expected)
    assert end == len(audio)


def _tts_words(text: str) -> list[str]:
    """The words the TTS makes of a text (its replacements, then white space)."""
    from moshi_mlx.jobs.tts_script import REPLACEMENTS

    for old, new in REPLACEMENTS:
        text = text.replace(old, new)
    return text.split()


def test_file_mode_is_transcribe_then_mlx_lm_then_speak(models, question, tmp_path):
    out, info = tmp_path / "answer.wav", tmp_path / "answer.json"
    r = assistant(models, question, out, "--json", info, llm=("--llm", models["llm"]))
    assert r.returncode == 0, r.stderr
    assert "has no end-of-turn head" in r.stderr and "1 s of silence" in r.stderr
    data = json.loads(info.read_text())
    assert [t["ended_by"] for t in data["turns"]] in (["silence"], ["end of input"])
    (turn,) = data["turns"]
    assert turn["user"] == transcript(models, "stt_mlx", question) != ""
    (reply,) = mlx_lm_replies(models["llm"], [turn["user"]])
    assert turn["reply"] == reply and len(reply.split()) >= 3
    assert f"user: {turn['user']}" in r.stdout and "assistant: " in r.stdout
    check_speech(models, data, out, tmp_path)
    t = turn["timings"]
    # the speech starts while the LLM is still writing (the TTS's incremental text input)
    assert 0 < t["llm_first_token"] < t["first_audio"] < t["llm_done"] <= t["done"]


def test_end_of_turn_head_takes_turns_with_history(models, tmp_path):
    """With the heads (the tiny ones are confident), a longer input makes several turns; each
    reply is mlx-lm's for the conversation so far."""
    speech = make_speech(
        tmp_path / "talk.wav",
        "Good morning. Tell me a story about a cat. What is the weather like in Paris?",
    )
    out, info = tmp_path / "answer.wav", tmp_path / "answer.json"
    r = assistant(models, speech, out, "--json", info, stt="stt", llm=("--llm", models["llm"]))
    assert r.returncode == 0, r.stderr
    assert "end-of-turn head" not in r.stderr  # no fallback note
    data = json.loads(info.read_text())
    turns = data["turns"]
    assert len(turns) >= 2 and turns[0]["ended_by"] == "end-of-turn head"
    heard = "".join(t["user"] for t in turns).replace(" ", "")
    assert heard == transcript(models, "stt", speech).replace(" ", "")
    replies = mlx_lm_replies(models["llm"], [t["user"] for t in turns])
    assert [t["reply"] for t in turns] == replies
    check_speech(models, data, out, tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(models):
    """A real `mlx_lm.server` on the tiny LLM."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlx_lm.server", "--model", str(models["llm"]),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"mlx_lm.server did not start: {process.stderr.read().decode()}")
            time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_llm_url_against_mlx_lm_server(models, question, server, tmp_path):
    out, info = tmp_path / "answer.wav", tmp_path / "answer.json"
    r = assistant(models, question, out, "--json", info, llm=("--llm-url", server))
    assert r.returncode == 0, r.stderr
    data = json.loads(info.read_text())
    (turn,) = data["turns"]
    (reply,) = mlx_lm_replies(models["llm"], [turn["user"]])
    assert turn["reply"] == reply and data["llm"] == f"default_model at {server}"
    check_speech(models, data, out, tmp_path)


def test_bad_inputs_are_one_line(models, question, tmp_path):
    out = tmp_path / "a.wav"
    r = assistant(models, question, out, llm=("--llm-url", "http://127.0.0.1:9"))
    assert r.returncode == 1 and "cannot reach http://127.0.0.1:9/v1/chat/completions" in r.stderr
    assert len(r.stderr.strip().splitlines()[-1]) < 300 and not out.exists()
    r = assistant(models, question, out, llm=("--llm", tmp_path / "missing"))
    assert r.returncode == 1 and "mlx-lm cannot load" in r.stderr and not out.exists()
    r = assistant(models, question, llm=("--llm", models["llm"]))
    assert r.returncode == 2 and "give OUT" in r.stderr
    out.write_bytes(b"keep")
    r = assistant(models, question, out, llm=("--llm", models["llm"]))
    assert r.returncode == 2 and out.read_bytes() == b"keep"
