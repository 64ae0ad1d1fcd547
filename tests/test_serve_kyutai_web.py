"""Kyutai's own web client (the React app of kyutai-labs/moshi's `client/`, built unchanged:
tests/fixtures/kyutai-web-client, rebuilt by scripts/build_kyutai_web_client.sh) served by
`moshi-mlx serve --static DIR` with the tiny checkpoint, in Debian's headless Chromium whose
fake microphone plays espeak-ng speech.

Their page is used as a person would: its Connect button, their URL and query parameters, their
Opus encoder (opus-recorder) for the microphone, their decoder worker and audio worklet for
Moshi's voice. The server records the session (`--record`): what it heard must be the speech,
what their page shows must be what Moshi said. A screenshot is saved in the test's folder.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import sphn
from moshi_app import speech_wav, tiny_checkpoint
from test_serve_page import Server, assert_no_errors, chromium, console, screenshot, wait_for

__all__ = ["speech_wav", "tiny_checkpoint"]  # fixtures used here

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "tests" / "fixtures" / "kyutai-web-client"
WEB = CLIENT / "web"
# their page's defaults (client/src/pages/Conversation/hooks/useModelParams.ts), sent as the query
THEIR_SAMPLING = {
    "text_temperature": 0.7,
    "text_top_k": 25,
    "audio_temperature": 0.8,
    "audio_top_k": 250,
}
PLAYED = """
  const cells = [...document.querySelectorAll('td')];
  const cell = cells.find(td => td.textContent.startsWith('Audio played'));
  const [m, s] = cell ? cell.nextElementSibling.textContent.split(':') : ['0', '0'];
  return 60 * parseFloat(m) + parseFloat(s);
"""  # seconds their worklet played (their "Server Audio Stats" panel)


def button(text: str) -> str:
    """A JavaScript expression: their page's button labelled `text` (or undefined)."""
    return f"[...document.querySelectorAll('button')].find(b => b.textContent === {text!r})"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kyutai_web")


