"""`moshi-mlx transcribe` on files with the tiny STT checkpoint: outputs and every bad input."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from moshi_app import make_speech, tiny_checkpoint

from moshi_mlx.cli import main

__all__ = ["tiny_checkpoint"]  # fixtures used here


@pytest.fixture(scope="module")
def stt(tmp_path_factory):
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_stt") / "ckpt", kind="stt")


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stt_cli_audio")
    return [
        make_speech(folder / "one.wav", "Hello, this is a test of the transcription."),
        make_speech(folder / "two.wav", "Another file."),
    ]


def run(capsys, *args) -> tuple[int, str, str]:
    status = main(["transcribe", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def test_text_on_stdout_and_each_format_to_a_file(capsys, stt, audio, tmp_path):
    status, out, err = run(capsys, audio[0], "--checkpoint", stt, "-q")
    assert status == 0, err
    assert out.strip() and "transcribed 1 file(s)" in err and "real-time factor" in err
    status, _, err = run(capsys, audio[0], "--checkpoint", stt, "-o", tmp_path / "t.json")
    assert status == 0, err
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["text"] == out.strip() and data["checkpoint"] == str(stt)
    assert data["words"] and set(data["words"][0]) == {"word", "start", "end"}
    assert data["duration"] == pytest.approx(sf.info(str(audio[0])).duration, abs=1e-3)
    for fmt in ("srt", "vtt", "txt"):
        status, _, err = run(capsys, audio[0], "--checkpoint", stt, "--format", fmt, "-o", tmp_path)
        assert status == 0, err
        assert f"wrote {tmp_path / ('one.' + fmt)}" in err
    assert (tmp_path / "one.srt").read_text().startswith("1\n00:00:")
    assert (tmp_path / "one.vtt").read_text().startswith("WEBVTT\n")
    assert (tmp_path / "one.txt").read_text() == out


def test_several_files_go_to_a_folder(capsys, stt, audio, tmp_path):
    status, _, err = run(capsys, *audio, "--checkpoint", stt, "--vad", "-o", f"{tmp_path}/out/",
                         "--format", "json")  # fmt: skip
    assert status == 0, err
    texts = [json.loads((tmp_path / "out" / f"{p.stem}.json").read_text()) for p in audio]
    assert [t["file"] for t in texts] == [str(p) for p in audio]
    assert all(t["end_of_turn"] for t in texts)  # (the tiny model's heads do fire)


def error(capsys, *args) -> str:
    status, out, err = run(capsys, *args)
    assert status != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_inputs_are_one_line_errors_and_nothing_is_half_written(
    capsys, stt, audio, tiny_checkpoint, tmp_path
):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wav file")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 24000)
    assert "corrupt.wav" in error(capsys, corrupt, "--checkpoint", stt)
    assert "empty.wav" in error(capsys, empty, "--checkpoint", stt)
    assert "no such file" in error(capsys, tmp_path / "missing.wav", "--checkpoint", stt)
    err = error(capsys, audio[0], "--checkpoint", tiny_checkpoint)
    assert "not a speech-to-text model" in err and "moshi-mlx chat" in err

    existing = tmp_path / "exists.txt"
    existing.write_text("keep me")
    assert "--force" in error(capsys, audio[0], "--checkpoint", stt, "-o", existing)
    assert existing.read_text() == "keep me"
    status, _, err = run(capsys, audio[0], "--checkpoint", stt, "-o", existing, "--force")
    assert status == 0 and existing.read_text() != "keep me"

    assert "folder" in error(capsys, *audio, "--checkpoint", stt, "-o", existing, "--force")
    assert "overwrite the input" in error(capsys, audio[0], "--checkpoint", stt, "-o", audio[0])
    assert "--format" in error(capsys, audio[0], "--checkpoint", stt, "--format", "doc")

    # a checkpoint without the voice-activity heads (as Kyutai's -mlx repos)
    no_heads = tmp_path / "no_heads"
    shutil.copytree(stt, no_heads)
    weights = mx.load(str(no_heads / "model.safetensors"))
    mx.save_safetensors(
        str(no_heads / "model.safetensors"),
        {k: v for k, v in weights.items() if not k.startswith("extra_heads.")},
    )
    out = tmp_path / "vad.json"
    err = error(capsys, audio[0], "--checkpoint", no_heads, "--vad", "-o", out)
    assert "voice-activity heads" in err and "stt-1b-en_fr-candle" in err
    assert not out.exists()
    status, _, err = run(capsys, audio[0], "--checkpoint", no_heads, "-o", out)  # without --vad
    assert status == 0, err
    assert not list(tmp_path.glob(".*partial"))


def test_quantized_stt_checkpoints_transcribe_and_report_the_text_stream(
    capsys, stt, audio, tmp_path
):
    from quantize import accuracy_report, convert

    q8 = tmp_path / "q8"
    convert(stt, q8, "q8", progress=False)
    names = mx.load(str(q8 / "model.q8.safetensors")).keys()
    assert not any(n.startswith("depformer") for n in names)
    assert "extra_heads.2.scales" in names  # the voice-activity heads are kept (quantized)
    assert json.loads((q8 / "config.json").read_text())["model_type"] == "stt"
    status, out, err = run(capsys, audio[0], "--checkpoint", q8, "--vad", "--format", "json")
    assert status == 0, err
    assert json.loads(out)["words"]
    report = accuracy_report(stt, [q8], audio=audio[0])
    assert list(report.results[0].streams) == ["text"]  # no audio streams: text only
    text = report.results[0].streams["text"]
    assert text.positions > 0 and text.kl < 1e-3 and text.top1 > 0.9
    assert (
        "audio mean" not in report.table() and report.to_dict()["results"][0]["mean_audio"] is None
    )
