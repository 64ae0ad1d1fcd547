"""The speech routes with clients nobody here wrote: Kyutai's delayed-streams-modeling scripts
(vendored unchanged in `kyutai_clients/`) against `/api/asr-streaming` and `/api/tts_streaming`
on the tiny checkpoints. Words equal `transcribe`'s on the same audio; speech equals `speak`'s at
temperature 0; bad messages get an Error and the server goes on."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np
import pytest
import soundfile as sf
from moshi_app import RATE, make_speech
from speech_server import speak as speak_text
from speech_server import speech_server

from moshi_mlx import load_checkpoint
from moshi_mlx.jobs.transcribe import transcribe_files
from moshi_mlx.jobs.tts import TtsSettings

CLIENTS = Path(__file__).parent / "kyutai_clients"
TEXT = "Hello there, this is a test of the streaming speech, word by word."


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from moshi_mlx.testing.tiny import make_tiny_checkpoint, make_tiny_tts_checkpoint

    root = tmp_path_factory.mktemp("speech")
    return make_tiny_checkpoint(root / "stt", kind="stt"), make_tiny_tts_checkpoint(root / "tts")


@pytest.fixture(scope="module")
def server(checkpoints):
    stt, tts = checkpoints
    with speech_server(stt, tts, tts_defaults=TtsSettings(temperature=0.0)) as url:
        yield url


def kyutai(script: str, *args, timeout=300) -> str:
    r = subprocess.run(
        [sys.executable, str(CLIENTS / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def kyutai_words(out: str) -> list[tuple[float, str]]:
    """The (start, word) lines Kyutai's STT script prints at the end."""
    lines = re.findall(r"^\s*(-?[0-9.]+) -\s*(-?[0-9.]+)  (.*)$", out, re.M)
    return [(float(a), w) for a, _, w in lines]


def test_kyutai_stt_client_gets_transcribes_words(server, checkpoints, tmp_path):
    speech, _ = sf.read(str(make_speech(tmp_path / "s.wav", "Hello, this is a streaming test.")))
    assert _ == RATE == 24000
    audio = tmp_path / "in.wav"
    sf.write(str(audio), speech.astype(np.float32), RATE, subtype="FLOAT")
    # what the script sends before its marker: 1 s of silence, the audio, 5 s of silence
    sent = np.concatenate([np.zeros(RATE), speech, np.zeros(5 * RATE)]).astype(np.float32)
    same = tmp_path / "sent.wav"
    sf.write(str(same), sent, RATE, subtype="FLOAT")
    ckpt = load_checkpoint(checkpoints[0])
    (expected,) = transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [same])
    want = [(round(w.start, 2), w.text) for w in expected.words]
    url = server.replace("http", "ws")
    with ThreadPoolExecutor(3) as pool:  # three streams at once: one batch
        outs = list(pool.map(lambda _: kyutai("stt_from_file_rust_server.py", audio,
                                              "--url", url, "--rtf", 20), range(3)))  # fmt: skip
    assert want
    for out in outs:
        got = kyutai_words(out)
        assert got == want[: len(got)], (got, want)
        # the words after the marker's step (sent audio + text delay) are not waited for
        missing = expected.words[len(got) :]
        assert all(w.end > expected.duration for w in missing), (missing, expected.duration)


def test_kyutai_tts_client_gets_speaks_audio(server, checkpoints, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT + "\n")
    out = tmp_path / "out.wav"
    url = server.replace("http", "ws")
    kyutai("tts_rust_server.py", text, out, "--voice", "tiny", "--url", url)
    got, rate = sf.read(str(out), dtype="float32")
    assert rate == 24000
    want = speak(checkpoints[1], tmp_path)
    assert len(got) == len(want) > 24000
    np.testing.assert_allclose(got, want, atol=2.5 / 32768)  # the script writes 16-bit WAV
    assert np.abs(want).max() > 0.01


def speak(checkpoint: Path, tmp_path: Path) -> np.ndarray:
    """`moshi-mlx speak TEXT` at temperature 0 with the voice `tiny`, float samples."""
    return speak_text(checkpoint, tmp_path / "speak.wav", TEXT)


