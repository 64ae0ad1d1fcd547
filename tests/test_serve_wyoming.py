"""`serve --wyoming-port`: Home Assistant's Wyoming protocol, tested with the `wyoming` package's
own client (`AsyncTcpClient`, `wav_to_chunks`) on the tiny STT and TTS checkpoints. A transcript
equals `moshi-mlx transcribe`'s on the same file (16 kHz 16-bit as Home Assistant sends, and
other formats); synthesized audio equals `speak`'s at temperature 0; bad clients get an error
event or a close, and the server goes on."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from moshi_app import RATE, make_speech
from speech_server import free_port, speak, speech_server
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop, wav_to_chunks
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from moshi_mlx.jobs.tts import TtsSettings

TEXT = "Hello there, this is a test of the speech over Wyoming."
# (rate, bytes per sample, channels): Home Assistant's first, then what other satellites send
FORMATS = [(16000, 2, 1), (44100, 3, 2), (8000, 1, 1), (48000, 4, 2)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from moshi_mlx.testing.tiny import make_tiny_checkpoint, make_tiny_tts_checkpoint

    root = tmp_path_factory.mktemp("wyoming")
    return make_tiny_checkpoint(root / "stt", kind="stt"), make_tiny_tts_checkpoint(root / "tts")


@pytest.fixture(scope="module")
def port(checkpoints):
    stt, tts = checkpoints
    port = free_port()
    with speech_server(stt, tts, TtsSettings(temperature=0.0), wyoming_port=port, max_queue=8):
        yield port


async def exchange(port: int, events: list, until=("transcript", "audio-stop", "error", "info")):
    """Send `events`, read until an event of a kind in `until` (or the close)."""
    async with AsyncTcpClient("127.0.0.1", port, read_timeout=120) as client:
        for e in events:
            await client.write_event(e if isinstance(e, Event) else e.event())
        got = []
        while (event := await client.read_event()) is not None:
            got.append(event)
            if event.type in until:
                break
        return got


def run(coro):
    return asyncio.run(coro)


def write_pcm_wav(path: Path, audio: np.ndarray, rate: int, width: int) -> Path:
    """`audio` (n, channels) in [-1, 1] as a PCM WAV of `width` bytes (Python's `wave`)."""
    scale = 2 ** (8 * width - 1)
    ints = np.clip(np.round(audio * (scale - 1)), -scale, scale - 1).astype(np.int64)
    if width == 1:
        data = (ints + 128).astype(np.uint8).tobytes()
    else:
        data = b"".join(int(x).to_bytes(width, "little", signed=True) for x in ints.reshape(-1))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(audio.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def transcribe_cli(stt: Path, files: list[Path]) -> list[str]:
    """`moshi-mlx transcribe FILES --format json`: each file's text."""
    r = subprocess.run(
        ["moshi-mlx", "transcribe", *map(str, files), "--checkpoint", str(stt),
         "--format", "json", "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["text"] for line in r.stdout.splitlines() if line.strip()]


def test_describe_lists_the_models_and_voices(port):
    (event,) = run(exchange(port, [Describe()]))
    info = Info.from_event(event)
    (asr,) = info.asr
    assert [(m.name, m.languages) for m in asr.models] == [("tiny-stt", ["en"])]
    (tts,) = info.tts
    assert [v.name for v in tts.voices] == ["tiny", "tiny2"] and tts.supports_synthesize_streaming
    assert all(p.installed and p.attribution.name == "Kyutai" for p in [asr, tts])
    assert Pong.is_type(run(exchange(port, [Ping(text="hi")], until=("pong",)))[0].type)


def test_languages_come_from_the_known_models():
    from moshi_mlx.serve.wyoming_events import languages

    assert languages("stt-1b-en_fr") == ["en", "fr"]  # by --stt NAME
    assert languages("stt-2.6b-en-mlx") == ["en"]  # by the hub repo's (folder's) name
    assert languages("tts-1.6b-en_fr") == ["en", "fr"]
    assert languages("my-own-stt") == ["en"]


def test_transcript_equals_transcribes_text(port, checkpoints, tmp_path):
    speech, rate = sf.read(str(make_speech(tmp_path / "s.wav", "Hello, this is a Wyoming test.")))
    assert rate == RATE
    files = []
    for rate, width, channels in FORMATS:
        mono = soxr.resample(speech, RATE, rate)
        audio = np.stack([mono, 0.5 * mono][:channels], axis=1)
        files.append(write_pcm_wav(tmp_path / f"{rate}-{width}-{channels}.wav", audio, rate, width))
    want = transcribe_cli(checkpoints[0], files)
    assert want[0] and len(want) == len(files)

    async def transcript(path: Path) -> list[Event]:
        with wave.open(str(path), "rb") as w:  # Home Assistant's 1024-sample chunks
            chunks = list(wav_to_chunks(w, 1024, start_event=True, stop_event=True))
        return await exchange(port, [Transcribe(language="en"), *chunks])

    async def all_at_once():  # the file requests waiting together run as one batch
        return await asyncio.gather(*(transcript(f) for f in files))

    for (event,), text, fmt in zip(run(all_at_once()), want, FORMATS, strict=True):
        assert Transcript.is_type(event.type), (fmt, event)
        assert Transcript.from_event(event).text == text, fmt
        assert Transcript.from_event(event).language == "en"


def test_synthesized_audio_equals_speaks(port, checkpoints, tmp_path):
    request = Synthesize(text=TEXT, voice=SynthesizeVoice(name="tiny2"))
    events = run(exchange(port, [request]))
    assert AudioStart.is_type(events[0].type) and AudioStop.is_type(events[-1].type)
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
    assert all(c.samples == 1920 for c in chunks)  # one chunk per 80 ms frame, as generated
    got = np.frombuffer(b"".join(c.audio for c in chunks), "<i2") / 32768
    want = speak(checkpoints[1], tmp_path / "speak.wav", TEXT, voice="tiny2")
    assert len(got) == len(want) > 24000 and np.abs(want).max() > 0.01
    np.testing.assert_allclose(got, want, atol=1.01 / 32768)
    # no voice: speak's default (the checkpoint's first voice here)
    default = run(exchange(port, [Synthesize(text=TEXT)]))
    first = run(exchange(port, [Synthesize(text=TEXT, voice=SynthesizeVoice(name="tiny"))]))
    assert [e.payload for e in default] == [e.payload for e in first] != [e.payload for e in events]


def test_streamed_synthesis_speaks_before_the_text_ends(port):
    pieces = [TEXT[i : i + 3] for i in range(0, len(TEXT), 3)]  # an LLM's deltas cut words

    async def stream() -> tuple[list[Event], list[Event]]:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=120) as client:
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="tiny2")).event())
            for piece in pieces[:-1]:
                await client.write_event(SynthesizeChunk(text=piece).event())
            before = []  # what comes before the last word is sent
            while not AudioChunk.is_type(before[-1].type if before else ""):
                before.append(await client.read_event())
            await client.write_event(SynthesizeChunk(text=pieces[-1]).event())
            await client.write_event(Synthesize(text=TEXT).event())  # for older servers: ignored
            await client.write_event(SynthesizeStop().event())
            after = []
            while not SynthesizeStopped.is_type(after[-1].type if after else ""):
                after.append(await client.read_event())
            return before, after

    before, after = run(stream())
    assert AudioStart.is_type(before[0].type) and AudioStop.is_type(after[-2].type)
    whole = run(exchange(port, [Synthesize(text=TEXT, voice=SynthesizeVoice(name="tiny2"))]))
    streamed = before + after[:-1]
    assert [e.type for e in streamed] == [e.type for e in whole]
    assert b"".join(e.payload or b"" for e in streamed) == b"".join(e.payload or b"" for e in whole)


