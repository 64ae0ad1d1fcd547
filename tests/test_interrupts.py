"""Interrupted and failing runs lose nothing: SIGTERM ends `mimi-mlx`, `moshi-mlx run` and
`moshi-mlx-quantize` like Ctrl-C (partial outputs removed, exit status 143); what a killed run
left behind is removed by the next run; a full disk says so and leaves nothing; a quantized
checkpoint shares no storage with its source; written files follow the umask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from moshi_app import REPO, speech_wav, tiny_checkpoint

from mimi_mlx.cli import main as mimi_main
from mimi_mlx.constants import KYUTAI_FILE
from moshi_mlx.cli import main as moshi_main
from quantize.cli import main as quantize_main

__all__ = ["speech_wav", "tiny_checkpoint"]  # fixtures used here


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def start_slow(tool: str, *args) -> subprocess.Popen:
    """The real tool, each output block 30 s slow (tests/slow_tool.py), in its own process."""
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "slow_tool.py"), tool, "30", *map(str, args)],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def terminate_once_writing(proc: subprocess.Popen, folder: Path, marker: str) -> str:
    """Wait until a partial output (a name containing `marker`) appears, send SIGTERM, and
    return stderr."""
    deadline = time.monotonic() + 120
    while not any(marker in n for n in names(folder)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no partial output appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return err


@pytest.mark.parametrize("tool", ["mimi-mlx", "moshi-mlx", "moshi-mlx-quantize"])
def test_sigterm_removes_partial_outputs(tool, tiny_checkpoint, speech_wav, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "mimi-mlx": ["roundtrip", speech_wav, out / "rt.wav", "--checkpoint", tiny_checkpoint],
        "moshi-mlx": ["run", speech_wav, out / "answer.wav", "--checkpoint", tiny_checkpoint],
        "moshi-mlx-quantize": [tiny_checkpoint, out / "q8", "--recipe", "q8"],
    }[tool]
    proc = start_slow(tool, *args)
    marker = ".incomplete-" if tool == "moshi-mlx-quantize" else ".partial"
    err = terminate_once_writing(proc, out, marker)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("error: terminated"), err
    assert "Traceback" not in err
    assert names(out) == []


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_rerun_removes_what_a_killed_run_left(tiny_checkpoint, speech_wav, tmp_path, capsys):
    dead = dead_pid()
    alive = subprocess.Popen(["sleep", "60"])  # another run still writing: left alone
    try:
        stale = [
            tmp_path / f".rt.wav.{dead}.partial",
            tmp_path / f".q8.incomplete-{dead}-0badf00d",
            tmp_path / f".q8.old-{dead}-0badf00d",
        ]
        stale[0].write_bytes(b"x" * 1000)
        for folder in stale[1:]:
            folder.mkdir()
            (folder / "model.q8.safetensors").write_bytes(b"x" * 1000)
        busy = [
            tmp_path / f".rt.wav.{alive.pid}.partial",
            tmp_path / f".q8.incomplete-{alive.pid}-1",
        ]
        busy[0].write_bytes(b"x")
        busy[1].mkdir()
        rt = ["roundtrip", speech_wav, tmp_path / "rt.wav", "--checkpoint", tiny_checkpoint]
        assert mimi_main([str(a) for a in rt]) == 0
        assert quantize_main([str(tiny_checkpoint), str(tmp_path / "q8"), "--quiet"]) == 0
        assert names(tmp_path) == sorted([p.name for p in busy] + ["q8", "rt.wav"])
    finally:
        alive.kill()
        alive.wait()
    capsys.readouterr()


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (root only: elsewhere the test is skipped)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_is_named_and_leaves_nothing(full_disk, tiny_checkpoint, speech_wav, capsys):
    ckpt = ["--checkpoint", tiny_checkpoint]
    runs = [
        (mimi_main, ["roundtrip", speech_wav, full_disk / "rt.wav", *ckpt]),
        (moshi_main, ["run", speech_wav, full_disk / "a.wav", *ckpt, "-q"]),
        (quantize_main, [tiny_checkpoint, full_disk / "q8", "--recipe", "q8", "--quiet"]),
    ]
    for main, args in runs:
        assert main([str(a) for a in args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "No space left on device" in err, err
        assert names(full_disk) == []


def test_quantized_output_shares_no_storage_with_its_source(tiny_checkpoint, tmp_path, capsys):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_checkpoint, source)
    assert quantize_main([str(source), str(tmp_path / "q8"), "--recipe", "q8", "--quiet"]) == 0
    copied = tmp_path / "q8" / KYUTAI_FILE
    before = copied.read_bytes()
    for name in (KYUTAI_FILE, "tokenizer_spm_32k_3.model"):
        assert (tmp_path / "q8" / name).stat().st_nlink == 1, name
    with open(source / KYUTAI_FILE, "r+b") as f:  # rewrite the source in place
        f.seek(len(before) // 2)
        f.write(b"\xff" * 64)
    assert copied.read_bytes() == before
    capsys.readouterr()


def test_outputs_follow_the_umask(tiny_checkpoint, speech_wav, tmp_path, capsys):
    codes = tmp_path / "codes.safetensors"
    old = os.umask(0o022)
    try:
        assert (
            mimi_main(["encode", str(speech_wav), str(codes), "--checkpoint", str(tiny_checkpoint)])
            == 0
        )
        assert mimi_main(["decode", str(codes), str(tmp_path / "d.wav")]) == 0
    finally:
        os.umask(old)
    for path in (codes, tmp_path / "d.wav"):
        assert path.stat().st_mode & 0o777 == 0o644, (path, oct(path.stat().st_mode))
    out = capsys.readouterr().out
    assert f"wrote {codes}: 8 codebooks x" in out and f"wrote {tmp_path / 'd.wav'}: " in out