def test_post_tts_gives_speaks_whole_audio(server, checkpoints, tmp_path):
    import urllib.request

    body = json.dumps({"text": TEXT, "voice": "tiny"}).encode()
    request = urllib.request.Request(
        server + "/api/tts", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as r:
        assert r.headers["Content-Type"] == "audio/wav"
        got, rate = sf.read(io.BytesIO(r.read()), dtype="int16")
    assert rate == 24000
    want = speak_text(checkpoints[1], tmp_path / "speak16.wav", TEXT, float32=False)
    assert len(want) > 24000 and np.abs(want).max() > 300
    np.testing.assert_array_equal(got, want)  # speak's own 16-bit file, sample for sample
    for bad, words in [({"text": ""}, "text"), ({"text": "hi", "voice": "nobody"}, "nobody")]:
        request = urllib.request.Request(
            server + "/api/tts", json.dumps(bad).encode(), {"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=60)
        assert e.value.code == 400 and words in e.value.read().decode()


def voice_message(checkpoint: Path, name: str) -> bytes:
    """A `Voice {embeddings, shape}` message holding the checkpoint's voice `name`."""
    import mlx.core as mx

    (path,) = (checkpoint / "voices").glob(f"{name}.*.safetensors")
    emb = np.array(mx.load(str(path))["speaker_wavs"].astype(mx.float32))
    return msgpack.packb(
        {"type": "Voice", "embeddings": emb.reshape(-1).tolist(), "shape": list(emb.shape)}
    )


async def _tts_stream(url: str, messages: list[bytes]) -> tuple[np.ndarray, list[dict]]:
    """Send `messages`, read to the close: the Audio samples and the other messages."""
    import aiohttp

    pcm, others = [], []
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        for m in messages:
            await ws.send_bytes(m)
        while (msg := await ws.receive(timeout=120)).type == aiohttp.WSMsgType.BINARY:
            m = msgpack.unpackb(msg.data)
            if m["type"] == "Audio":
                pcm.append(np.asarray(m["pcm"], np.float32))
            else:
                others.append(m)
    return (np.concatenate(pcm) if pcm else np.zeros(0, np.float32)), others


def test_tts_voice_given_as_embeddings_equals_the_named_voice(server, checkpoints):
    import asyncio

    url = server.replace("http", "ws") + "/api/tts_streaming"
    words = [msgpack.packb({"type": "Text", "text": w}) for w in TEXT.split()]
    eos = [msgpack.packb({"type": "Eos"})]
    by_name, _ = asyncio.run(_tts_stream(url + "?voice=tiny2", words + eos))
    given = [voice_message(checkpoints[1], "tiny2")]
    by_embeddings, told = asyncio.run(_tts_stream(url + "?voice=tiny", given + words + eos))
    assert len(by_name) > 24000 and np.abs(by_name).max() > 0.01
    np.testing.assert_array_equal(by_embeddings, by_name)
    assert [m["type"] for m in told] == ["Ready"] + ["Text"] * len(TEXT.split())
    other, _ = asyncio.run(_tts_stream(url + "?voice=tiny", words + eos))
    assert len(other) != len(by_name) or not np.array_equal(other, by_name)
    # a wrong shape for this model, and a shape that does not fit the floats sent
    for floats, shape, error in [(6, [1, 3, 2], "a voice is (1, "), (3, [1, 2], "shape")]:
        bad = msgpack.packb({"type": "Voice", "embeddings": [0.1] * floats, "shape": shape})
        pcm, told = asyncio.run(_tts_stream(url, [bad] + words + eos))
        assert len(pcm) == 0 and told[-1]["type"] == "Error", told
        assert error in told[-1]["message"], told


async def _ws_exchange(url: str, messages: list[bytes]) -> list[dict]:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        for m in messages:
            await ws.send_bytes(m)
        got = []
        while len(got) < 20:
            msg = await ws.receive(timeout=20)
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            got.append(msgpack.unpackb(msg.data))
            if got[-1]["type"] in ("Error", "Step"):
                break
        return got


@pytest.mark.parametrize(
    "message,words",
    [
        (b"\xc1\xc1garbage", "msgpack"),
        (msgpack.packb([1, 2, 3]), "map"),
        (msgpack.packb({"type": "Audio", "pcm": "no"}), "pcm"),
        (msgpack.packb({"type": "Audio", "pcm": [0.5, "x"]}), "pcm"),
        (msgpack.packb({"type": "Audio", "pcm": [0.5, None]}), "pcm"),
        (msgpack.packb({"type": "Audio", "pcm": [[0.5, 0.5]]}), "pcm"),
        (msgpack.packb({"type": "OggOpus", "data": b"not opus at all" * 10}), "Opus"),
        (msgpack.packb({"type": "Nope"}), "unknown"),
    ],
)
def test_bad_asr_messages_get_an_error_and_the_server_goes_on(server, message, words):
    import asyncio

    url = server.replace("http", "ws") + "/api/asr-streaming"
    got = asyncio.run(_ws_exchange(url, [message]))
    errors = [m for m in got if m["type"] == "Error"]
    assert errors and words.lower() in errors[0]["message"].lower(), got
    ok = asyncio.run(_ws_exchange(url, [msgpack.packb({"type": "Audio", "pcm": [0.0] * 19200})]))
    assert [m["type"] for m in ok][:2] == ["Ready", "Step"]


def test_the_chat_route_says_no_chat_model_is_served(server):
    import asyncio

    import aiohttp

    async def ask() -> bytes:
        url = server.replace("http", "ws") + "/api/chat"
        async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
            return (await ws.receive(timeout=10)).data

    message = asyncio.run(ask())
    assert message == b"\x05no speech-to-speech model is served here (serve one with --model)"


def test_bad_tts_requests(server):
    import asyncio

    url = server.replace("http", "ws") + "/api/tts_streaming"
    got = asyncio.run(_ws_exchange(url + "?format=Mp3", []))
    assert got[0]["type"] == "Error" and "format" in got[0]["message"]
    got = asyncio.run(_ws_exchange(url + "?voice=nobody", [msgpack.packb({"type": "Eos"})]))
    assert got[-1]["type"] == "Error" and "nobody" in got[-1]["message"]
    got = asyncio.run(_ws_exchange(url + "?voice=tiny", [b"\xc1garbage"]))
    assert got[-1]["type"] == "Error" and "msgpack" in got[-1]["message"]


def test_openai_sdk_transcriptions_speech_and_load(server, checkpoints, tmp_path):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
    audio = make_speech(tmp_path / "a.wav", "Hello, this is a transcription test.")
    ckpt = load_checkpoint(checkpoints[0])
    (expected,) = transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [audio])
    with open(audio, "rb") as f:
        got = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert got.text == expected.text and expected.text
    with open(audio, "rb") as f:
        srt = client.audio.transcriptions.create(model="x", file=f, response_format="srt")
    from moshi_mlx.formats.subtitles import render

    assert srt == render(expected, "srt")
    assert [m.id for m in client.models.list().data] == ["tiny-stt", "tiny-tts"]
    speech = client.audio.speech.create(model="tts-1", input=TEXT, voice="tiny")
    data = speech.read()
    assert data[:4] == b"RIFF" and data[40:44] == b"\xff" * 4  # streamed: open-ended sizes
    got = np.frombuffer(data[44:], "<i2") / 32768
    want = speak(checkpoints[1], tmp_path)
    assert len(got) == len(want) > 24000
    np.testing.assert_allclose(got, want, atol=1.01 / 32768)
    with pytest.raises(openai.BadRequestError):
        with open(tmp_path / "garbage.bin", "wb") as g:
            g.write(np.random.default_rng(0).bytes(20 << 20))
        with open(tmp_path / "garbage.bin", "rb") as g:
            client.audio.transcriptions.create(model="whisper-1", file=g)

    def one(_):
        with open(audio, "rb") as f:
            try:
                return client.audio.transcriptions.create(model="whisper-1", file=f).text
            except openai.InternalServerError as e:  # 503 beyond the queue's depth
                return e.status_code

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    assert all(a == expected.text or a == 503 for a in answers), answers
    assert answers.count(expected.text) >= 1


class Client:
    """A protocol client (aiohttp, as Kyutai's scripts speak): its audio paced at `pace` seconds
    a frame, then a Marker and silence until the Marker comes back; what it got and when."""

    def __init__(self, url: str, audio: np.ndarray, pace: float = 0.02):
        self.url, self.audio, self.pace = url, audio, pace
        self.connected = self.ready = self.marker = None  # times (monotonic)
        self.steps: list[float] = []  # each Step's time
        self.words: list[tuple[float, str]] = []
        self.started = __import__("asyncio").Event()  # `steps_seen` Steps came

    async def run(self, steps_seen: int = 10) -> None:
        import asyncio
        import time

        import aiohttp

        frame = 1920
        async with aiohttp.ClientSession() as s, s.ws_connect(self.url) as ws:
            self.connected = time.monotonic()

            async def send():
                for i in range(0, len(self.audio), frame):
                    chunk = self.audio[i : i + frame].tolist()
                    await ws.send_bytes(msgpack.packb({"type": "Audio", "pcm": chunk}))
                    await asyncio.sleep(self.pace)
                await ws.send_bytes(msgpack.packb({"type": "Marker", "id": 7}))
                while self.marker is None:
                    silence = {"type": "Audio", "pcm": [0.0] * frame}
                    await ws.send_bytes(msgpack.packb(silence, use_single_float=True))
                    await asyncio.sleep(self.pace)

            sender = asyncio.create_task(send())
            while self.marker is None:
                m = msgpack.unpackb((await ws.receive(timeout=60)).data)
                now = time.monotonic()
                if m["type"] == "Ready":
                    self.ready = now
                elif m["type"] == "Step":
                    self.steps.append(now)
                    if len(self.steps) == steps_seen:
                        self.started.set()
                elif m["type"] == "Word":
                    self.words.append((round(m["start_time"], 2), m["text"]))
                elif m["type"] == "Marker":
                    self.marker = now
                else:
                    assert m["type"] == "EndWord", m
            await sender

    def steps_before(self, t: float) -> int:
        return sum(s < t for s in self.steps)


def test_a_stream_that_arrives_mid_stream_joins_the_running_batch_at_once(
    server, checkpoints, tmp_path
):
    """B connects while A is mid-stream, C once B has left (its free row): each is served at
    once (its Ready and Steps come while A's stream runs, within a few of A's steps), and each
    one's words are `transcribe`'s on the audio it sent."""
    import asyncio

    texts = [
        "This is the first and longest stream, it goes on while the others come and go.",
        "The second one joins.",
        "Then a third.",
    ]
    audios = []
    for i, text in enumerate(texts):
        speech, _ = sf.read(str(make_speech(tmp_path / f"{i}.wav", text)), dtype="float32")
        tail = 8 if i == 0 else 2  # seconds of silence: A outlasts B and C (a step waits for all)
        audios.append(np.concatenate([speech, np.zeros(tail * RATE, np.float32)]))
    url = server.replace("http", "ws") + "/api/asr-streaming"
    a, b, c = Client(url, audios[0], pace=0.05), Client(url, audios[1]), Client(url, audios[2])

    async def main():
        first = asyncio.create_task(a.run())
        await a.started.wait()
        await b.run()
        await c.run(steps_seen=1)
        await first

    asyncio.run(main())
    for late in (b, c):
        assert late.marker < a.marker, ("it ran inside A's stream", late is b)
        assert a.steps_before(late.ready) - a.steps_before(late.connected) <= 3
        assert late.steps[0] < late.connected + 1.0 and len(late.steps) > 20
    ckpt = load_checkpoint(checkpoints[0])
    for i, (client, audio) in enumerate(zip((a, b, c), audios, strict=True)):
        sent = tmp_path / f"sent{i}.wav"
        sf.write(str(sent), audio, RATE, subtype="FLOAT")
        (expected,) = transcribe_files(ckpt.lm, ckpt.mimi, ckpt.tokenizer, [sent])
        want = [(round(w.start, 2), w.text) for w in expected.words]
        assert want and client.words == want[: len(client.words)], (i, client.words, want)
        missing = expected.words[len(client.words) :]  # after the Marker's step: not waited for
        assert all(w.end > expected.duration for w in missing), (i, missing, expected.duration)
