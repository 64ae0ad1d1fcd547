"""`GET /api/assistant` of a real `moshi-mlx serve --stt --tts --llm` (tiny models): the route's
user text, reply, spoken words and voice are the file mode's (`moshi-mlx assistant IN OUT
--json`) for the same audio, sent as raw PCM (the file is 16-bit, so both hear the same
samples); busy and bad input are told in one line and the server goes on."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile as sf
from moshi_app import REPO, cli, make_speech, read
from speech_server import free_port
from test_assistant import MAX_TOKENS, SYSTEM, _tts_words, assistant, models, question

__all__ = ["models", "question"]  # fixtures used here

AUDIO, ERROR = b"\x01", b"\x05"
QUERY = f"format=pcm16&temperature=0&tts_temperature=0&max_tokens={MAX_TOKENS}"


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """`moshi-mlx serve` with the tiny STT (no heads), TTS and LLM; no input frame is skipped
    (a loaded machine may step slower than real time)."""
    log = tmp_path_factory.mktemp("serve_assistant") / "server.log"
    port = free_port()
    args = [
        "--stt", models["stt_mlx"], "--tts", models["tts"], "--llm", models["llm"],
        "--system", SYSTEM, "--port", port, "--max-lag", 60000,
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "moshi_mlx", "serve", *map(str, args)],
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while "serving on" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)
    yield f"ws://127.0.0.1:{port}/api/assistant", log
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def question16(question, tmp_path_factory) -> Path:
    """The question as 16-bit PCM: what the file mode reads is what pcm16 carries."""
    audio = read(question)
    path = tmp_path_factory.mktemp("question16") / "question16.wav"
    sf.write(str(path), audio, 24000, subtype="PCM_16")
    return path


async def _talk(url: str, audio: np.ndarray | None, end: bool = True, timeout: float = 120):
    """Send the audio (pcm16, in real time as a microphone would) and `end`; returns the events,
    the audio received (24 kHz) and the error message, if any."""
    events, pcm, error = [], [], None
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        first = await ws.receive(timeout=60)
        if first.type == aiohttp.WSMsgType.BINARY and first.data[:1] == ERROR:
            return events, np.zeros(0, np.float32), first.data[1:].decode()
        assert first.data == b"\x00", first
        if audio is not None:
            data = np.round(np.clip(audio, -1, 1 - 1 / 32768) * 32768).astype("<i2")
            for i in range(0, len(data), 1920):
                await ws.send_bytes(AUDIO + data[i : i + 1920].tobytes())
                await asyncio.sleep(0.08)
        if end:
            await ws.send_str(json.dumps({"type": "end"}))
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                events.append(json.loads(message.data))
            elif message.data[:1] == AUDIO:
                pcm.append(np.frombuffer(message.data[1:], "<i2").astype(np.float32) / 32768)
            elif message.data[:1] == ERROR:
                error = message.data[1:].decode()
    return events, np.concatenate(pcm) if pcm else np.zeros(0, np.float32), error


def test_the_route_answers_as_the_file_mode(server, models, question16, tmp_path):
    url, log = server
    out, info = tmp_path / "answer.wav", tmp_path / "answer.json"
    r = assistant(models, question16, out, "--json", info, llm=("--llm", models["llm"]))
    assert r.returncode == 0, r.stderr
    (expected,) = json.loads(info.read_text())["turns"]
    events, pcm, error = asyncio.run(_talk(f"{url}?{QUERY}", read(question16)))
    assert error is None, log.read_text()
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["user", "reply"] and kinds[-2:] == ["reply_end", "end"], kinds
    user, end = events[0], events[-2]
    assert user["text"] == expected["user"] != "" and user["ended_by"] == expected["ended_by"]
    assert end["reply"] == expected["reply"] and not end["interrupted"]
    words = [e["text"] for e in events if e["type"] == "word"]
    assert words == [w["word"] for w in end["spoken"]] == [w["word"] for w in expected["spoken"]]
    voice = read(out)  # (float32: pcm16 rounds it)
    assert len(pcm) == len(voice)
    np.testing.assert_allclose(pcm, voice, atol=1 / 32768 + 1e-7)


def test_busy_and_bad_input_are_told_and_the_server_goes_on(server, question16):
    url, _ = server

    async def busy():
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}?{QUERY}") as first:
            assert (await first.receive(timeout=60)).data == b"\x00"
            return await _talk(f"{url}?{QUERY}", None, end=False)

    assert "busy" in asyncio.run(busy())[2]
    _, _, error = asyncio.run(_talk(f"{url}?temperature=-1", None))
    assert error == "temperature must be 0 or more, got -1"

    async def bad_text():
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}?{QUERY}") as ws:
            assert (await ws.receive(timeout=60)).data == b"\x00"
            await ws.send_str("hello")
            return [m.data async for m in ws]

    (message,) = asyncio.run(bad_text())
    assert message == ERROR + b'text messages are JSON events: {"type": "end"}'
    events, pcm, error = asyncio.run(_talk(f"{url}?{QUERY}", read(question16)))
    assert error is None and events[-1]["type"] == "end" and len(pcm) > 0


def test_barge_in_cancels_the_reply_and_the_history_keeps_what_was_played(
    server, models, question16, tmp_path
):
    """Speaking over the answer: `interrupted`, the reply ends with the words sent up to what
    the client played, and the next answer is mlx-lm's for a history holding only those."""
    url, log = server
    stop = read(make_speech(tmp_path / "stop.wav", "Stop, stop, please stop talking now."))
    silence = np.zeros(1920, np.float32)

    async def talk():
        events, audio = [], 0
        async with aiohttp.ClientSession() as http:
            query = "format=pcm16&temperature=0&tts_temperature=0&max_tokens=60"
            async with http.ws_connect(f"{url}?{query}") as ws:
                assert (await ws.receive(timeout=60)).data == b"\x00"

                async def say(pcm: np.ndarray) -> None:
                    data = np.round(pcm * 32768).astype("<i2")
                    for i in range(0, len(data), 1920):
                        await ws.send_bytes(AUDIO + data[i : i + 1920].tobytes())
                        await asyncio.sleep(0.08)

                async def listen() -> None:
                    nonlocal audio
                    async for message in ws:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            events.append(json.loads(message.data))
                        elif message.data[:1] == AUDIO:
                            audio += (len(message.data) - 1) // 2

                listener = asyncio.ensure_future(listen())
                await say(read(question16))
                deadline = time.monotonic() + 60
                while audio < 1.5 * 24000:  # the assistant has said a few words
                    assert time.monotonic() < deadline, events
                    await say(silence)
                await say(stop)
                while not _second_reply_started(events):
                    assert time.monotonic() < deadline + 60, events
                    await say(silence)
                listener.cancel()
        return events

    events = asyncio.run(talk())
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["user", "reply"] and "interrupted" in kinds, kinds
    cut = kinds.index("interrupted")
    end = events[cut + 1]
    assert end["type"] == "reply_end" and end["interrupted"]
    written, spoken = _tts_words(end["reply"]), [w["word"] for w in end["spoken"]]
    sent = [e["text"] for e in events[:cut] if e["type"] == "word"]
    assert 0 < len(spoken) <= len(sent) < len(written) and sent == written[: len(sent)]
    assert spoken == sent[: len(spoken)]
    # the next turn: the user's words after the barge-in, answered with the spoken history
    second_user = next(e for e in events[cut:] if e["type"] == "user")["text"]
    first_user = events[0]["text"]
    start = _last(events, "reply")
    words = [e["text"] for e in events[start:] if e["type"] == "word"]
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = mlx_lm.load(str(models["llm"]))
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": first_user},
        {"role": "assistant", "content": " ".join(spoken)},
        {"role": "user", "content": second_user},
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    reply = mlx_lm.generate(model, tokenizer, prompt, max_tokens=60, sampler=make_sampler(0.0))
    assert words == _tts_words(reply)[: len(words)], log.read_text()


def _second_reply_started(events: list[dict]) -> bool:
    """A second reply has begun: three of its words sent (or it ended)."""
    starts = [i for i, e in enumerate(events) if e["type"] == "reply"]
    if len(starts) < 2:
        return False
    after = [e["type"] for e in events[starts[1] :]]
    return after.count("word") >= 3 or "reply_end" in after


def _last(events: list[dict], kind: str) -> int:
    return max(i for i, e in enumerate(events) if e["type"] == kind)


def test_serve_assistant_options_are_checked(models, tmp_path):
    r = cli("serve", "--llm", models["llm"], "--port", 0)
    assert r.returncode == 2 and "needs --stt and --tts" in r.stderr.strip().splitlines()[-1]
    args = ["--stt", models["stt_mlx"], "--tts", models["tts"], "--llm", tmp_path / "missing"]
    r = cli("serve", *args, "--port", 0)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("error: mlx-lm cannot load"), r.stderr
