"""`mimi-mlx` on real files: round trips, streaming equals batch, codes files, every bad input.

A tiny Kyutai-layout checkpoint with bug-catching random weights is built once and loaded through
the real loader; audio is espeak-ng speech. The CLI runs in-process (`main([...])`) for speed and
once as the installed console script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
import soxr
from safetensors.numpy import save_file

from mimi_mlx import Mimi, load_mimi, offline
from mimi_mlx.cli import main
from mimi_mlx.codes_file import CodesFileError, MimiCodes, load_codes, save_codes
from mimi_mlx.model import to_numpy
from mimi_reference import TINY, make_kyutai_mimi, noise, save_kyutai, speech

SECONDS = 3.3  # not a whole number of frames, more than one streaming block
PCM16 = 1 / 32768


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """A tiny Mimi checkpoint folder in Kyutai's released layout (32 codebooks of 64)."""
    folder = tmp_path_factory.mktemp("tiny_mimi")
    calibration = speech(3.0, folder / "calibration.wav")
    save_kyutai(make_kyutai_mimi(TINY, 0, calibration), TINY, folder / "ckpt", with_config=True)
    return folder / "ckpt"


@pytest.fixture(scope="session")
def model(ckpt) -> Mimi:
    return load_mimi(ckpt)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    speech(SECONDS, path)
    return path


def run(capsys, *args: str | Path) -> tuple[int, str]:
    """Run the CLI in-process; return (exit status, stderr)."""
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err


