"""Real-time audio devices without a sound card: a user-mode PulseAudio daemon with null sinks.

`spk` is the speaker (record it from `spk.monitor`), `mic` a sink whose monitor is the default
source (play into `mic` and it comes out of the microphone). PortAudio reaches them through
ALSA's pulse plugin, with real-time callbacks. Everything started here is stopped by pid (and
the daemon with `pactl exit`).

What this rests on (measured on Debian CI machines without a sound card):
- Debian packages `libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins`; without
  `libportaudio2`, `import sounddevice` fails ("PortAudio library not found"). Kernel audio
  modules (snd-aloop, snd-dummy) cannot be loaded in containers, and ALSA's null/file plugins run
  free instead of in real time.
- The daemon runs with `-n` and a private unix socket (`auth-anonymous=1`); null sinks at 24 kHz
  mono float32; `PULSE_SERVER` is exported before sounddevice is imported. Callbacks of 1920
  frames then come every 80 ms, and what is played into a sink comes back bit-exact from its
  monitor.
- An idle null sink renders in 2 s blocks, so a new stream may start up to 2 s late: a silent
  low-latency `pacat` from /dev/zero keeps each sink awake (until its latency is under 100 ms).
- `paplay` feeds the microphone in real time; `parec` records the speaker into a file (an unread
  pipe fills in under a second and cuts the recording).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

PACKAGES = "pulseaudio pulseaudio-utils libasound2-plugins libportaudio2"
RATE = 24000
RAW = ["--raw", "--format=float32le", f"--rate={RATE}", "--channels=1"]


def missing_tools() -> list[str]:
    """The programs and libraries of `PACKAGES` that this machine lacks."""
    import ctypes.util

    tools = ("pulseaudio", "pactl", "pacat", "parec", "paplay")
    missing = [t for t in tools if not shutil.which(t)]
    if ctypes.util.find_library("portaudio") is None:
        missing.append("libportaudio")
    return missing


class PulseServer:
    """A private PulseAudio daemon in `root`, with sinks `spk` and `mic` at 24 kHz float32."""

    def __init__(self, root: Path, log: Path | None = None):
        self.root = Path(root)
        self.log = Path(log) if log else self.root / "log"
        self.socket = self.root / "native"
        self.env = {
            **os.environ,
            "PULSE_SERVER": f"unix:{self.socket}",
            "XDG_RUNTIME_DIR": str(self.root),
            "HOME": str(self.root),
        }
        self.daemon: subprocess.Popen | None = None
        self.keepers: list[subprocess.Popen] = []

    def start(self) -> PulseServer:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "server.pa"
        config.write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            f"load-module module-null-sink sink_name=spk rate={RATE} channels=1 format=float32le\n"
            f"load-module module-null-sink sink_name=mic rate={RATE} channels=1 format=float32le\n"
            "set-default-sink spk\n"
            "set-default-source mic.monitor\n"
        )
        self.daemon = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(config), "--daemonize=no", "--exit-idle-time=10"]
            + ["--system=false", "--disallow-exit=no", f"--log-target=file:{self.log}"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait(lambda: self.pactl("info").returncode == 0, "the PulseAudio daemon")
        # An idle null sink renders in 2 s blocks: keep a silent low-latency stream on each.
        for sink in ("spk", "mic"):
            self.keepers.append(
                subprocess.Popen(
                    ["pacat", "--playback", f"--device={sink}", "--latency-msec=20", *RAW],
                    env=self.env,
                    stdin=open("/dev/zero", "rb"),  # noqa: SIM115 - silence, forever
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self._wait(self._low_latency, "low-latency null sinks")
        return self

    def _low_latency(self) -> bool:
        out = self.pactl("list", "sinks").stdout
        latencies = [
            float(line.split(":")[1].split()[0])
            for line in out.splitlines()
            if line.strip().startswith("Latency:")
        ]
        return len(latencies) == 2 and all(0 < x < 100_000 for x in latencies)

    def pactl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10
        )

    def _wait(self, ready, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {self.log.read_text()[-2000:]}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def play_into_mic(self, wav: Path) -> subprocess.Popen:
        """Play a file into the virtual microphone, paced in real time."""
        return subprocess.Popen(["paplay", "--device=mic", str(wav)], env=self.env)

    def record_speaker(self, raw: Path) -> subprocess.Popen:
        """Record the virtual speaker as raw float32 24 kHz mono into a file (not a pipe)."""
        out = open(raw, "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            ["parec", "--device=spk.monitor", "--latency-msec=20", *RAW],
            env=self.env,
            stdout=out,
        )
        out.close()
        return proc

    def stop(self) -> None:
        for p in self.keepers:
            p.terminate()
        for p in self.keepers:
            p.wait(timeout=5)
        self.keepers = []
        if self.daemon is not None and self.daemon.poll() is None:
            self.pactl("exit")
            try:
                self.daemon.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.daemon.terminate()
                self.daemon.wait(timeout=5)


_server: PulseServer | None = None  # one daemon per test session, whichever module asks first


@pytest.fixture(scope="session")
def pulse(tmp_path_factory):
    """A running PulseAudio daemon with virtual speaker and microphone (skipped without one).

    Test modules import this fixture, which pytest then treats as one fixture per module: the
    daemon is shared through `_server`, and stopped by the instance that started it.
    """
    global _server
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"PulseAudio or PortAudio is not installed (no {', '.join(missing)}): "
            f"apt-get install {PACKAGES}"
        )
    if _server is not None:
        yield _server
        return
    # a short socket path: unix sockets are limited to about 100 characters
    root = Path(tempfile.mkdtemp(prefix="moshi-pulse-", dir="/tmp"))
    log = tmp_path_factory.mktemp("pulse") / "pulseaudio.log"
    server = PulseServer(root, log)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    _server = server
    try:
        yield _server
    finally:
        _server.stop()
        _server = None
        shutil.rmtree(root, ignore_errors=True)


def read_raw(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<f4")


def read_wav(path: Path) -> np.ndarray:
    audio, _ = sf.read(str(path), dtype="float32")
    return audio