def test_a_stream_without_text_ends_and_frees_the_model(port, monkeypatch):
    from moshi_mlx.serve import wyoming_server

    monkeypatch.setattr(wyoming_server, "STREAM_IDLE_SECONDS", 1.0)

    async def idle() -> list[Event]:
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=60) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="Hello").event())
            got = []
            while not Error.is_type(got[-1].type if got else ""):
                got.append(await client.read_event())
            await client.write_event(SynthesizeStop().event())
            got.append(await client.read_event())
            return got

    got = run(idle())
    assert "no text came for 1 s" in error_of(got[:-1])
    assert SynthesizeStopped.is_type(got[-1].type)
    assert AudioStop.is_type(run(exchange(port, [Synthesize(text="Free again.")]))[-1].type)


def error_of(events: list[Event]) -> str:
    assert events and Error.is_type(events[-1].type), events
    return Error.from_event(events[-1]).text


def header(kind: str, **fields) -> bytes:
    return json.dumps({"type": kind, **fields}).encode() + b"\n"


@pytest.mark.parametrize(
    "events,words",
    [
        ([Event("detect")], "unknown event 'detect'"),
        ([AudioStart(16000, 5, 1)], "width 5"),
        ([AudioChunk(16000, 2, 1, b"\0\0")], "before audio-start"),
        ([AudioStart(16000, 2, 1), AudioChunk(8000, 2, 1, b"\0\0")], "differ"),
        ([Event("audio-start", {"rate": 16000})], "malformed audio-start"),
        ([Event("audio-start", {"rate": 16000, "width": [2], "channels": 1})], "width [2]"),
        ([SynthesizeChunk(text="hi")], "between synthesize-start"),
        ([SynthesizeStop()], "without synthesize-start"),
    ],
)
def test_a_bad_event_gets_an_error_and_the_connection_goes_on(port, events, words):
    got = run(exchange(port, [*events, Describe()], until=("info",)))
    errors = [Error.from_event(e).text for e in got if Error.is_type(e.type)]
    assert len(errors) == 1 and words in errors[0], got
    assert Info.is_type(got[-1].type)  # the same connection still answers