def assert_one_line_error(err: str) -> None:
    assert err.startswith("error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err


def encode_ref(model: Mimi, audio: np.ndarray, n_q: int = 8) -> np.ndarray:
    return np.array(model.encode(mx.array(audio)[None, None], n_q)[0])


# -- round trips on real files -------------------------------------------------------------------
def test_encode_decode_speech_wav(capsys, tmp_path, ckpt, model, speech_wav):
    codes_path, out, rt = tmp_path / "s.safetensors", tmp_path / "s.wav", tmp_path / "rt.wav"
    assert run(capsys, "encode", speech_wav, codes_path, "--checkpoint", ckpt) == (0, "")
    codes = load_codes(codes_path)
    audio, rate = sf.read(speech_wav, dtype="float32")
    assert rate == 24000
    # Metadata preserved.
    assert codes.num_codebooks == 8 and codes.num_frames == int(np.ceil(len(audio) / 1920))
    assert codes.num_samples == len(audio) == int(SECONDS * 24000)
    assert (codes.sample_rate, codes.frame_rate, codes.frame_size) == (24000, 12.5, 1920)
    assert codes.cardinality == 64 and codes.source_sample_rate == 24000
    assert Path(codes.checkpoint) == ckpt.resolve()
    np.testing.assert_array_equal(codes.codes, encode_ref(model, audio))

    # Decode uses the checkpoint recorded in the codes file; output trimmed to the input length.
    assert run(capsys, "decode", codes_path, out) == (0, "")
    decoded, rate = sf.read(out, dtype="float32")
    info = sf.info(out)
    assert (rate, info.channels, info.subtype, len(decoded)) == (24000, 1, "PCM_16", len(audio))
    expected = to_numpy(model.decode(mx.array(codes.codes)[None]))[0, 0, : len(audio)]
    np.testing.assert_allclose(decoded, np.clip(expected, -1, 1), atol=PCM16)

    # Encode then decode is exactly roundtrip.
    assert run(capsys, "roundtrip", speech_wav, rt, "--checkpoint", ckpt) == (0, "")
    assert rt.read_bytes() == out.read_bytes()


def test_flac_in_flac_out(capsys, tmp_path, ckpt, model, speech_wav):
    flac = tmp_path / "speech.flac"
    sf.write(flac, sf.read(speech_wav)[0], 24000, subtype="PCM_16")
    codes_path = tmp_path / "s.safetensors"
    assert run(capsys, "encode", flac, codes_path, "--checkpoint", ckpt, "-n", "32") == (0, "")
    audio = sf.read(flac, dtype="float32")[0]
    np.testing.assert_array_equal(load_codes(codes_path).codes, encode_ref(model, audio, 32))
    out = tmp_path / "rt.flac"
    assert run(capsys, "roundtrip", flac, out, "--checkpoint", ckpt) == (0, "")
    info = sf.info(out)
    assert (info.format, info.samplerate, info.frames) == ("FLAC", 24000, len(audio))


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_compressed_formats(capsys, tmp_path, ckpt, speech_wav, fmt):
    src = tmp_path / f"speech.{fmt}"
    sf.write(src, sf.read(speech_wav)[0], 24000)
    out = tmp_path / f"rt.{fmt}"
    assert run(capsys, "roundtrip", src, out, "--checkpoint", ckpt) == (0, "")
    assert sf.info(out).samplerate == 24000
    assert abs(sf.info(out).frames - sf.info(src).frames) < 2000  # codec padding


def test_one_sample_input(capsys, tmp_path, ckpt):
    src, out = tmp_path / "one.wav", tmp_path / "one-rt.wav"
    sf.write(src, np.array([0.5], np.float32), 16000)
    assert run(capsys, "roundtrip", src, out, "--checkpoint", ckpt) == (0, "")
    assert sf.info(out).frames in (1, 2)  # 1.5 samples at 24 kHz, rounded by soxr


def test_stereo_44k_is_downmixed_and_resampled(capsys, tmp_path, ckpt, model, speech_wav):
    mono24 = sf.read(speech_wav, dtype="float32")[0]
    left = soxr.resample(mono24, 24000, 44100).astype(np.float32)
    right = 0.5 * np.roll(left, 3000) + noise(len(left) / 24000)[: len(left)]
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    codes_path = tmp_path / "st.safetensors"
    assert run(capsys, "encode", stereo, codes_path, "--checkpoint", ckpt) == (0, "")
    codes = load_codes(codes_path)
    read = sf.read(stereo, dtype="float32")[0]
    expected_audio = soxr.resample(read.mean(axis=1, dtype=np.float32), 44100, 24000)
    assert codes.num_samples == len(expected_audio) and codes.source_sample_rate == 44100
    np.testing.assert_array_equal(codes.codes, encode_ref(model, expected_audio))
    out = tmp_path / "st.wav"
    assert run(capsys, "decode", codes_path, out) == (0, "")
    assert sf.info(out).samplerate == 24000 and sf.info(out).frames == len(expected_audio)


# -- streaming equals batch ----------------------------------------------------------------------
def test_stream_encode_equals_batch(capsys, tmp_path, ckpt, speech_wav):
    batch, stream = tmp_path / "b.safetensors", tmp_path / "s.safetensors"
    assert run(capsys, "encode", speech_wav, batch, "--checkpoint", ckpt, "--no-stream")[0] == 0
    assert run(capsys, "encode", speech_wav, stream, "--checkpoint", ckpt, "--stream")[0] == 0
    a, b = load_codes(batch), load_codes(stream)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.metadata() == b.metadata()


@pytest.mark.parametrize("block_frames", [1, 7])
def test_stream_library_any_split(tmp_path, model, speech_wav, block_frames):
    batch = offline.encode_file(model, speech_wav, 8, stream=False)
    model.encode_step(mx.array(noise(0.32))[None, None])  # a stream left mid-way: reset first
    model.decode_step(batch.codes[None, :, :3])
    stream = offline.encode_file(model, speech_wav, 8, stream=True, block_frames=block_frames)
    np.testing.assert_array_equal(batch.codes, stream.codes)
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    offline.decode_file(model, batch, a, stream=False, float32=True)
    offline.decode_file(model, batch, b, stream=True, float32=True, block_frames=block_frames)
    x, y = sf.read(a, dtype="float32")[0], sf.read(b, dtype="float32")[0]
    assert len(x) == len(y) == batch.num_samples
    np.testing.assert_allclose(x, y, atol=1e-5 * max(1.0, np.abs(x).max()))


def test_stream_roundtrip_and_decode_equal_batch(capsys, tmp_path, ckpt, speech_wav):
    outs = {}
    for mode in ("--stream", "--no-stream"):
        out = tmp_path / f"rt{mode}.wav"
        args = ["roundtrip", speech_wav, out, "--checkpoint", ckpt, mode, "--float"]
        assert run(capsys, *args)[0] == 0
        outs[mode] = sf.read(out, dtype="float32")[0]
    codes_path = tmp_path / "c.safetensors"
    assert run(capsys, "encode", speech_wav, codes_path, "--checkpoint", ckpt)[0] == 0
    dec = tmp_path / "dec.wav"
    assert run(capsys, "decode", codes_path, dec, "--stream", "--float")[0] == 0
    outs["decode"] = sf.read(dec, dtype="float32")[0]
    ref = outs["--no-stream"]
    assert len(ref) == int(SECONDS * 24000)
    for got in outs.values():
        np.testing.assert_allclose(got, ref, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_long_files_stream_automatically(capsys, tmp_path, monkeypatch, ckpt, speech_wav):
    def no_batch(*args, **kwargs):
        raise AssertionError("batch mode used")

    monkeypatch.setattr(offline, "STREAM_ABOVE_SECONDS", 1.0)
    monkeypatch.setattr(Mimi, "encode", no_batch)
    monkeypatch.setattr(Mimi, "decode", no_batch)
    codes_path, out = tmp_path / "c.safetensors", tmp_path / "o.wav"
    assert run(capsys, "encode", speech_wav, codes_path, "--checkpoint", ckpt) == (0, "")
    assert run(capsys, "decode", codes_path, out) == (0, "")
    assert run(capsys, "roundtrip", speech_wav, out, "--checkpoint", ckpt, "-f") == (0, "")
    status, err = run(capsys, "encode", speech_wav, tmp_path / "x.safetensors",
                      "--checkpoint", ckpt, "--no-stream")  # fmt: skip
    assert status == 1 and "batch mode used" in err


def test_progress_bar_when_streaming(capsys, model, speech_wav):
    offline.encode_file(model, speech_wav, stream=True, progress=True)
    assert "s audio" in capsys.readouterr().err


def test_decode_fewer_codebooks(capsys, tmp_path, ckpt, model, speech_wav):
    codes_path, out = tmp_path / "c.safetensors", tmp_path / "o.wav"
    assert run(capsys, "encode", speech_wav, codes_path, "--checkpoint", ckpt)[0] == 0
    assert run(capsys, "decode", codes_path, out, "-n", "4", "--float")[0] == 0
    codes = load_codes(codes_path)
    expected = to_numpy(model.decode(mx.array(codes.codes[:4])[None]))[0, 0, : codes.num_samples]
    np.testing.assert_allclose(sf.read(out, dtype="float32")[0], expected, atol=1e-6)
    status, err = run(capsys, "decode", codes_path, tmp_path / "p.wav", "-n", "9")
    assert status == 1 and "1..8" in err
    assert_one_line_error(err)


# -- codes files ----------------------------------------------------------------------------------
def good_codes() -> MimiCodes:
    rng = np.random.default_rng(0)
    return MimiCodes(rng.integers(0, 64, (8, 42)), num_samples=79200, cardinality=64,
                     checkpoint="somewhere", source_sample_rate=44100)  # fmt: skip


def test_codes_file_keeps_metadata(tmp_path):
    codes = good_codes()
    save_codes(tmp_path / "c.safetensors", codes)
    back = load_codes(tmp_path / "c.safetensors")
    np.testing.assert_array_equal(back.codes, codes.codes)
    assert back.metadata() == codes.metadata()
    assert back.metadata()["format"] == "mimi-codes" and back.metadata()["version"] == "1"
    with pytest.raises(CodesFileError, match="out of range"):
        MimiCodes(np.full((8, 42), 64), num_samples=79200, cardinality=64)


def test_info_command(capsys, tmp_path):
    save_codes(tmp_path / "c.safetensors", good_codes())
    assert main(["info", str(tmp_path / "c.safetensors")]) == 0
    text = capsys.readouterr().out
    for line in ("codebooks:    8", "frames:       42", "cardinality:  64", "79200 (3.30 s",
                 "source rate:  44100 Hz", "checkpoint:   somewhere"):  # fmt: skip
        assert line in text, text


def corrupt(tmp_path: Path, name: str, codes: np.ndarray | None = None, **meta: str | None) -> Path:
    """A codes file with `codes` and metadata overrides (None deletes a key)."""
    good = good_codes()
    metadata = {**good.metadata(), **meta}
    metadata = {k: v for k, v in metadata.items() if v is not None}
    tensors = {"codes": (good.codes.astype(np.uint16) if codes is None else codes)}
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


BAD_CODES = {
    "out_of_range": (dict(codes=np.full((8, 42), 64, np.uint16)), "out of range"),
    "negative": (dict(codes=np.full((8, 42), -1, np.int32)), "out of range"),
    "three_dims": (dict(codes=np.zeros((1, 8, 42), np.uint16)), "shape"),
    "float_codes": (dict(codes=np.zeros((8, 42), np.float32)), "integers"),
    "codebook_count": (dict(num_codebooks="4"), "codebooks"),
    "length": (dict(num_samples="1000"), "num_samples"),
    "no_format": (dict(format=None), "not a Mimi codes file"),
    "version": (dict(version="2"), "version 2"),
    "not_a_number": (dict(sample_rate="fast"), "not a number"),
    "missing_key": (dict(cardinality=None), "lacks 'cardinality'"),
    "frame_size": (dict(frame_size="1000"), "frame_size"),
}


@pytest.mark.parametrize("case", sorted(BAD_CODES))
def test_bad_codes_files(capsys, tmp_path, ckpt, case):
    kwargs, message = BAD_CODES[case]
    codes = kwargs.pop("codes", None)
    path = corrupt(tmp_path, case, codes, **kwargs)
    with pytest.raises(CodesFileError, match=message):
        load_codes(path)
    out = tmp_path / "out.wav"
    status, err = run(capsys, "decode", path, out, "--checkpoint", ckpt)
    assert status == 1 and message in err
    assert_one_line_error(err)
    assert not out.exists()


def test_codes_for_another_codec(capsys, tmp_path, ckpt):
    path = corrupt(tmp_path, "big", cardinality="2048")  # valid file, but our checkpoint has 64
    status, err = run(capsys, "decode", path, tmp_path / "o.wav", "--checkpoint", ckpt)
    assert status == 1 and "do not fit this checkpoint" in err
    assert_one_line_error(err)


# -- bad inputs ------------------------------------------------------------------------------------
def bad_audio(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not audio\n")
    elif kind == "random":
        path = tmp_path / "random.flac"
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":
        sf.write(path, np.zeros(4800, np.float32), 24000)
        path.write_bytes(path.read_bytes()[:30])
    elif kind == "no_samples":
        sf.write(path, np.zeros(0, np.float32), 24000)
    elif kind == "folder":
        path.mkdir()
    elif kind == "nan":
        sf.write(path, np.full(4800, np.nan, np.float32), 24000, subtype="FLOAT")
    return path  # "missing": never created


@pytest.mark.parametrize(
    "kind", ["missing", "empty", "text", "random", "truncated", "no_samples", "folder", "nan"]
)
@pytest.mark.parametrize("command", ["encode", "roundtrip"])
def test_bad_audio_input(capsys, tmp_path, ckpt, kind, command):
    out = tmp_path / ("o.safetensors" if command == "encode" else "o.wav")
    status, err = run(capsys, command, bad_audio(tmp_path, kind), out, "--checkpoint", ckpt)
    assert status == 1
    assert_one_line_error(err)
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["encode", "IN", "o.safetensors", "-n", "0"],
        ["encode", "IN", "o.safetensors", "-n", "33"],
        ["roundtrip", "IN", "o.wav", "--num-quantizers", "many"],
        ["decode", "c.safetensors", "o.wav", "-n", "40"],
        ["encode", "IN", "o.wav"],  # audio name for a codes file
        ["roundtrip", "IN", "o.unknown"],
        ["roundtrip", "IN", "o.wav", "--stream", "--no-stream"],
        ["encode", "IN"],
        ["transcode", "IN", "o.wav"],
        [],
    ],
)
def test_usage_errors(capsys, tmp_path, speech_wav, args):
    args = [str(speech_wav) if a == "IN" else a for a in args]
    status, err = run(capsys, *args)
    assert status == 2
    assert_one_line_error(err)


def test_help(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "mimi-mlx encode" in text
    assert main(["encode", "--help"]) == 0
    assert "--num-quantizers" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["missing_folder", "parent_is_file", "is_folder", "read_only"])
def test_unwritable_output(capsys, tmp_path, ckpt, speech_wav, where):
    if where == "missing_folder":
        out = tmp_path / "nowhere" / "o.wav"
    elif where == "parent_is_file":
        out = speech_wav / "o.wav"
    elif where == "is_folder":
        out = tmp_path / "folder.wav"
        out.mkdir()
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write into read-only folders")
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        out = folder / "o.wav"
    status, err = run(capsys, "roundtrip", speech_wav, out, "--checkpoint", ckpt)
    assert status == 1
    assert_one_line_error(err)


def test_checkpoint_not_found(capsys, tmp_path, ckpt, speech_wav):
    status, err = run(capsys, "encode", speech_wav, tmp_path / "c.safetensors",
                      "--checkpoint", tmp_path / "no_such_ckpt")  # fmt: skip
    assert status == 1 and "no_such_ckpt" in err
    assert_one_line_error(err)
    # Codes made with a checkpoint that has since gone: decode says so.
    moved = tmp_path / "moved_ckpt"
    shutil.copytree(ckpt, moved)
    codes_path = tmp_path / "c.safetensors"
    assert run(capsys, "encode", speech_wav, codes_path, "--checkpoint", moved)[0] == 0
    shutil.rmtree(moved)
    status, err = run(capsys, "decode", codes_path, tmp_path / "o.wav")
    assert status == 1 and "--checkpoint" in err
    assert_one_line_error(err)
    assert run(capsys, "decode", codes_path, tmp_path / "o.wav", "--checkpoint", ckpt)[0] == 0


def test_existing_output_needs_force(capsys, tmp_path, ckpt, speech_wav):
    codes_path, out = tmp_path / "c.safetensors", tmp_path / "o.wav"
    for path in (codes_path, out):
        path.write_bytes(b"keep me")
    cases = [
        ["encode", speech_wav, codes_path, "--checkpoint", ckpt],
        ["roundtrip", speech_wav, out, "--checkpoint", ckpt],
    ]
    for args in cases:
        status, err = run(capsys, *args)
        assert status == 1 and "--force" in err
        assert_one_line_error(err)
    assert codes_path.read_bytes() == out.read_bytes() == b"keep me"
    for args in cases:
        assert run(capsys, *args, "--force") == (0, "")
    assert load_codes(codes_path).num_codebooks == 8
    assert sf.info(out).frames == int(SECONDS * 24000)
    status, err = run(capsys, "decode", codes_path, out)
    assert status == 1 and "--force" in err


def test_failure_leaves_no_partial_output(capsys, tmp_path, monkeypatch, ckpt, speech_wav):
    out = tmp_path / "o.wav"
    out.write_bytes(b"keep me")
    calls = []

    def failing_decode_step(self, codes):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom")
        return original(self, codes)

    original = Mimi.decode_step
    monkeypatch.setattr(Mimi, "decode_step", failing_decode_step)
    status, err = run(capsys, "roundtrip", speech_wav, out, "--checkpoint", ckpt, "--stream", "-f")
    assert status == 1 and "boom" in err
    assert_one_line_error(err)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.wav"]


# -- the installed command -------------------------------------------------------------------------
def test_console_script(tmp_path, ckpt, speech_wav):
    exe = shutil.which("mimi-mlx")
    assert exe, "the mimi-mlx console script is not installed (pip install -e .)"
    out = tmp_path / "rt.wav"
    done = subprocess.run([exe, "roundtrip", str(speech_wav), str(out), "--checkpoint", str(ckpt)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sf.info(out).frames == int(SECONDS * 24000)
    # A hub repo id that is not cached, offline: one line, exit 1, quickly.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([exe, "encode", str(speech_wav), str(tmp_path / "c.safetensors"),
                           "--checkpoint", "nobody/no-such-mimi"],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 1
    assert_one_line_error(done.stderr)
    assert "nobody/no-such-mimi" in done.stderr and "cache" in done.stderr
    done = subprocess.run([sys.executable, "-m", "mimi_mlx", "--help"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and "roundtrip" in done.stdout
