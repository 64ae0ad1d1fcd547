"""`moshi-mlx run IN OUT.wav`: outputs, determinism, input formats, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from moshi_app import FRAME, RATE, cli, huge_checkpoint, read, speech_wav, tiny_checkpoint

from moshi_mlx.cli import main

__all__ = ["speech_wav", "tiny_checkpoint"]  # fixtures used here


def run(capsys, *args) -> tuple[int, str, str]:
    status = main(["run", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def test_run_writes_moshi_audio_and_a_timestamped_transcript(
    capsys, tiny_checkpoint, speech_wav, tmp_path
):
    out = tmp_path / "answer.wav"
    status, stdout, err = run(capsys, speech_wav, out, "--checkpoint", tiny_checkpoint, "-q")
    assert status == 0, err
    assert "wrote" in err and "real-time factor" in err and "seed" in err
    speech, answer = read(speech_wav), read(out)
    assert len(answer) == len(speech) and sf.info(str(out)).samplerate == RATE
    assert np.abs(answer[FRAME:]).max() > 0.01 and not answer[:FRAME].any()  # audio lags 1 step
    data = json.loads(out.with_suffix(".json").read_text())
    steps = -(-len(speech) // FRAME)
    assert data["steps"] == len(data["tokens"]) == steps
    assert data["checkpoint"] == str(tiny_checkpoint) and isinstance(data["seed"], int)
    assert data["pieces"], "the tiny model says something"
    for p in data["pieces"]:
        assert p["time"] == pytest.approx((p["step"] + 1) * 0.08)
        assert data["tokens"][p["step"]] == p["token"]
    assert data["text"] == "".join(p["text"] for p in data["pieces"]).strip()
    assert stdout.strip() == data["text"]
    lines = out.with_suffix(".txt").read_text().splitlines()
    assert lines and all(line.startswith("[00:0") for line in lines)


def test_the_same_seed_gives_the_same_output_and_another_seed_another(
    capsys, tiny_checkpoint, speech_wav, tmp_path
):
    outputs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        out = tmp_path / f"{name}.wav"
        status, _, err = run(
            capsys, speech_wav, out, "--checkpoint", tiny_checkpoint, "--seed", seed
        )
        assert status == 0, err
        outputs[name] = (read(out), json.loads(out.with_suffix(".json").read_text())["tokens"])
    np.testing.assert_array_equal(outputs["a"][0], outputs["b"][0])
    assert outputs["a"][1] == outputs["b"][1]
    assert outputs["a"][1] != outputs["c"][1]


def test_temperature_zero_is_deterministic_without_a_seed(
    capsys, tiny_checkpoint, speech_wav, tmp_path
):
    results = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.wav"
        args = (speech_wav, out, "--checkpoint", tiny_checkpoint, "--temperature", 0)
        status, _, err = run(capsys, *args)
        assert status == 0, err
        data = json.loads(out.with_suffix(".json").read_text())
        assert data["sampling"]["text_temperature"] == data["sampling"]["audio_temperature"] == 0
        results.append((read(out), data["tokens"], data["seed"]))
    assert results[0][2] != results[1][2]  # different random seeds ...
    np.testing.assert_array_equal(results[0][0], results[1][0])  # ... and the same output
    assert results[0][1] == results[1][1]


@pytest.mark.parametrize("suffix", ["flac", "mp3"])
def test_any_format_rate_and_channels_is_read(
    capsys, tiny_checkpoint, speech_wav, tmp_path, suffix
):
    speech = read(speech_wav)
    stereo = soxr.resample(speech, RATE, 44100)
    stereo = np.stack([stereo, 0.5 * stereo], axis=1)
    src = tmp_path / f"talk.{suffix}"
    sf.write(str(src), stereo, 44100)
    out = tmp_path / "answer.wav"
    status, _, err = run(capsys, src, out, "--checkpoint", tiny_checkpoint, "--seed", 1)
    assert status == 0, err
    expected = round(sf.info(str(src)).frames * RATE / 44100)
    assert len(read(out)) == expected


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio at all\n" * 100)
    (tmp_path / "folder.wav").mkdir()
    return {
        "no such file": tmp_path / "missing.wav",
        "empty file": tmp_path / "empty.wav",
        "cannot read": tmp_path / "text.wav",
        "not a file": tmp_path / "folder.wav",
    }


def test_bad_input_files_fail_with_one_line(capsys, tiny_checkpoint, tmp_path):
    for message, path in _bad_files(tmp_path).items():
        status, _, err = run(capsys, path, tmp_path / "out.wav", "--checkpoint", tiny_checkpoint)
        assert status == 1 and err.startswith("error: ") and message in err, err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.wav").exists()


def test_bad_outputs_fail_before_any_work(capsys, tiny_checkpoint, speech_wav, tmp_path):
    ckpt = ("--checkpoint", tiny_checkpoint)
    (tmp_path / "taken.wav").write_bytes(b"keep me")
    cases = [
        ((speech_wav, tmp_path / "taken.wav", *ckpt), 1, "exists"),
        ((speech_wav, tmp_path / "nowhere" / "out.wav", *ckpt), 1, "does not exist"),
        ((speech_wav, tmp_path / "out.xyz", *ckpt), 2, "cannot tell the audio format"),
        ((speech_wav, speech_wav, *ckpt, "--force"), 2, "overwrite the input"),
    ]
    for args, code, message in cases:
        status, _, err = run(capsys, *args)
        assert status == code and message in err and err.count("\n") == 1, err
    assert (tmp_path / "taken.wav").read_bytes() == b"keep me"
    (tmp_path / "taken.json").write_text("{}")  # the transcript would be overwritten too
    status, _, err = run(capsys, speech_wav, tmp_path / "taken2.wav", *ckpt)
    assert status == 0
    (tmp_path / "t.json").write_text("{}")
    status, _, err = run(capsys, speech_wav, tmp_path / "t.wav", *ckpt)
    assert status == 1 and "t.json" in err and "--force" in err


def test_bad_options_are_usage_errors(capsys, speech_wav, tmp_path):
    out = tmp_path / "out.wav"
    cases = [
        (("--temperature", "-1"), "must be a finite number, 0 or more"),
        (("--temperature", "inf"), "must be a finite number"),
        (("--audio-temperature", "nan"), "must be a finite number"),
        (("--text-top-k", "0"), "must be 1 or more"),
        (("--top-p", "0"), "must be in (0, 1]"),
        (("--seed", "x"), "not a whole number"),
        (("--seed", "-1"), "must be in 0.."),
        (("--voice", "moshiko", "--checkpoint", "x"), "not allowed with"),
        (("--voice", "bob"), "invalid choice"),
    ]
    for extra, message in cases:
        status, _, err = run(capsys, speech_wav, out, *extra)
        assert status == 2 and message in err and err.count("\n") == 1, err


def test_missing_or_broken_checkpoints_fail_with_one_line(
    capsys, tiny_checkpoint, speech_wav, tmp_path
):
    status, _, err = run(capsys, speech_wav, tmp_path / "o.wav", "--checkpoint", tmp_path / "nope")
    assert status == 1 and "no such file or folder" in err
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    status, _, err = run(capsys, speech_wav, tmp_path / "o.wav", "--checkpoint", broken)
    assert status == 1 and err.startswith("error: ") and err.count("\n") == 1, err


def test_no_network_and_no_cached_weights_says_what_to_download(speech_wav, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for voice, repo in ((None, "kyutai/moshiko-mlx-q4"), ("moshika", "kyutai/moshika-mlx-q4")):
        extra = ("--voice", voice) if voice else ()
        r = cli("run", speech_wav, tmp_path / "o.wav", *extra, env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and repo in r.stderr
        assert "hf download" in r.stderr and "--checkpoint" in r.stderr


def test_a_checkpoint_too_big_for_memory_is_refused_before_loading(
    capsys, tiny_checkpoint, speech_wav, tmp_path
):
    big = huge_checkpoint(tiny_checkpoint, tmp_path / "big")
    status, _, err = run(capsys, speech_wav, tmp_path / "o.wav", "--checkpoint", big)
    assert status == 1 and "not enough memory" in err and "TB" in err, err
    assert err.count("\n") == 1


def test_help_lists_every_command_with_an_example(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("chat", "run"):
        assert f"\n    {command}" in text or f"  {command} " in text
        assert f"moshi-mlx {command} " in text  # an example
    assert "--list-devices" in text and "make_tiny_checkpoint" in text
    for command in ("chat", "run"):
        assert main([command, "--help"]) == 0
        sub = capsys.readouterr().out
        assert "--checkpoint" in sub and "--seed" in sub and "examples:" in sub
    assert main([]) == 2
    assert "required" in capsys.readouterr().err
