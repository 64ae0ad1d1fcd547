"""`moshi-mlx run` with PersonaPlex and Hibiki tiny checkpoints: prompts, presets, replay from
session settings, the known-models table, and bad inputs as one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from moshi_app import speech_wav, tiny_checkpoint
from pulse_audio import pulse

from moshi_mlx.cli import main
from moshi_mlx.jobs.known import MODELS, known_model

__all__ = ["pulse", "speech_wav", "tiny_checkpoint"]  # fixtures used here

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.fixture(scope="module")
def personaplex(tmp_path_factory) -> Path:
    from make_tiny_checkpoint import write_tiny_voices

    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("pp") / "ckpt", kind="personaplex")
    write_tiny_voices(folder, 0)
    return folder


@pytest.fixture(scope="module")
def hibiki(tmp_path_factory) -> Path:
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("hib") / "ckpt", kind="hibiki")


def run(capsys, *args) -> tuple[int, str, str]:
    status = main(["run", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_known_models_table():
    assert MODELS["moshiko"].repo == "kyutai/moshiko-mlx-q4"
    assert MODELS["personaplex"].repo == "nvidia/personaplex-7b-v1"
    assert MODELS["hibiki"].cfg_conditions == {"description": "very_bad"}
    assert {"stt-1b-en_fr", "stt-2.6b-en", "tts-1.6b-en_fr"} <= set(MODELS)
    with pytest.raises(ValueError, match="unknown model 'bob'"):
        known_model("bob")
    with pytest.raises(ValueError, match="stt model"):
        known_model("stt-2.6b-en", ("dialogue",))


def test_personaplex_prompt_preset_and_replay(capsys, personaplex, speech_wav, tmp_path):
    out = tmp_path / "a.wav"
    args = ("--checkpoint", personaplex, "--prompt", "You are a patient French teacher.")
    status, _, err = run(capsys, speech_wav, out, *args, "--voice-prompt", "NATF0", "--seed", 3)
    assert status == 0, err
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["model"] == "personaplex" and info["voice_prompt"] == "NATF0"
    assert info["prompt"] == "You are a patient French teacher."
    # the recorded settings replay the session: same tokens and audio
    session = tmp_path / "session.json"
    session.write_text(json.dumps(info))
    again = tmp_path / "b.wav"
    status, _, err = run(capsys, speech_wav, again, "--session", session)
    assert status == 0, err
    replay = json.loads(again.with_suffix(".json").read_text())
    assert replay["tokens"] == info["tokens"]
    np.testing.assert_array_equal(sf.read(out)[0], sf.read(again)[0])
    # the prompt matters: without it, another conversation
    other = tmp_path / "c.wav"
    assert run(capsys, speech_wav, other, "--checkpoint", personaplex, "--seed", 3)[0] == 0
    assert json.loads(other.with_suffix(".json").read_text())["tokens"] != info["tokens"]
    # a recorded voice instead of a preset
    status, _, err = run(
        capsys, speech_wav, tmp_path / "d.wav", "--checkpoint", personaplex,
        "--voice-prompt", speech_wav,
    )  # fmt: skip
    assert status == 0, err


def test_moshi_takes_a_text_prefill(capsys, tiny_checkpoint, speech_wav, tmp_path):
    status, _, err = run(
        capsys, speech_wav, tmp_path / "m.wav", "--checkpoint", tiny_checkpoint,
        "--prompt", "Let us talk about cats.", "--seed", 1,
    )  # fmt: skip
    assert status == 0, err


def test_hibiki_translates_to_the_end(capsys, hibiki, speech_wav, tmp_path):
    out = tmp_path / "en.wav"
    status, _, err = run(capsys, speech_wav, out, "--checkpoint", hibiki, "--max-tail", 1)
    assert status == 0, err
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["model"] == "hibiki" and info["cfg_coef"] == 3.0
    frames = -(-sf.info(speech_wav).frames // 1920)
    # random weights never say end-of-text: the bound (1 s) after the end-of-stream frame
    assert info["steps"] == frames + 1 + round(12.5)
    assert sf.info(out).frames == info["steps"] * 1920


def test_bad_inputs_are_one_line_errors(capsys, personaplex, hibiki, speech_wav, tmp_path):
    out = tmp_path / "x.wav"
    text = tmp_path / "voice.txt"
    text.write_text("not audio")
    pt = tmp_path / "NATF0.pt"
    pt.write_bytes(b"x")
    cases = [
        (("--checkpoint", personaplex, "--voice-prompt", text), "cannot read"),
        (("--checkpoint", personaplex, "--voice-prompt", pt), "moshi-mlx-quantize voices"),
        (("--checkpoint", personaplex, "--voice-prompt", "NOPE"), "no voice preset 'NOPE'"),
        (("--model", "hibiki", "--prompt", "hi"), "hibiki takes no --prompt"),
        (("--checkpoint", hibiki, "--voice-prompt", speech_wav), "takes no --voice-prompt"),
        (("--model", "nemo"), "unknown model 'nemo'"),
        (("--checkpoint", personaplex, "--precision", "q8"), "--precision"),
        (("--checkpoint", personaplex, "--cfg-coef", "2"), "--cfg-coef needs"),
        (("--session", tmp_path / "none.json"), "cannot read the session"),
    ]
    for args, message in cases:
        status, _, err = run(capsys, speech_wav, out, *args)
        assert status in (1, 2) and message in one_line(err), (args, err)
        assert not out.exists()


def test_live_personaplex_chat_is_replayed_by_run_from_its_session(
    pulse, personaplex, speech_wav, tmp_path
):
    """A live chat with a persona and a preset voice, recorded; `run --session` on its
    user.wav gives the same text and audio (the prompts are prefilled before the devices start,
    and the same way offline)."""
    from test_chat_live import _chat

    args = ["--checkpoint", personaplex, "--prompt", "You are a pirate.", "--voice-prompt"]
    args += ["NATM0", "--seed", 5, "--stats", "--max-lag", 1000]
    live = _chat(pulse, tmp_path / "rec", speech_wav, args, tmp_path / "speaker.raw")
    assert live.returncode == 0, live.stderr
    assert live.summary["prompt"] == "You are a pirate." and live.summary["voice_prompt"] == "NATM0"
    out = tmp_path / "replay.wav"
    status = main(
        ["run", str(tmp_path / "rec" / "user.wav"), str(out), "--float", "-q", "--session",
         str(tmp_path / "rec" / "session.json")]
    )  # fmt: skip
    assert status == 0
    recorded = json.loads((tmp_path / "rec" / "transcript.json").read_text())
    assert json.loads(out.with_suffix(".json").read_text())["tokens"] == recorded["tokens"]
    np.testing.assert_array_equal(sf.read(out)[0], sf.read(tmp_path / "rec" / "moshi.wav")[0])


def test_live_hibiki_chat(pulse, hibiki, speech_wav, tmp_path):
    """`chat` drives the translation model live, with guidance (two half-batches)."""
    from test_chat_live import _chat

    args = ["--checkpoint", hibiki, "--seed", 2, "--stats", "--max-lag", 1000]
    live = _chat(pulse, tmp_path / "rec", speech_wav, args, tmp_path / "speaker.raw")
    assert live.returncode == 0, live.stderr
    assert live.summary["model"] == "hibiki" and live.summary["cfg_coef"] == 3.0
    assert live.summary["steps"] > 50


def test_quantized_personaplex_keeps_its_voices(capsys, personaplex, speech_wav, tmp_path):
    from quantize.cli import main as quantize

    assert quantize([str(personaplex), str(tmp_path / "q8"), "--recipe", "q8", "--quiet"]) == 0
    config = json.loads((tmp_path / "q8" / "config.json").read_text())
    assert config["dep_q"] == 16 and config["generated_codebooks"] == 8
    assert (tmp_path / "q8" / "voices" / "NATF0.safetensors").is_file()
    status, _, err = run(
        capsys, speech_wav, tmp_path / "q.wav", "--checkpoint", tmp_path / "q8",
        "--prompt", "Hello.", "--voice-prompt", "NATF0",
    )  # fmt: skip
    assert status == 0, err
    # NVIDIA's PyTorch presets are refused with the command that converts them
    assert quantize(["voices", str(speech_wav), str(tmp_path / "v")]) == 1
    assert "cannot read" in capsys.readouterr().err
