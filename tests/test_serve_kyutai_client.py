"""Kyutai's own client, `python -m moshi.client` from their `moshi` package, unchanged, against
`moshi-mlx serve` with the tiny checkpoint, on the PulseAudio virtual devices (`pulse_audio.py`).

Speech is played into the virtual microphone; the client sends it to the server as Ogg Opus;
the server records what it heard (`--record`) and what Moshi said; the client plays Moshi's
voice on the virtual speaker (recorded from its monitor) and prints Moshi's text. The server is
stopped with SIGTERM, which tells the client and closes the session (the client then ends).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import sphn
from moshi_app import FRAME, RATE, align, block_snrs, read, speech_wav, tiny_checkpoint
from pulse_audio import pulse, read_raw
from test_chat_live import _Lines
from test_serve_chat import _free_port

__all__ = ["pulse", "speech_wav", "tiny_checkpoint"]  # fixtures used here

CLIENT_SEND_ERROR = "Cannot write to closing transport\n"  # aiohttp's, printed by the client


@dataclass
class Talk:
    recording: Path  # the server's folder of the session
    speaker: np.ndarray  # what the virtual speaker got, 24 kHz
    client_stdout: str
    client_stderr: str
    client_returncode: int
    server_log: str
    server_returncode: int


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, path.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in {path.read_text()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def talk(pulse, tiny_checkpoint, speech_wav, tmp_path_factory) -> Talk:
    folder = tmp_path_factory.mktemp("kyutai_client")
    port = _free_port()
    log_path = folder / "serve.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    # greedy, and a lag limit the tiny model never reaches: every frame heard is in user.wav
    cmd = [sys.executable, "-m", "moshi_mlx", "serve", "--checkpoint", str(tiny_checkpoint),
           "--port", str(port), "--temperature", "0", "--record", str(folder / "rec"),
           "--max-lag", "10000"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    recorder = client = None
    try:
        _wait_for(log_path, "serving on", server, 120)
        recorder = pulse.record_speaker(folder / "speaker.raw")
        client = subprocess.Popen(
            [sys.executable, "-m", "moshi.client", "--host", "127.0.0.1", "--port", str(port)],
            env=pulse.env,  # sounddevice's default devices: the virtual speaker and microphone
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = _Lines(client.stdout), _Lines(client.stderr)
        err.wait_for("connected!", timeout=30)
        _wait_for(log_path, "chat 1:", server, 30)
        time.sleep(1.0)  # the client's streams run
        pulse.play_into_mic(speech_wav).wait(timeout=30)
        time.sleep(2.0)  # Moshi's answer to the last words
        server.send_signal(signal.SIGTERM)  # the session is told and closed, then the client ends
        server_rc = server.wait(timeout=30)
        client_rc = client.wait(timeout=30)
        time.sleep(0.5)  # the speaker's last blocks
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if recorder is not None:
            recorder.terminate()
            recorder.wait(timeout=10)
        log.close()
    (session,) = sorted((folder / "rec").iterdir())
    return Talk(
        session, read_raw(folder / "speaker.raw"), out.text(), err.text(), client_rc,
        log_path.read_text(), server_rc,
    )  # fmt: skip


def test_the_client_and_the_server_end_cleanly(talk):
    assert talk.server_returncode == 0, talk.server_log
    assert "Traceback" not in talk.server_log and "Traceback" not in talk.client_stderr
    assert talk.client_returncode == 0, talk.client_stderr
    assert "the server is shutting down" in talk.server_log
    assert "All done!" in talk.client_stderr
    summary = json.loads((talk.recording / "session.json").read_text())
    assert summary["steps"] > 60, summary  # about 6 s of conversation
    assert summary["skipped_frames"] == 0 and summary["dropped_frames"] == 0


def test_the_server_heard_the_speech_played_into_the_microphone(talk, speech_wav):
    """The microphone's speech, through the client's Opus and the server's decoder."""
    heard, speech = read(talk.recording / "user.wav"), read(speech_wav)
    offset = align(speech, heard)
    got = heard[offset : offset + len(speech)]
    assert len(got) == len(speech), "the speech was cut"
    corr = float(np.dot(speech, got) / np.linalg.norm(speech) / np.linalg.norm(got))
    snr = 10 * np.log10(np.sum(speech**2) / np.sum((speech - got) ** 2))
    print(f"heard vs speech: correlation {corr:.3f}, SNR {snr:.1f} dB (Opus at its default rate)")
    assert corr > 0.9 and snr > 6  # (an Opus round trip of this speech: 0.95, 10 dB)


def _opus_round_trip(pcm: np.ndarray) -> list[np.ndarray]:
    """What Kyutai's client plays for the server's frames: sphn's Ogg Opus encoder (one page a
    frame, as the server writes them), its decoder, the PCM cut into blocks of 1920."""
    writer, reader = sphn.OpusStreamWriter(RATE), sphn.OpusStreamReader(RATE)
    decoded = [reader.append_bytes(writer.append_pcm(pcm[i : i + FRAME]))
               for i in range(0, len(pcm) - FRAME + 1, FRAME)]  # fmt: skip
    out = np.concatenate(decoded)
    return [out[i : i + FRAME] for i in range(0, len(out) - FRAME + 1, FRAME)]


def test_the_speaker_played_what_the_server_sent(talk):
    """Block by block: the client plays each decoded frame, or silence when none has come yet
    (an underrun shifts the rest by a block); PulseAudio's loopback is bit-exact."""
    expected = _opus_round_trip(read(talk.recording / "moshi.wav"))
    first = next(i for i, b in enumerate(expected) if np.abs(b).max() > 1e-3)
    start = align(expected[first], talk.speaker)
    grid = talk.speaker[start % FRAME :]
    blocks = [grid[i : i + FRAME] for i in range(0, len(grid) - FRAME + 1, FRAME)]
    played = [b for b in blocks[start // FRAME :] if np.any(b)]  # underruns are all zeros
    snrs = block_snrs(np.concatenate(expected[first:]), np.concatenate(played))
    underruns = sum(not np.any(b) for b in blocks[start // FRAME : start // FRAME + len(played)])
    print(f"speaker vs the server's audio: {len(snrs)} of {len(expected) - first} blocks, "
          f"{underruns} underruns, SNR per block {np.round(snrs, 1)}")  # fmt: skip
    # the client's queue at its close, and the recorder's last blocks, are not played
    assert len(snrs) >= len(expected) - first - 10
    assert np.mean(snrs > 30) > 0.95, snrs


def test_the_client_printed_the_servers_text(talk):
    transcript = json.loads((talk.recording / "transcript.json").read_text())
    assert transcript["text"], "the tiny model said nothing"
    # (once the server has closed, the client's microphone callback still sends, and it prints
    # the error on stdout after the text)
    printed = talk.client_stdout.replace(CLIENT_SEND_ERROR, "")
    assert printed.strip() == transcript["text"], talk.client_stdout
