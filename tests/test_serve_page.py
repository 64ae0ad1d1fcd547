"""The server's own web page in a real browser: Debian's headless Chromium driven by Selenium,
its fake microphone playing espeak-ng speech, against a real `moshi-mlx serve` subprocess with
the tiny checkpoints. Screenshots are saved in the test's folder (their paths printed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
CHROMEDRIVER = Path("/usr/bin/chromedriver")

webdriver = pytest.importorskip("selenium.webdriver")
if not CHROMEDRIVER.exists() or shutil.which("chromium") is None:
    pytest.skip("needs Debian's chromium and chromium-driver (apt)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`moshi-mlx serve ARGS` on a free port, until `stop()`."""

    def __init__(self, args: list[str], log: Path):
        self.port = free_port()
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moshi_mlx", "serve", *args, "--port", str(self.port)],
            cwd=REPO,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while "serving on" not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("page")


@pytest.fixture(scope="module")
def checkpoints(folder: Path) -> dict[str, Path]:
    from moshi_mlx.testing.tiny import make_tiny_checkpoint

    return {
        kind: make_tiny_checkpoint(folder / f"tiny_{kind}", seed=0, kind=kind)
        for kind in ("moshi", "stt", "tts")
    }


@pytest.fixture(scope="module")
def speech(folder: Path) -> Path:
    """About 5 s of espeak-ng speech, then silence: the fake microphone (16-bit 48 kHz WAV,
    which Chromium's file capture takes and loops)."""
    raw = folder / "espeak.wav"
    text = "Hello Moshi, how are you today? Tell me a story about the sea."
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
    import soxr

    audio, rate = sf.read(str(raw), dtype="float32")
    audio = soxr.resample(audio, rate, 48000)
    audio = np.concatenate([audio, np.zeros(48000, np.float32)])
    path = folder / "microphone.wav"
    sf.write(str(path), audio, 48000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def server(folder: Path, checkpoints: dict[str, Path]):
    """The tiny Moshi, recording each session."""
    args = ["--checkpoint", checkpoints["moshi"], "--record", folder / "record", "--seed", "1"]
    server = Server([str(a) for a in args], folder / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def speech_server(folder: Path, checkpoints: dict[str, Path]):
    """The tiny STT and TTS (no speech-to-speech model)."""
    args = ["--stt", checkpoints["stt"], "--tts", checkpoints["tts"]]
    server = Server([str(a) for a in args], folder / "speech_server.log")
    yield server
    server.stop()


def chromium(speech: Path, *flags: str):
    """Headless Chromium whose fake microphone plays `speech` (granted unless `flags` say)."""
    options = webdriver.ChromeOptions()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={speech}",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1280,860",
        *(flags or ("--use-fake-ui-for-media-stream",)),
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # (the suite's LD_PRELOAD of OpenBLAS crashes Chromium's renderer)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER), env=env)
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture
def browser(speech: Path):
    driver = chromium(speech)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 60.0):
    """Polls the page until the JavaScript expression `script` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"the page never had `{script}`; console:\n{console(driver)}")


def state(driver, panel: str = "chat") -> str:
    """The state a panel shows: idle, connecting, loading, listening, speaking, ended."""
    return driver.execute_script(f"return document.getElementById('panel-{panel}').dataset.state")


def console(driver) -> list[dict]:
    return driver.get_log("browser")


def assert_no_errors(logs: list[dict]) -> None:
    errors = [e for e in logs if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, f"JavaScript errors: {errors}"


def screenshot(driver, path: Path) -> None:
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_chat_autostarts_hears_the_microphone_and_speaks(server, browser, folder):
    browser.get(server.url + "?autostart=chat")
    wait_for(
        browser,
        "document.getElementById('panel-chat').dataset.state === 'listening'"
        " || document.getElementById('panel-chat').dataset.state === 'speaking'",
    )
    # Moshi's text in the transcript and its audio through the player
    text = wait_for(
        browser,
        "window.moshiPage.chat.stats.textPieces > 3 &&"
        " document.getElementById('chat-transcript').textContent",
    )
    played = wait_for(
        browser,
        "window.moshiPage.chat.stats.playedSeconds > 1 &&"
        " window.moshiPage.chat.stats.playedSeconds",
    )
    stats = wait_for(
        browser,
        "document.getElementById('stat-lag').textContent !== '–' && window.moshiPage.chat.stats",
    )
    assert stats["received"] >= 24000 and played > 1
    # the model's badge: its name, the checkpoint in the tooltip
    badge = browser.execute_script(
        "const b = document.getElementById('model-name'); return [b.textContent, b.title]"
    )
    info = browser.execute_script("return fetch('api/info').then((r) => r.json())")["chat"]
    assert badge == [info["model"], info["checkpoint"]] and info["checkpoint"]
    time.sleep(4)  # the microphone's speech (about 4 s) reaches the model
    screenshot(browser, folder / "chat.png")
    logs = console(browser)
    browser.execute_script("window.moshiPage.chat.stop()")
    wait_for(browser, "document.getElementById('panel-chat').dataset.state === 'ended'")
    assert_no_errors(logs)
    assert text.strip()

    # the server heard the fake microphone: its recording holds speech, not silence
    deadline = time.monotonic() + 20
    while not list((folder / "record").glob("**/user.wav")) and time.monotonic() < deadline:
        time.sleep(0.25)
    (heard,) = (folder / "record").glob("**/user.wav")
    audio, rate = sf.read(str(heard), dtype="float32")
    assert rate == 24000 and len(audio) > 3 * rate
    loud = np.sqrt(np.mean(audio.reshape(-1, 1920)[: len(audio) // 1920] ** 2, axis=1))
    assert (loud > 0.01).sum() >= 10, f"the server heard silence (frame RMS {loud.max():.4f})"
    transcript = (heard.parent / "transcript.txt").read_text()
    assert re.sub(r"\s+", "", transcript)  # what Moshi said, as the page showed it


def test_busy_server_is_told_on_the_page(server, browser, folder):
    browser.get(server.url + "?autostart=chat")
    wait_for(
        browser,
        "document.getElementById('panel-chat').dataset.state === 'listening'"
        " || document.getElementById('panel-chat').dataset.state === 'speaking'",
    )
    browser.switch_to.new_window("tab")
    browser.get(server.url + "?autostart=chat")
    message = wait_for(browser, "document.querySelector('#banners .banner')?.textContent")
    assert "busy" in message.lower()
    assert state(browser) == "idle"
    screenshot(browser, folder / "busy.png")


def test_denied_microphone_is_explained(server, speech):
    driver = chromium(speech, "--deny-permission-prompts")
    try:
        driver.get(server.url + "?autostart=chat")
        message = wait_for(driver, "document.querySelector('#banners .banner')?.textContent")
        assert "denied" in message
        assert driver.execute_script("return window.moshiPage.chat.session") is None
    finally:
        driver.quit()


def test_plain_http_from_another_host_says_to_use_ssl(server, speech):
    # `phone.lan` resolves to this machine: the page is then not a secure context
    driver = chromium(speech, "--host-resolver-rules=MAP phone.lan 127.0.0.1")
    try:
        driver.get(f"http://phone.lan:{server.port}/")
        message = wait_for(driver, "document.querySelector('#banners .banner.warn')?.textContent")
        assert "--ssl DIR" in message and "https://phone.lan" in message
        driver.find_element("id", "chat-toggle").click()
        denied = wait_for(driver, "document.querySelector('#banners .banner.error')?.textContent")
        assert "https" in denied
    finally:
        driver.quit()


def test_server_going_away_is_told(folder, checkpoints, browser):
    server = Server(["--checkpoint", str(checkpoints["moshi"])], folder / "short.log")
    try:
        browser.get(server.url + "?autostart=chat")
        wait_for(browser, "window.moshiPage.chat.stats.received > 0")
    finally:
        server.stop()
    message = wait_for(browser, "document.querySelector('#banners .banner')?.textContent")
    assert re.search(r"shutting down|lost|closed", message), message
    assert state(browser) == "idle"
    screenshot(browser, folder / "gone.png")
    assert_no_errors(console(browser))


def test_dictation_and_speech_from_the_page(speech_server, browser, folder):
    browser.get(speech_server.url + "?autostart=dictation")
    wait_for(browser, "document.getElementById('panel-dictation').dataset.state === 'listening'")
    sent = wait_for(
        browser,
        "window.moshiPage.dictation.stats.sent > 5 * 24000 &&"
        " window.moshiPage.dictation.stats.sent",
        timeout=30,
    )
    assert sent > 5 * 24000
    browser.execute_script("window.moshiPage.dictation.stop()")
    wait_for(browser, "document.getElementById('panel-dictation').dataset.state === 'idle'")
    stats = browser.execute_script("return window.moshiPage.dictation.stats")
    assert stats["marker"], stats  # every word heard before Stop has come
    words = stats["words"]
    text = browser.execute_script("return document.getElementById('dictation-text').textContent")
    spans = browser.execute_script(
        "return [...document.querySelectorAll('#dictation-text .word')].map(w => w.textContent)"
    )
    # one span per Word received; a word is spaced from the last unless it starts with punctuation
    assert words > 0 and len(spans) == words and "".join(spans) == text
    assert all(s.startswith(" ") or s[0] in ".,!?;:" for s in spans[1:]), spans
    screenshot(browser, folder / "dictation.png")

    browser.find_element("id", "tab-tts").click()
    browser.find_element("id", "tts-toggle").click()
    wait_for(browser, "window.moshiPage.tts.stats.done", timeout=120)
    stats = browser.execute_script("return window.moshiPage.tts.stats")
    assert stats["received"] > 24000 // 2 and stats["playedSeconds"] > 0.4
    link = browser.find_element("id", "tts-download")
    assert link.get_attribute("aria-disabled") == "false"
    # the download is a WAV of what was received
    size = browser.execute_script(
        "return fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => b.byteLength)",
        link.get_attribute("href"),
    )
    assert size == 44 + 2 * stats["received"]
    screenshot(browser, folder / "tts.png")
    assert_no_errors(console(browser))


def test_the_page_with_an_api_key(folder, checkpoints, browser):
    """`--api-key`: the page's files load without it, the page passes `auth_id` to the API."""
    key = "sesame"
    server = Server(
        ["--checkpoint", str(checkpoints["moshi"]), "--api-key", key], folder / "key.log"
    )
    try:
        browser.get(server.url + f"?auth_id={key}&autostart=chat")
        wait_for(browser, "window.moshiPage.chat.stats.received > 0")
        logs = console(browser)
        browser.execute_script("window.moshiPage.chat.stop()")
    finally:
        server.stop()
    assert_no_errors(logs)


def test_the_page_and_its_files_are_served(server):
    import urllib.request

    info = json.load(urllib.request.urlopen(server.url + "api/info"))
    assert info["chat"]["kind"] == "dialogue"
    page = urllib.request.urlopen(server.url).read().decode()
    assert 'src="app.js"' in page
    for name in ("app.js", "worklet.js", "style.css", "msgpack.js"):
        assert urllib.request.urlopen(server.url + name).status == 200
    assert os.path.isfile(REPO / "moshi_mlx" / "serve" / "static" / "index.html")


@pytest.fixture(scope="module")
def question(folder: Path) -> Path:
    """A question, then 8 s of silence (Chromium loops the file): time for the answer."""
    raw = folder / "question.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), "What is the capital of France?"])
    import soxr

    audio, rate = sf.read(str(raw), dtype="float32")
    audio = np.concatenate([soxr.resample(audio, rate, 48000), np.zeros(8 * 48000, np.float32)])
    path = folder / "question48k.wav"
    sf.write(str(path), audio, 48000, subtype="PCM_16")
    return path


def test_assistant_autostarts_hears_the_question_and_answers(folder, checkpoints, question):
    """`serve --stt --tts --llm`: the page's Assistant tab hears the fake microphone's question,
    shows it, and shows and plays the answer."""
    from moshi_mlx.testing.tiny import strip_vad_heads
    from moshi_mlx.testing.tiny_llm import make_tiny_llm

    llm = make_tiny_llm(folder / "tiny_llm", seed=0)
    # without the heads (the tiny ones end a turn at every word): a second of silence ends it
    stt = strip_vad_heads(checkpoints["stt"], folder / "tiny_stt_mlx")
    args = ["--stt", stt, "--tts", checkpoints["tts"], "--llm", llm]
    server = Server([*map(str, args), "--max-tokens", "12"], folder / "assistant.log")
    driver = chromium(question)
    try:
        driver.get(server.url + "?autostart=assistant")
        wait_for(driver, "document.getElementById('panel-assistant').dataset.state === 'listening'")
        assert not driver.find_element("id", "tab-assistant").get_attribute("hidden")
        # the LLM's badge: the folder's name (as the OpenAI ids name a model), the path in its
        # tooltip
        badge = driver.execute_script(
            "const b = document.getElementById('assistant-model'); return [b.textContent, b.title]"
        )
        assert badge == ["tiny_llm", str(llm)]
        user = wait_for(
            driver, "document.querySelector('#assistant-transcript .user .text')?.textContent"
        )
        said = wait_for(
            driver,
            "document.querySelector('#assistant-transcript .assistant .text')?.textContent",
            timeout=60,
        )
        played = wait_for(
            driver,
            "window.moshiPage.assistant.stats.playedSeconds > 0.3 &&"
            " window.moshiPage.assistant.stats.playedSeconds",
        )
        stats, shown = driver.execute_script(
            "return [window.moshiPage.assistant.stats, [...document.querySelectorAll("
            "'#assistant-transcript .assistant .text')].map((e) => e.textContent).join(' ')]"
        )
        screenshot(driver, folder / "assistant.png")
        logs = console(driver)
        driver.execute_script("window.moshiPage.assistant.stop()")
        wait_for(driver, "document.getElementById('panel-assistant').dataset.state === 'ended'")
    finally:
        driver.quit()
        server.stop()
    assert user.strip() and said.strip() and played > 0.3
    assert stats["received"] > 0.3 * 24000 and stats["words"] == len(shown.split())
    assert_no_errors(logs)
    log = (folder / "assistant.log").read_text()
    assert "assistant 1: 127.0.0.1 connected (pcm16)" in log and "Traceback" not in log