@pytest.mark.parametrize(
    "events,words",
    [
        ([AudioStop()], "without audio-start"),
        ([AudioStart(16000, 2, 1), AudioStop()], "no audio"),
        ([AudioStart(16000, 5, 1), AudioStop()], "without audio-start"),  # (start refused)
        ([Event("synthesize", {"text": "hi", "voice": {"name": 3}})], "a string"),
        ([Synthesize(text="hello", voice=SynthesizeVoice(name="nobody"))], "nobody"),
        ([Synthesize(text="  ")], "text"),
        ([Synthesize(text="hi", voice=SynthesizeVoice(name="/etc/passwd"))], "not a file"),
        ([Synthesize(text="hi", voice=SynthesizeVoice(name="v/x.safetensors"))], "not a file"),
    ],
)
def test_a_failed_request_gets_an_error_then_the_close(port, events, words):
    got = run(exchange(port, [*events, Describe()], until=()))  # read to the close
    assert words in error_of(got), got
    assert not any(Info.is_type(e.type) for e in got)  # closed: the describe is not answered
    assert Info.is_type(run(exchange(port, [Describe()]))[0].type)  # the server goes on


def test_a_failed_stream_ends_with_synthesize_stopped(port):
    start = SynthesizeStart(voice=SynthesizeVoice(name="nobody"))
    got = run(
        exchange(
            port, [start, SynthesizeChunk(text="Hi."), SynthesizeStop()], ("synthesize-stopped",)
        )
    )
    assert "nobody" in error_of(got[:-1]) and SynthesizeStopped.is_type(got[-1].type)


@pytest.mark.parametrize(
    "data,words",
    [
        (b"this is not json\n", "not a Wyoming event"),
        (header("audio-chunk", payload_length=10**10), "at most"),
        (header("describe", data_length=-1), "at most"),
        (b"x" * (70 << 10) + b"\n", "header line"),
    ],
)
def test_bad_framing_closes_that_client_only(port, data, words):
    async def send_bytes() -> list[Event]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await async_write_event(Describe().event(), writer)
        got = []
        while (event := await asyncio.wait_for(async_read_event(reader), 60)) is not None:
            got.append(event)
        writer.close()
        return got

    got = run(send_bytes())
    assert words in error_of(got) and len(got) == 1  # then closed: no info
    assert Info.is_type(run(exchange(port, [Describe()]))[0].type)


