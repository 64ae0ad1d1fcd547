"""Bad input gives a clear one-line error and leaves nothing behind: unknown recipes and bits,
sources that are not Moshi checkpoints, outputs that exist, cannot be created or fill the disk,
and interrupted conversions. Tests run as root: read-only and full disks are simulated."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from quantize_sources import build_sources

import quantize.writer as writer
from quantize import OutputError, RecipeError, convert
from quantize.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_refs):
    return build_sources(tmp_path_factory.mktemp("quantize_sources"), tiny_refs.hf_dir)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_one_line_error(code: int, err: str, fragment: str, status: int = 1) -> None:
    assert code == status  # 1 a failure, 2 a usage error
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], err


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--recipe", "q5"], "unknown recipe 'q5'"),
        (["--recipe", "q4", "--embeddings", "q7"], "unsupported bits 7"),
        (["--recipe", "helium=q4g100"], "unsupported group size 100"),
        (["--recipe", "q4,decoder=q8"], "unknown recipe part 'decoder'"),
    ],
)
def test_bad_recipe(sources, tmp_path, capsys, args, fragment):
    code, _, err = run_cli(capsys, sources.pytorch, tmp_path / "out", *args)
    assert_one_line_error(code, err, fragment, status=2)  # the command line alone is wrong
    assert leftovers(tmp_path) == []


def test_sources_that_are_not_moshi_checkpoints(sources, tmp_path, capsys):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.safetensors").write_text("not a checkpoint")
    empty = tmp_path / "empty"
    empty.mkdir()
    other_size = tmp_path / "other_size"
    shutil.copytree(sources.pytorch, other_size)
    cfg = json.loads((other_size / "config.json").read_text())
    (other_size / "config.json").write_text(json.dumps({**cfg, "num_layers": 3}))
    cases = [
        (sources.mlx / "tokenizer-e351c8d8-checkpoint125.safetensors", "Mimi (audio codec)"),
        (garbage, "cannot read"),
        (empty, "holds no Moshi weights"),
        (tmp_path / "nowhere", "no such file or folder"),
        (other_size, "missing (6): transformer.layers.2"),
    ]
    for source, fragment in cases:
        out = tmp_path / "out"
        code, _, err = run_cli(capsys, source, out, "--recipe", "q8")
        assert_one_line_error(code, err, fragment)
        assert not out.exists()


def test_quantized_source_is_refused(sources, tmp_path, capsys):
    quantized = convert(sources.mlx, tmp_path / "q4", "q4", progress=False).output
    code, _, err = run_cli(capsys, quantized, tmp_path / "again", "--recipe", "q8")
    assert_one_line_error(code, err, "already quantized")


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_output_that_cannot_be_created(sources, tmp_path, capsys, where):
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "sub" / "q4"
    else:
        out = Path("/proc/moshi-quantize-test/q4")  # not writable, even by root
    code, _, err = run_cli(capsys, sources.pytorch, out, "--recipe", "q4", "--quiet")
    assert_one_line_error(code, err, "cannot create")
    assert not out.exists()
    assert leftovers(tmp_path) == (["file"] if where == "under_a_file" else [])


def fail_after(monkeypatch, n: int, exc: BaseException) -> None:
    """Make the n-th tensor write fail (a full disk, Ctrl-C)."""
    write = writer.SafetensorsWriter.write
    calls = []

    def failing(self, name, array):
        calls.append(name)
        if len(calls) == n:
            raise exc
        return write(self, name, array)

    monkeypatch.setattr(writer.SafetensorsWriter, "write", failing)


def test_full_disk_leaves_nothing(sources, tmp_path, monkeypatch, capsys):
    fail_after(monkeypatch, 5, OSError(errno.ENOSPC, "No space left on device"))
    out = tmp_path / "new" / "nested" / "q4"
    with pytest.raises(OutputError, match="No space left on device"):
        convert(sources.pytorch, out, "q4", progress=False)
    assert leftovers(tmp_path) == []  # not even the parents it created
    fail_after(monkeypatch, 5, OSError(errno.ENOSPC, "No space left on device"))
    code, _, err = run_cli(capsys, sources.pytorch, out, "--quiet")
    assert_one_line_error(code, err, "No space left on device")
    assert leftovers(tmp_path) == []


def test_interrupted_conversion_keeps_the_previous_checkpoint(sources, tmp_path, monkeypatch):
    out = tmp_path / "q8"
    convert(sources.pytorch, out, "q8", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    fail_after(monkeypatch, 7, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        convert(sources.pytorch, out, "q4", force=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == ["q8"]


def test_interrupt_in_the_cli(sources, tmp_path, monkeypatch, capsys):
    fail_after(monkeypatch, 3, KeyboardInterrupt())
    code = main([str(sources.pytorch), str(tmp_path / "q4"), "--quiet"])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_existing_output_needs_force(sources, tmp_path, capsys):
    out = tmp_path / "q4"
    assert run_cli(capsys, sources.pytorch, out, "--quiet")[0] == 0
    (out / "stale.txt").write_text("from an older conversion")
    code, _, err = run_cli(capsys, sources.pytorch, out, "--quiet", "--recipe", "q8")
    assert_one_line_error(code, err, "already exists; pass --force")
    assert (out / "model.q4.safetensors").exists()
    code, out_text, _ = run_cli(
        capsys, sources.pytorch, out, "--quiet", "--recipe", "q8", "--force"
    )
    assert code == 0 and "wrote" in out_text
    assert leftovers(out) == sorted(
        [
            "config.json",
            "mimi_config.json",
            "model.q8.safetensors",
            "tokenizer-e351c8d8-checkpoint125.safetensors",
            "tokenizer_spm_32k_3.model",
        ]
    )
    assert leftovers(tmp_path) == ["q4"]


def test_force_never_deletes_what_is_not_a_checkpoint(sources, tmp_path, capsys):
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code, _, err = run_cli(capsys, sources.pytorch, precious, "--force", "--quiet")
    assert_one_line_error(code, err, "not a checkpoint folder")
    assert (precious / "notes.txt").read_text() == "keep me"
    copy = tmp_path / "source"
    shutil.copytree(sources.pytorch, copy)
    code, _, err = run_cli(capsys, copy, copy, "--force", "--quiet")
    assert_one_line_error(code, err, "would overwrite the input", status=2)
    assert (copy / "model.safetensors").exists()


def test_library_raises_typed_errors(sources, tmp_path):
    with pytest.raises(RecipeError):
        convert(sources.pytorch, tmp_path / "x", "q9")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        convert(sources.pytorch, tmp_path / "file", "q4", progress=False)


def test_python_dash_m_entry_point(sources, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "quantize", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )

    help_text = run("--help")
    assert help_text.returncode == 0 and "q4-mlp" in help_text.stdout
    assert "default q4: 4 bits" in " ".join(help_text.stdout.split())  # the default recipe
    bad = run(sources.pytorch, tmp_path / "out", "--recipe", "int3")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert_one_line_error(bad.returncode, bad.stderr, "unknown recipe 'int3'", status=2)
    ok = run(sources.pytorch, tmp_path / "out", "--recipe", "q8")
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and ok.stderr == ""  # no progress bar into a pipe
