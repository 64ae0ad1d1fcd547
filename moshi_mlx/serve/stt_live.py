"""Live speech-to-text streams (`/api/asr-streaming`) as one continuous batch.

Every stream is a row of one `SttStream`, stepped one 80 ms frame each per step. A stream that
arrives while others run joins at the next step: it takes a free row (`restart_row`) or a new one
(`resize`), and follows its own alignment (its start-tokens step, then its frames), so its words
are `transcribe`'s on the same audio. A stream that leaves frees its row at once; free rows at
the end of the batch are dropped; the batch ends when its last stream does. A step waits until
every busy row has a frame (a row in its start-tokens step needs none).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mimi_mlx.constants import FRAME_SIZE

from ..jobs.stt import SttStep, SttStream
from .worker import ModelThread


@dataclass
class LiveStream:
    """One client's stream: its audio in (its silence prefix first), its steps out."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ended: bool = False  # the client has left
    steps: asyncio.Queue = field(default_factory=asyncio.Queue)  # SttStep, then None (its end)
    joined: asyncio.Event = field(default_factory=asyncio.Event)  # it has a row
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
        if len(self.audio) < FRAME_SIZE:  # (it left meanwhile)
            return np.zeros(FRAME_SIZE, np.float32)
        frame, self.audio = self.audio[:FRAME_SIZE], self.audio[FRAME_SIZE:]
        return frame


class LiveBatch:
    """The running batch of live streams (one at a time, on the model thread's checkpoint).

    Args:
        checkpoint: the STT checkpoint (its arrays live on `thread`).
        thread: the model thread.
        vad: compute the voice-activity heads.
        max_batch: rows at most; more streams wait for a free row.
    """

    def __init__(self, checkpoint, thread: ModelThread, vad: bool, max_batch: int):
        self.checkpoint, self.thread, self.vad, self.max_batch = checkpoint, thread, vad, max_batch
        self.rows: list[LiveStream | None] = []  # None: a free row
        self.arrived = asyncio.Event()  # a stream waits for a row
        self._stt: SttStream | None = None

    @property
    def streams(self) -> int:
        """Streams stepped now."""
        return sum(r is not None for r in self.rows)

    async def run(self, waiting: list[LiveStream], admit: Callable[[], bool]) -> None:
        """Step the streams of `waiting` (taken from it as they get rows, while `admit()`)
        until none is left."""
        await self._new_batch()
        try:
            while True:
                await self._free_ended()
                if admit():
                    await self._admit(waiting)
                if not self.streams:
                    return
                if await self._wait_for_frames(waiting, admit):
                    await self._step()
        finally:
            for r in self.rows:
                if r is not None:
                    r.steps.put_nowait(None)
            self.rows = []
            await self.thread.call(self._stt.reset)
            self._stt = None

    async def _new_batch(self) -> None:
        ckpt = self.checkpoint
        self._stt = await self.thread.call(
            SttStream, ckpt.lm, ckpt.mimi, ckpt.tokenizer, 1, self.vad
        )

    async def _free_ended(self) -> None:
        ended = [b for b, r in enumerate(self.rows) if r is not None and r.ended]
        for b in ended:
            self.rows[b].steps.put_nowait(None)
            self.rows[b] = None
        while self.rows and self.rows[-1] is None:  # free rows at the end cost steps: drop them
            self.rows.pop()
        if ended and not self.rows:  # the last stream ended: the next starts a new batch
            await self._new_batch()
        elif len(self.rows) < self._stt.batch_size:
            await self.thread.call(self._stt.resize, max(1, len(self.rows)))

    async def _admit(self, waiting: list[LiveStream]) -> None:
        while waiting and self.streams < self.max_batch:
            stream = waiting.pop(0)
            if stream.ended:
                continue
            if None in self.rows:
                row = self.rows.index(None)
                self.rows[row] = stream
                await self.thread.call(self._stt.restart_row, row)
            else:
                self.rows.append(stream)
                if len(self.rows) > self._stt.batch_size:
                    await self.thread.call(self._stt.resize, len(self.rows))
                elif self._stt.steps:  # (a batch trimmed to its first row)
                    await self.thread.call(self._stt.restart_row, len(self.rows) - 1)
            stream.joined.set()

    def _needs_frame(self, row: int) -> bool:
        return self.rows[row] is not None and row not in self._stt.starting

    async def _wait_for_frames(self, waiting: list[LiveStream], admit: Callable[[], bool]) -> bool:
        """True when every busy row has its frame; else wait for audio, a stream that leaves
        or one that arrives (it joins before the step)."""
        late = [r for b, r in enumerate(self.rows) if self._needs_frame(b) and not r.ready()]
        if not late:
            return True
        room = self.streams < self.max_batch and admit()
        if room and waiting:
            return False  # one arrived meanwhile: it joins first
        for r in late:
            r.wake.clear()
        self.arrived.clear()
        events = [r.wake for r in late] + ([self.arrived] if room else [])
        tasks = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
        return False

    async def _step(self) -> None:
        silence = np.zeros(FRAME_SIZE, np.float32)
        frames = np.stack(
            [self.rows[b].pop() if self._needs_frame(b) else silence for b in range(len(self.rows))]
        )
        for steps in await self.thread.call(self._stt.step, frames):
            self._deliver(steps)

    def _deliver(self, steps: list[SttStep | None]) -> None:
        for r, step in zip(self.rows, steps, strict=False):
            if r is not None and step is not None and not r.ended:
                r.frames += 1
                r.steps.put_nowait(step)