def test_a_client_leaving_mid_speech_frees_the_model(port):
    async def leave_after_first_chunk():
        async with AsyncTcpClient("127.0.0.1", port, read_timeout=60) as client:
            await client.write_event(Synthesize(text=TEXT * 3).event())
            while not AudioChunk.is_type((await client.read_event()).type):
                pass
        _, writer = await asyncio.open_connection("127.0.0.1", port)  # half an event, then gone
        writer.write(header("synthesize", data_length=100) + b'{"text":')
        await writer.drain()
        writer.close()

    run(leave_after_first_chunk())
    events = run(exchange(port, [Synthesize(text="Still here.")]))
    assert AudioStop.is_type(events[-1].type) and len(events) > 2


def test_clients_beyond_the_limit_are_told_busy(port):
    from moshi_mlx.serve.wyoming_server import MAX_CLIENTS

    async def crowd() -> list[Event]:
        clients = [AsyncTcpClient("127.0.0.1", port, read_timeout=60) for _ in range(MAX_CLIENTS)]
        for c in clients:
            await c.connect()
            await c.write_event(Ping().event())
            assert Pong.is_type((await c.read_event()).type)
        try:
            return await exchange(port, [Describe()])
        finally:
            for c in clients:
                await c.disconnect()

    got = run(crowd())
    assert "busy" in error_of(got) and len(got) == 1
    assert Info.is_type(run(exchange(port, [Describe()]))[0].type)  # room again once they left


def test_the_serve_command_serves_wyoming_and_ends_cleanly(checkpoints, tmp_path):
    stt, tts = checkpoints
    port, web_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    cmd = ["moshi-mlx", "serve", "--stt", str(stt), "--tts", str(tts), "--port", str(web_port),
           "--wyoming-port", str(port)]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "serving on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert f"wyoming: tcp://127.0.0.1:{port}" in log.read_text()

        async def open_session_then_stop() -> list[Event]:
            async with AsyncTcpClient("127.0.0.1", port, read_timeout=60) as client:
                await client.write_event(Describe().event())
                got = [await client.read_event()]
                proc.send_signal(signal.SIGTERM)  # an open connection is told, then closed
                while (event := await client.read_event()) is not None:
                    got.append(event)
                return got

        got = run(open_session_then_stop())
        assert Info.is_type(got[0].type) and Info.from_event(got[0]).asr[0].models[0].name
        assert "shutting down" in error_of(got[1:])
        assert proc.wait(30) == 0, log.read_text()
    finally:
        proc.kill()


def test_a_client_that_does_not_read_is_closed_and_frees_the_model(port, monkeypatch):
    from moshi_mlx.serve import wyoming_server

    monkeypatch.setattr(wyoming_server, "SEND_SECONDS", 1.0)

    async def while_one_does_not_read() -> tuple[list[Event], float]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
        sock.connect(("127.0.0.1", port))
        _, stalled = await asyncio.open_connection(sock=sock)
        await async_write_event(Synthesize(text=TEXT * 8).event(), stalled)  # a minute of work
        started = time.monotonic()
        try:  # still connected, reading nothing: the model must serve this one meanwhile
            events = await exchange(port, [Synthesize(text="Still here.")])
            return events, time.monotonic() - started
        finally:
            stalled.close()

    events, seconds = run(while_one_does_not_read())
    assert AudioStop.is_type(events[-1].type) and seconds < 30, seconds


def test_wyoming_port_needs_a_speech_model():
    r = subprocess.run(
        ["moshi-mlx", "serve", "--wyoming-port", "0"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0 and "--wyoming-port" in r.stderr and "--stt" in r.stderr
    assert "Traceback" not in r.stderr