@pytest.fixture(scope="module")
def microphone(folder: Path, speech_wav: Path) -> Path:
    """The speech (about 4 s), then 4 s of silence, as a 16-bit 48 kHz WAV (Chromium's fake
    capture takes it and loops it)."""
    import soxr

    audio, rate = sf.read(str(speech_wav), dtype="float32")
    audio = np.concatenate([soxr.resample(audio, rate, 48000), np.zeros(4 * 48000, np.float32)])
    path = folder / "microphone.wav"
    sf.write(str(path), audio, 48000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def server(folder: Path, tiny_checkpoint: Path):
    # a lag limit the tiny model never reaches: every frame heard is in user.wav
    args = ["--checkpoint", tiny_checkpoint, "--static", WEB, "--record", folder / "record",
            "--max-lag", "5000"]  # fmt: skip
    server = Server([str(a) for a in args], folder / "server.log")
    yield server
    server.stop()


def test_the_vendored_client_says_what_it_is():
    source = (CLIENT / "SOURCE.txt").read_text()
    assert re.search(r"commit: [0-9a-f]{40}", source)
    assert "MIT" in (CLIENT / "LICENSE").read_text()
    assert (WEB / "index.html").is_file()
    assert (REPO / "scripts" / "build_kyutai_web_client.sh").is_file()


def test_their_page_and_files_replace_ours(server):
    page = urllib.request.urlopen(server.url).read().decode()
    assert page == (WEB / "index.html").read_text()
    # every file their page loads, at the paths their build gives it (below /, not /static)
    for path in re.findall(r'(?:src|href)="/(assets/[^"]+)"', page) + [
        "assets/decoderWorker.min.js",
        "assets/decoderWorker.min.wasm",
    ]:
        with urllib.request.urlopen(server.url + path) as response:
            assert response.read() == (WEB / path).read_bytes(), path
    wasm = urllib.request.urlopen(server.url + "assets/decoderWorker.min.wasm")
    assert wasm.headers["Content-Type"] == "application/wasm"
    # our API is unchanged; our own page's files are not served
    assert json.load(urllib.request.urlopen(server.url + "api/info"))["chat"]["kind"] == "dialogue"
    for path in ("app.js", "../pyproject.toml", "%2e%2e/%2e%2e/pyproject.toml"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + path)
        assert e.value.code in (403, 404), path


def test_kyutai_web_client_talks_with_serve(server, microphone, folder):
    driver = chromium(microphone)
    try:
        driver.get(server.url)
        driver.execute_script(f"{button('Connect')}.click()")  # their start page's button
        # their page: the WebSocket open, the handshake received (their "Disconnect" button)
        wait_for(driver, button("Disconnect"))
        text = wait_for(
            driver,
            "document.querySelectorAll('.player-text span').length > 5 &&"
            " document.querySelector('.player-text').textContent",
        )
        played = wait_for(driver, f"(() => {{ {PLAYED} }})() > 1")
        time.sleep(5)  # the microphone's speech (about 4 s) reaches the model
        text = driver.execute_script("return document.querySelector('.player-text').textContent")
        played = driver.execute_script(PLAYED)
        screenshot(driver, folder / "kyutai_web_client.png")
        talking = console(driver)
        driver.execute_script(f"{button('Disconnect')}.click()")
        wait_for(driver, button("Start Over"))  # their page: the conversation is over
        closing = console(driver)
    finally:
        driver.quit()
    # Their page asks for `url(undefined)` as the conversation's background when no image is
    # given (MoshiVis' mode); Kyutai's server answers it 404 too.
    assert_no_errors([e for e in talking if not e["message"].startswith(f"{server.url}undefined ")])
    # After their Disconnect, their microphone's last chunks meet the closed socket (Chromium
    # logs each `send`): nothing else.
    assert_no_errors([e for e in closing if "already in CLOSING or CLOSED" not in e["message"]])
    messages = " ".join(str(e["message"]) for e in talking)
    assert "Handshake received" in messages  # (their client's own log line)
    assert played > 3, f"their page played {played:.2f} s of Moshi's voice"

    # the server's recording of that session
    deadline = time.monotonic() + 20
    while not list((folder / "record").glob("*/session.json")) and time.monotonic() < deadline:
        time.sleep(0.25)
    (session,) = (folder / "record").iterdir()
    summary = json.loads((session / "session.json").read_text())
    sampling = summary["sampling"]
    assert {k: sampling[k] for k in THEIR_SAMPLING} == THEIR_SAMPLING  # their query was taken
    # what it heard from their Opus encoder: the fake microphone's speech, not silence
    heard, rate = sf.read(str(session / "user.wav"), dtype="float32")
    assert rate == 24000 and len(heard) > 5 * rate
    rms = np.sqrt(np.mean(heard[: len(heard) // 1920 * 1920].reshape(-1, 1920) ** 2, axis=1))
    assert (rms > 0.01).sum() >= 10, f"the server heard silence (frame RMS {rms.max():.4f})"
    assert (rms < 0.003).sum() >= 10, "the server never heard the file's silence"
    # their URL's seed (their console logs the URL at each render) is the session's
    (seed,) = set(re.findall(r"ws://\S+/api/chat\?\S*text_seed=(\d+)", messages))
    assert summary["seed"] == int(seed)
    # their page shows what Moshi said, piece by piece (up to what was sent before the close)
    said = re.sub(r"\s+", "", summary["text"])
    shown = re.sub(r"\s+", "", text)
    assert len(shown) > 5 and said.startswith(shown), (shown, said)


def test_their_page_meets_a_busy_server(server, microphone, folder):
    """Another client holds the chat: their page is told at once (our `b"\\x05"` and the close;
    their page shows only the conversation's end) and nothing breaks on it."""
    from websockets.sync.client import connect

    ws_url = server.url.replace("http", "ws", 1) + "api/chat"
    with connect(ws_url, open_timeout=60) as holder:
        assert holder.recv(timeout=60) == b"\x00"
        driver = chromium(microphone)
        try:
            driver.get(server.url)
            driver.execute_script(f"{button('Connect')}.click()")
            started = time.monotonic()
            wait_for(driver, button("Start Over"), timeout=30)
            assert time.monotonic() - started < 10
            assert not driver.execute_script(f"return {button('Disconnect')}")
            screenshot(driver, folder / "kyutai_web_client_busy.png")
            logs = console(driver)
        finally:
            driver.quit()
        # the first client's session goes on: its audio in, Moshi's audio out
        writer = sphn.OpusStreamWriter(24000)
        for _ in range(25):
            holder.send(b"\x01" + writer.append_pcm(np.zeros(1920, np.float32)))
        kinds = set()
        while b"\x01" not in kinds:
            kinds.add(holder.recv(timeout=30)[:1])
    # Their page records each conversation (MediaRecorder, then webm-duration-fix on the webm):
    # one that ends within a moment leaves a webm it cannot parse ("Unrepresentable length"),
    # whatever ended it (checked by hand: a server that closes at once without a byte gives it
    # too; a refusal closed 2 s later does not). Nothing else.
    assert_no_errors(
        [
            e
            for e in logs
            if not e["message"].startswith(f"{server.url}undefined ")
            and "Uncaught Error: Unrepresentable length: Infinity" not in e["message"]
        ]
    )
