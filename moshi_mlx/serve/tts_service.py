"""Text to speech for the server: one request speaks at a time (Mimi's streaming decoder is the
checkpoint's), the others wait in a bounded queue (beyond it: `Busy`, HTTP 503); everything MLX
runs on the model thread.

The settings are `moshi-mlx speak`'s (`TtsSettings`, the voice as `--voice` takes it), so a
request at temperature 0 gives `speak`'s audio sample for sample.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace

import numpy as np

from ..jobs.tts import TextToSpeech, TTSFrame, TtsSettings, load_voice
from ..jobs.tts_stream import SpeechStream
from .query import QueryError
from .stt_service import Busy
from .worker import ModelThread

DEFAULT_VOICE = "expresso/ex03-ex01_happy_001_channel1_334s.wav"  # speak's
FRAMES_PER_CALL = 2  # frames generated per call to the model thread (the rest runs meanwhile)
MAX_TEXT = 100_000  # characters of one request (or of a stream's text at once)


class TextIn:
    """A client's text as it arrives, spoken as it comes (`TtsService.follow`): its reader
    pushes words, ends, or fails (a bad message: the speech stops with that error).
    `idle_seconds`: how long the speech may wait for more text (None: as long as it takes)."""

    def __init__(self, idle_seconds: float | None = None):
        self.idle_seconds = idle_seconds
        self.texts: list[str] = []
        self.ended = False
        self.error: str | None = None
        self.wake = asyncio.Event()  # something came
        self._partial = ""  # the last word of `push_delta`'s text, maybe not complete yet

    def push(self, text: str) -> None:
        """Add whole words."""
        self.texts.append(text)
        self.wake.set()

    def push_delta(self, text: str) -> None:
        """Add a piece of running text that may cut words anywhere (an LLM's deltas, Wyoming's
        chunks): the words are pushed once a space ends them."""
        *words, self._partial = re.split(r"\s+", self._partial + text)
        if any(words):
            self.push(" ".join(w for w in words if w))

    def end(self) -> None:
        if self._partial:
            self.push(self._partial)
            self._partial = ""
        self.ended = True
        self.wake.set()

    def fail(self, message: str) -> None:
        self.error = message
        self.wake.set()


class TtsService:
    """A loaded TTS checkpoint served to requests, one at a time.

    Args:
        tts: the loaded `TextToSpeech` (made on `thread`).
        name: the id clients see.
        thread: the model thread.
        max_queue: requests allowed to wait.
        defaults: the settings of a request that gives none (`speak`'s defaults).
    """

    def __init__(
        self,
        tts: TextToSpeech,
        name: str,
        thread: ModelThread,
        max_queue: int = 8,
        defaults: TtsSettings | None = None,
    ):
        self.tts, self.name, self.thread = tts, name, thread
        self.defaults = defaults or TtsSettings()
        self.max_queue = max_queue
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._voices: dict[str, np.ndarray] = {}

    def voice_names(self) -> list[str]:
        folder = self.tts.folder / "voices" if self.tts.folder is not None else None
        if folder is None or not folder.is_dir():
            return []
        suffix = self.tts.voice_suffix
        return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))

    def info(self) -> dict:
        return {"model": self.name, "voices": self.voice_names()}

    @property
    def default_voice(self) -> str:
        names = self.voice_names()
        return names[0] if names and DEFAULT_VOICE not in names else DEFAULT_VOICE

    @asynccontextmanager
    async def slot(self):
        """Wait for the model (Busy when `max_queue` requests wait already)."""
        if self._waiting >= self.max_queue:
            raise Busy(f"{self._waiting} speech requests wait already")
        self._waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    async def voice(self, name: str | None) -> np.ndarray:
        """A voice as `speak --voice` takes it (QueryError if there is none such)."""
        name = name or self.default_voice
        if name not in self._voices:
            try:
                self._voices[name] = await self.thread.call(load_voice, name, self.tts)
            except ValueError as e:
                raise QueryError(str(e)) from None
        return self._voices[name]

    def settings(self, query: Mapping[str, object]) -> TtsSettings:
        """`speak`'s settings from request parameters: `temperature`, `cfg_alpha` (or `cfg`),
        `seed`."""
        try:
            cfg = query.get("cfg_alpha", query.get("cfg"))
            seed = query.get("seed")
            d = self.defaults
            settings = replace(
                d,
                temperature=float(query.get("temperature", d.temperature)),
                cfg=d.cfg if cfg is None else float(cfg),
                seed=d.seed if seed in (None, "") else int(seed),
            )
        except (TypeError, ValueError) as e:
            raise QueryError(f"bad speech parameter ({e})") from None
        if not 0 <= settings.temperature <= 5:
            raise QueryError("temperature must be between 0 and 5")
        try:
            self.tts.conditions([np.zeros((1, self.tts.voice_dim, 1), np.float32)], settings.cfg)
        except ValueError as e:
            raise QueryError(str(e)) from None
        return settings

    async def speak(self, text: str, voice: np.ndarray, settings: TtsSettings) -> AsyncIterator:
        """The whole text's audio as `speak` makes it: (pcm (n,), words) per call, in order
        (hold `slot()` around it)."""
        frames = await self.thread.call(self._start, text, voice, settings)
        while True:
            out = await self.thread.call(self._next, frames)
            if not out:
                return
            for item in out:
                yield item

    def _start(self, text, voice, settings):
        self.tts.mimi.reset_decoder()
        return self.tts.frames(text, [voice], settings)

    def _next(self, frames) -> list[tuple[np.ndarray, list]]:
        out = []
        for frame in frames:
            out.append(self._audio(frame))
            if len(out) >= FRAMES_PER_CALL:
                break
        return out

    def _audio(self, frame: TTSFrame) -> tuple[np.ndarray, list]:
        pcm = self.tts.decode(frame) if frame.codes.size else np.zeros(0, np.float32)
        return pcm, frame.words

    # -- a stream of text (the WebSocket) ------------------------------------------------------
    async def open_stream(self, voice: np.ndarray, settings: TtsSettings) -> SpeechStream:
        def start():
            self.tts.mimi.reset_decoder()
            return SpeechStream(self.tts, [voice], settings)

        return await self.thread.call(start)

    async def advance(self, stream: SpeechStream, texts: list[str], end: bool) -> list:
        """Push `texts` (and the end), then up to `FRAMES_PER_CALL` frames: [(pcm, words)]."""

        def run():
            for t in texts:
                stream.push(t)
            if end:
                stream.end()
            out = [self._audio(f) for f in stream.frames(FRAMES_PER_CALL)]
            return out

        return await self.thread.call(run)

    async def follow(self, stream: SpeechStream, text: TextIn) -> AsyncIterator:
        """`stream`'s audio as `text` comes, (pcm (n,), words) per frame, until the text has
        ended and is spoken (hold `slot()` around it).

        Raises:
            QueryError: `text` failed, too much text came at once, or none for too long.
        """
        while not stream.done:
            if text.error:
                raise QueryError(text.error)
            texts, text.texts = text.texts, []
            if sum(len(t) for t in texts) > MAX_TEXT:
                raise QueryError(f"more than {MAX_TEXT} characters at once")
            text.wake.clear()
            done = await self.advance(stream, texts, text.ended)
            for item in done:
                yield item
            if not done and not stream.done and not text.ended:
                try:  # the text so far is spoken: wait for more
                    await asyncio.wait_for(text.wake.wait(), text.idle_seconds)
                except asyncio.TimeoutError:
                    raise QueryError(f"no text came for {text.idle_seconds:g} s: ended") from None
