"""Speech to text for the server: files batched through `transcribe_files`, live streams batched
through one `SttStream`, everything MLX on the model thread.

- Files (`POST /v1/audio/transcriptions`, Wyoming): the requests waiting when the model thread
  is free run as one `transcribe_files` batch (up to `max_batch`), so each file's transcript is
  exactly `moshi-mlx transcribe`'s. More than `max_queue` waiting: `Busy` (HTTP 503).
- Streams (`/api/asr-streaming`): the streams open when a round starts are stepped together,
  one 80 ms frame each per step, as rows of one `SttStream` batch; a stream that leaves is fed
  silence until the round ends (as `transcribe` does a file that ended). A stream that arrives
  during a round waits for the next one (our streaming transformer keeps one position for the
  whole batch, so a row cannot restart alone: Kyutai's Rust server can, with per-row caches).
  More than `max_queue` waiting: refused.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimi_mlx.constants import FRAME_SIZE
from mimi_mlx.io.audio import audio_info

from ..jobs.stt import SttSettings, SttStep, SttStream
from ..jobs.transcribe import Transcription, transcribe_files
from .worker import ModelThread

RETRY_AFTER = 5  # seconds a refused client is told to wait
GATHER_SECONDS = 0.2  # a round starts this long after its first stream: those together batch


class Busy(Exception):
    """Too many requests wait: try again in `RETRY_AFTER` seconds."""


@dataclass
class _FileJob:
    path: Path
    done: asyncio.Future


@dataclass
class LiveStream:
    """One client's stream: its audio in, its steps out (read by its handler)."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ended: bool = False  # the client has left: silence from now on
    steps: asyncio.Queue = field(default_factory=asyncio.Queue)  # SttStep, then None (round end)
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # audio came or it ended
    frames: int = 0  # frames stepped

    def push(self, pcm: np.ndarray) -> None:
        self.audio = np.concatenate([self.audio, np.asarray(pcm, np.float32).reshape(-1)])
        self.wake.set()

    def leave(self) -> None:
        self.ended = True
        self.wake.set()

    def ready(self) -> bool:
        return self.ended or len(self.audio) >= FRAME_SIZE

    def pop(self) -> np.ndarray:
        if len(self.audio) < FRAME_SIZE:
            return np.zeros(FRAME_SIZE, np.float32)
        frame, self.audio = self.audio[:FRAME_SIZE], self.audio[FRAME_SIZE:]
        return frame


class SttService:
    """A loaded STT checkpoint served to files and streams.

    Args:
        checkpoint: the loaded STT checkpoint (its arrays live on `thread`).
        name: the id clients see (`/v1/models`).
        thread: the model thread.
        max_queue: requests (files, streams) allowed to wait.
        max_batch: files or streams stepped together.
    """

    def __init__(self, checkpoint, name: str, thread: ModelThread, max_queue=32, max_batch=16):
        self.checkpoint, self.name, self.thread = checkpoint, name, thread
        self.settings = SttSettings.of(checkpoint.lm, checkpoint.source)
        self.vad = bool(checkpoint.lm.extra_heads)
        self.max_queue, self.max_batch = max_queue, max_batch
        self._files: list[_FileJob] = []
        self._streams: list[LiveStream] = []  # waiting for the next round
        self._busy = False  # a batch of files or a round of streams runs
        self._model = asyncio.Lock()  # the checkpoint's caches: one user at a time

    @asynccontextmanager
    async def hold(self):
        """The checkpoint for one caller alone (the assistant's session): the batch or round
        running ends first; files and streams wait meanwhile."""
        async with self._model:
            yield self.checkpoint

    def info(self) -> dict:
        return {"model": self.name, "vad": self.vad}

    # -- files -----------------------------------------------------------------------------------
    async def transcribe(self, path: Path) -> Transcription:
        """`transcribe_files`'s result for one file, batched with the others waiting.

        Raises:
            AudioError: not an audio file (checked before it waits); Busy: too many wait.
        """
        await asyncio.to_thread(audio_info, path)
        if len(self._files) + len(self._streams) >= self.max_queue:
            raise Busy(f"{len(self._files)} transcriptions wait already")
        job = _FileJob(Path(path), asyncio.get_running_loop().create_future())
        self._files.append(job)
        self._schedule()
        return await job.done

    async def _run_files(self) -> None:
        jobs, self._files = self._files[: self.max_batch], self._files[self.max_batch :]
        ckpt = self.checkpoint
        try:
            results = await self.thread.call(
                transcribe_files,
                ckpt.lm,
                ckpt.mimi,
                ckpt.tokenizer,
                [j.path for j in jobs],
                batch_size=len(jobs),
            )
        except Exception as e:  # (each file was read before it was queued)
            for job in jobs:
                job.done.set_exception(e)
            return
        for job, result in zip(jobs, results, strict=True):
            if not job.done.done():
                job.done.set_result(result)

    # -- streams ---------------------------------------------------------------------------------
    def open_stream(self) -> LiveStream:
        if len(self._files) + len(self._streams) >= self.max_queue:
            raise Busy(f"{len(self._streams)} streams wait already")
        stream = LiveStream()
        self._streams.append(stream)
        self._schedule()
        return stream

    async def _run_round(self) -> None:
        await asyncio.sleep(GATHER_SECONDS)
        rows, self._streams = self._streams[: self.max_batch], self._streams[self.max_batch :]
        rows = [r for r in rows if not r.ended]
        if not rows:
            return
        ckpt = self.checkpoint
        stt = await self.thread.call(
            SttStream, ckpt.lm, ckpt.mimi, ckpt.tokenizer, len(rows), self.vad
        )
        for r in rows:
            r.joined.set()
        try:
            while not all(r.ended for r in rows):
                waiting = [r for r in rows if not r.ready()]
                for r in waiting:
                    r.wake.clear()
                if waiting:
                    await asyncio.wait(
                        [asyncio.ensure_future(r.wake.wait()) for r in waiting],
                        return_when=asyncio.ALL_COMPLETED,
                    )
                    continue
                frames = np.stack([r.pop() for r in rows])
                for steps in await self.thread.call(stt.step, frames):
                    self._deliver(rows, steps)
            for steps in await self.thread.call(stt.flush):
                self._deliver(rows, steps)
        finally:
            await self.thread.call(stt.reset)
            for r in rows:
                r.steps.put_nowait(None)

    @staticmethod
    def _deliver(rows: list[LiveStream], steps: list[SttStep]) -> None:
        for r, step in zip(rows, steps, strict=True):
            r.frames += 1
            if not r.ended:
                r.steps.put_nowait(step)

    # -- the scheduler ---------------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._files or self._streams:
                async with self._model:
                    if self._files:
                        await self._run_files()
                    else:
                        await self._run_round()
        finally:
            self._busy = False
