"""`moshi-mlx chat` with every bad input: each a one-line error, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from moshi_app import REPO, cli, huge_checkpoint, tiny_checkpoint
from pulse_audio import pulse

__all__ = ["pulse", "tiny_checkpoint"]  # fixtures used here

NO_AUDIO = {"PULSE_SERVER": "unix:/nonexistent/socket"}  # PortAudio then sees no device here


def one_line_error(r: subprocess.CompletedProcess, status: int = 1) -> str:
    assert r.returncode == status, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def _devices_without_pulse() -> int | None:
    """Audio devices PortAudio sees without the PulseAudio daemon (None: no PortAudio)."""
    probe = "import sounddevice as sd; print(len(sd.query_devices()))"
    r = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, **NO_AUDIO},
        capture_output=True,
        text=True,
    )
    return int(r.stdout) if r.returncode == 0 else None


def test_no_audio_device(tiny_checkpoint):
    count = _devices_without_pulse()
    if count is None:
        pytest.skip("PortAudio is not installed (apt-get install libportaudio2)")
    if count:
        pytest.skip("this machine has real audio devices: cannot test 'no device'")
    err = one_line_error(cli("chat", "--checkpoint", tiny_checkpoint, env=NO_AUDIO))
    assert "no audio input device found" in err and "--list-devices" in err
    r = cli("chat", "--list-devices", env=NO_AUDIO)
    assert r.returncode == 0 and "no audio devices found" in r.stdout


def test_missing_portaudio_names_the_package(tiny_checkpoint):
    # As on a Linux machine without libportaudio2: the library search finds nothing.
    code = (
        "import ctypes.util, sys\n"
        "find = ctypes.util.find_library\n"
        "ctypes.util.find_library = lambda n: None if 'portaudio' in n else find(n)\n"
        "from moshi_mlx.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    for args in (["chat", "--checkpoint", str(tiny_checkpoint)], ["chat", "--list-devices"]):
        r = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True
        )
        err = one_line_error(r)
        assert "PortAudio library was not found" in err and "apt-get install libportaudio2" in err


def test_unknown_devices_and_listing(pulse, tiny_checkpoint):
    r = cli("chat", "--list-devices", env=pulse.env)
    assert r.returncode == 0 and "default" in r.stdout and "24 kHz ok" in r.stdout, r.stdout
    for option, kind in (("--input-device", "input"), ("--output-device", "output")):
        err = one_line_error(
            cli("chat", "--checkpoint", tiny_checkpoint, option, "no-such-device", env=pulse.env)
        )
        assert f"no {kind} device matches 'no-such-device'" in err
        err = one_line_error(
            cli("chat", "--checkpoint", tiny_checkpoint, option, "99", env=pulse.env)
        )
        assert f"no {kind} device matches '99'" in err


def test_no_network_and_no_cached_weights(pulse, tmp_path):
    env = {**pulse.env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    err = one_line_error(cli("chat", env=env))
    assert "kyutai/moshiko-mlx-q4" in err and "hf download" in err
    assert "--checkpoint" in err
    err = one_line_error(cli("chat", "--voice", "moshika", env=env))
    assert "kyutai/moshika-mlx-q4" in err


def test_not_enough_memory(pulse, tiny_checkpoint, tmp_path):
    big = huge_checkpoint(tiny_checkpoint, tmp_path / "big")
    err = one_line_error(cli("chat", "--checkpoint", big, env=pulse.env))
    assert "not enough memory" in err and "available" in err


def test_bad_record_folder_and_options(pulse, tiny_checkpoint, tmp_path):
    (tmp_path / "file").write_text("x")
    err = one_line_error(
        cli("chat", "--checkpoint", tiny_checkpoint, "--record", tmp_path / "file", env=pulse.env)
    )
    assert "needs a folder" in err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "user.wav").write_text("x")
    err = one_line_error(
        cli("chat", "--checkpoint", tiny_checkpoint, "--record", taken, env=pulse.env)
    )
    assert "exists" in err and "--force" in err
    err = one_line_error(cli("chat", "--max-lag", "0"), status=2)
    assert "must be 1 or more" in err
    err = one_line_error(cli("chat", "--hf-repo", "a/b", "--voice", "moshika"), status=2)
    assert "not allowed with" in err
