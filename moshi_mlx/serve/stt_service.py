"""Speech to text for the server: files batched through `transcribe_files`, live streams batched
through one `SttStream`, everything MLX on the model thread.

- Files (`POST /v1/audio/transcriptions`, Wyoming): the requests waiting when the model thread
  is free run as one `transcribe_files` batch (up to `max_batch`), so each file's transcript is
  exactly `moshi-mlx transcribe`'s. More than `max_queue` waiting: `Busy` (HTTP 503).
- Streams (`/api/asr-streaming`): one continuous batch (`stt_live.LiveBatch`): a stream that
  arrives while others run joins it at the next step, on a row of its own (up to `max_batch`;
  beyond, it waits for a free row). More than `max_queue` waiting: refused.
- Files and `hold()` (the assistant) use the checkpoint alone: while they wait, new streams wait
  too, so the running batch ends and they get their turn (then the streams that waited start).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_mlx.io.audio import audio_info

from ..jobs.stt import SttSettings
from ..jobs.transcribe import Transcription, transcribe_files
from .stt_live import LiveBatch, LiveStream
from .worker import ModelThread

RETRY_AFTER = 5  # seconds a refused client is told to wait


class Busy(Exception):
    """Too many requests wait: try again in `RETRY_AFTER` seconds."""


@dataclass
class _FileJob:
    path: Path
    done: asyncio.Future


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
        self._streams: list[LiveStream] = []  # waiting for a row of the live batch
        self._busy = False  # a batch of files or the live batch runs
        self._model = asyncio.Lock()  # the checkpoint's caches: one user at a time
        self._holders = 0  # callers waiting for `hold()`
        self.live = LiveBatch(checkpoint, thread, self.vad, max_batch)

    @asynccontextmanager
    async def hold(self):
        """The checkpoint for one caller alone (the assistant's session): the batch running
        ends first (no new stream joins it meanwhile); files and streams wait meanwhile."""
        self._holders += 1
        try:
            await self._model.acquire()
        finally:
            self._holders -= 1
        try:
            yield self.checkpoint
        finally:
            self._model.release()

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
        stream = LiveStream(np.zeros(self.settings.prefix_samples, np.float32))
        self._streams.append(stream)
        self.live.arrived.set()
        self._schedule()
        return stream

    def _admitting(self) -> bool:
        """New streams join the running batch unless files or `hold()` wait for the model."""
        return not self._files and not self._holders

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
                        await self.live.run(self._streams, self._admitting)
        finally:
            self._busy = False
