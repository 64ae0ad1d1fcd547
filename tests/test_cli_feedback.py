"""The first minutes with the tools: options checked before the long work, one-line usage
errors, codes files checked before any cast, one rule for a Mimi file's config, a safe tiny
checkpoint script, the CPU-backend warning for live chat with a large model, the OpenBLAS hint,
absolute paths in JSON outputs, and documentation that cites only files that exist."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from moshi_app import REPO, speech_wav, tiny_checkpoint
from safetensors.numpy import save_file

from mimi_mlx.cli import main as mimi_main
from mimi_mlx.codes_file import MimiCodes
from mimi_mlx.constants import KYUTAI_FILE
from mimi_mlx.io.hub import CheckpointError
from moshi_mlx.cli import main as moshi_main
from quantize.cli import main as quantize_main

__all__ = ["speech_wav", "tiny_checkpoint"]  # fixtures used here

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")


def one_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- moshi-mlx-quantize ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, fragment",
    [
        ([], "required"),
        (["only-a-source"], "required: output"),
        (["src", "out", "--steps", "0"], "must be 1 or more, got 0"),
        (["src", "out", "--steps", "-3"], "must be 1 or more, got -3"),
        (["report", "src", "q4", "--batch", "0"], "must be 1 or more, got 0"),
        (["report", "src", "q4", "--steps", "x"], "not a whole number"),
        (["report", "src"], "required: quantized"),
    ],
)
def test_quantize_usage_errors_are_one_line(capsys, argv, fragment):
    assert quantize_main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert fragment in err and "--help" in err


def test_quantize_checks_the_report_audio_before_converting(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "q8"
    argv = [tiny_checkpoint, out, "--recipe", "q8", "--report", "--audio", tmp_path / "no.wav"]
    start = time.perf_counter()
    assert quantize_main([str(a) for a in argv]) == 1
    err = one_line(capsys.readouterr().err)
    assert "no.wav" in err and not out.exists()  # nothing was converted
    assert time.perf_counter() - start < 5
    assert quantize_main([str(tiny_checkpoint), str(out), "--audio", "x.wav"]) == 2
    assert "add --report" in one_line(capsys.readouterr().err)


# -- mimi-mlx -------------------------------------------------------------------------------------
def test_codes_out_of_range_in_any_integer_dtype(tmp_path, capsys):
    """2**40 in an int64 file wrapped to 0 in a cast to int32 and passed; checked before now."""
    meta = MimiCodes(np.zeros((8, 3), np.int32), num_samples=3 * 1920).metadata()
    cases = [(np.int64, 2**40), (np.uint64, 2**63 + 5), (np.int32, -1), (np.uint32, 2**32 - 1)]
    for dtype, bad in cases:
        codes = np.zeros((8, 3), dtype)
        codes[2, 1] = bad
        path = tmp_path / f"{np.dtype(dtype).name}.safetensors"
        save_file({"codes": codes}, str(path), metadata=meta)
        assert mimi_main(["info", str(path)]) == 1
        err = one_line(capsys.readouterr().err)
        assert "out of range" in err and str(bad) in err, err
        assert mimi_main(["decode", str(path), str(tmp_path / "x.wav")]) == 1
        assert "out of range" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "x.wav").exists()


def test_a_mimi_file_is_read_with_its_folders_config(tiny_checkpoint, speech_wav, tmp_path, capsys):
    """`--checkpoint FOLDER/tokenizer-....safetensors` uses the mimi_config.json the folder's
    config.json names, as `--checkpoint FOLDER` (and moshi-mlx) do."""
    by_folder, by_file = tmp_path / "folder.wav", tmp_path / "file.wav"
    rt = ["roundtrip", str(speech_wav)]
    assert mimi_main([*rt, str(by_folder), "--checkpoint", str(tiny_checkpoint)]) == 0
    assert mimi_main([*rt, str(by_file), "--checkpoint", str(tiny_checkpoint / KYUTAI_FILE)]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(sf.read(by_file)[0], sf.read(by_folder)[0])


def test_mimi_mlx_says_what_it_wrote(tiny_checkpoint, speech_wav, tmp_path, capsys):
    codes, out = tmp_path / "c.safetensors", tmp_path / "d.wav"
    ckpt = ["--checkpoint", str(tiny_checkpoint)]
    assert mimi_main(["encode", str(speech_wav), str(codes), *ckpt, "-n", "4"]) == 0
    assert mimi_main(["decode", str(codes), str(out), "--float"]) == 0
    assert mimi_main(["roundtrip", str(speech_wav), str(tmp_path / "r.wav"), *ckpt]) == 0
    lines = capsys.readouterr().out.splitlines()
    seconds = sf.info(str(speech_wav)).duration
    frames = -(-round(seconds * 24000) // 1920)
    assert lines[0] == f"wrote {codes}: 4 codebooks x {frames} frames ({seconds:.2f} s of audio)"
    assert lines[1] == f"wrote {out}: {seconds:.2f} s at 24000 Hz (4 codebooks, 32-bit float)"
    assert lines[2].startswith(f"wrote {tmp_path / 'r.wav'}: ") and "8 codebooks" in lines[2]


# -- scripts/make_tiny_checkpoint.py --------------------------------------------------------------
def test_make_tiny_checkpoint_never_overwrites(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "mtc", REPO / "scripts" / "make_tiny_checkpoint.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "file").write_text("mine")
    assert script.main([str(tmp_path / "file")]) == 1
    assert "is a file" in one_line(capsys.readouterr().err)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text("mine")
    assert script.main([str(taken)]) == 1
    assert "--force" in one_line(capsys.readouterr().err)
    assert (taken / "config.json").read_text() == "mine" and (
        tmp_path / "file"
    ).read_text() == "mine"
    assert (
        script.main([str(tmp_path / "new")]) == 0 and (tmp_path / "new" / "config.json").is_file()
    )


# -- moshi-mlx ------------------------------------------------------------------------------------
def test_chat_duration_must_be_positive(capsys):
    for value in ("0", "-1", "inf"):
        assert moshi_main(["chat", "--duration", value]) == 2
        assert "--duration" in one_line(capsys.readouterr().err)


def test_live_chat_with_a_large_model_on_the_cpu_backend_is_warned(
    tiny_checkpoint, tmp_path, capsys
):
    """A repo without config.json is the 7B model: on the CPU backend the chat says it needs
    Apple silicon and what works here, before the (here failing) load; `run` does not."""
    from moshi_mlx.commands import options

    folder = tmp_path / "seven-b"
    folder.mkdir()
    for name in (KYUTAI_FILE, "tokenizer_spm_32k_3.model"):
        shutil.copy(tiny_checkpoint / name, folder / name)
    shutil.copy(tiny_checkpoint / "model.safetensors", folder / "model.q4.safetensors")
    for live in (True, False):
        with pytest.raises(CheckpointError):
            options.load(str(folder), live=live)
        err = capsys.readouterr().err
        assert ("needs Apple silicon" in err and "moshi-mlx run" in err) == live, err
    options.load(str(tiny_checkpoint), live=True)  # a small model: no warning
    assert capsys.readouterr().err == ""


def test_json_outputs_record_absolute_paths(
    tiny_checkpoint, speech_wav, tmp_path, monkeypatch, capsys
):
    shutil.copy(speech_wav, tmp_path / "in.wav")
    shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    assert moshi_main(["run", "in.wav", "out.wav", "--checkpoint", "ckpt", "-q"]) == 0
    capsys.readouterr()
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["input"] == str((tmp_path / "in.wav").resolve())
    assert data["checkpoint"] == str((tmp_path / "ckpt").resolve())


def test_quantize_report_records_absolute_paths(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    shutil.copytree(tiny_checkpoint, tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    argv = ["src", "q8", "--recipe", "q8", "--quiet", "--report", "--steps", "4", "--batch", "1"]
    assert quantize_main(argv) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "q8" / "quantization_report.json").read_text())
    assert report["source"] == str((tmp_path / "src").resolve())


def test_hub_downloads_show_no_bars_into_a_pipe(capsys):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    from mimi_mlx.io.cli_support import quiet_hub_logs

    try:
        quiet_hub_logs()  # stderr is captured here: not a terminal
        assert are_progress_bars_disabled()
    finally:
        enable_progress_bars()


# -- the OpenBLAS hint ----------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_reference_blas_hint_once_on_a_terminal(tmp_path):
    import pty

    codes = tmp_path / "c.safetensors"
    meta = MimiCodes(np.zeros((8, 3), np.int32), num_samples=5760).metadata()
    save_file({"codes": np.zeros((8, 3), np.uint16)}, str(codes), metadata=meta)

    def stderr_on_a_terminal(preload: str) -> str:
        main, sub = pty.openpty()
        env = {**os.environ, "LD_PRELOAD": preload}
        argv = [sys.executable, "-m", "mimi_mlx", "info", str(codes)]
        done = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=sub, cwd=REPO)
        os.close(sub)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(main)
        assert done.returncode == 0
        return b"".join(chunks).decode()

    err = stderr_on_a_terminal("")
    assert err.count("hint: MLX runs on the reference BLAS") == 1 and "LD_PRELOAD" in err, err
    if OPENBLAS.exists():
        assert "hint" not in stderr_on_a_terminal(str(OPENBLAS))


# -- documentation --------------------------------------------------------------------------------
def test_every_cited_notes_file_exists():
    """Docstrings and READMEs cite only files that are in the repository."""
    cited = []
    for path in [*REPO.glob("**/*.py"), *REPO.glob("**/*.md")]:
        if ".git" in path.parts:
            continue
        for ref in re.findall(r"`((?:notes|docs)/[\w./-]+\.md)`", path.read_text()):
            cited.append((path.name, ref))
            assert (REPO / ref).is_file(), (
                f"{path.name} cites {ref}, which is not in the repository"
            )
