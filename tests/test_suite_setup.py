"""The test command itself: scripts/test.sh installs PyTorch's CPU build from PyTorch's CPU
index, falling back to the plain pin where that index is unreachable; a passing run leaves no
temporary folders; skipped live-audio tests are reported loudly at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def run_test_script(tmp_path: Path, index_reachable: bool) -> list[str]:
    """scripts/test.sh with `python3` and `ruff` replaced by recorders; returns their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    fail = "" if index_reachable else f'case "$*" in *{CPU_INDEX}*) exit 1;; esac\n'
    for name in ("python3", "ruff"):
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n{fail}exit 0\n')
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "test.sh"), "-k", "x"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def test_torch_cpu_build_from_pytorchs_index(tmp_path):
    calls = run_test_script(tmp_path, index_reachable=True)
    torch = [c for c in calls if "torch==" in c]
    assert torch == [f"python3 -m pip install -q --retries 0 --timeout 20 torch==2.13.0 "
                     f"--index-url {CPU_INDEX}"]  # fmt: skip
    assert calls[-1] == "python3 -m pytest -q -k x"


def test_torch_falls_back_to_the_plain_pin(tmp_path):
    calls = run_test_script(tmp_path, index_reachable=False)
    torch = [c for c in calls if "torch==" in c]
    assert len(torch) == 2 and CPU_INDEX in torch[0]
    assert torch[1] == "python3 -m pip install -q torch==2.13.0"
    assert calls[-1] == "python3 -m pytest -q -k x"


def test_a_passing_run_leaves_no_temporary_folders():
    import configparser  # (tomllib is Python 3.11+; these lines are plain `key = value`)

    text = (REPO / "pyproject.toml").read_text()
    section = text[text.index("[tool.pytest.ini_options]") :].split("\n[", 1)[0]
    parser = configparser.ConfigParser()
    parser.read_string(section.replace("[tool.pytest.ini_options]", "[pytest]"))
    assert parser["pytest"]["tmp_path_retention_policy"] == '"failed"'
    assert parser["pytest"]["tmp_path_retention_count"] == "1"


def run_pytest(tmp_path: Path, reason: str) -> str:
    (tmp_path / "test_live.py").write_text(
        f"import pytest\n\ndef test_chat():\n    pytest.skip({reason!r})\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "live_audio_report", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_live.py")],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_missing_live_audio_packages_are_reported_loudly(tmp_path):
    reason = "PulseAudio or PortAudio is not installed (no pactl): apt-get install pulseaudio"
    out = run_pytest(tmp_path, reason)
    assert "LIVE AUDIO NOT TESTED" in out and "did not test `moshi-mlx chat`" in out
    assert "no pactl" in out
    assert "LIVE AUDIO" not in run_pytest(tmp_path, "this machine has real audio devices")
