"""The one thread that owns the models.

A lazy MLX graph built on one thread cannot be evaluated on another, so the server loads every
model and runs every step on a single thread; the asyncio side awaits `ModelThread.call`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThread:
    """A single worker thread running calls in the order they were made (FIFO).

    `await thread.call(fn, *args, **kwargs)` runs `fn` on the thread and returns its result; an
    exception raised by `fn` is raised in the awaiting coroutine. A call cancelled before it
    started is never run; one already running finishes (MLX work cannot be interrupted). The
    thread is a daemon: a process interrupted during a long call (a model load) still exits.
    """

    def __init__(self, name: str = "moshi-mlx-models"):
        self.name = name
        self._jobs: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (calls made before `start` are refused)."""
        if self._thread is not None:
            raise RuntimeError("the model thread is already started")
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, args=(self._jobs,), name=self.name, daemon=True
        )
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Cancel the calls not started and end the thread (after the running call if `wait`)."""
        jobs, thread = self._jobs, self._thread
        self._jobs = self._thread = None
        if jobs is None:
            return
        jobs.put(None)
        if wait and thread is not threading.current_thread():
            thread.join()

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def ident(self) -> int | None:
        """The thread's identifier (`threading.get_ident()` inside a call)."""
        return self._thread.ident if self._thread is not None else None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the model thread and return its result."""
        if self._jobs is None:
            raise RuntimeError("the model thread is not running")
        future: Future = Future()
        self._jobs.put((future, fn, args, kwargs))
        return await asyncio.wrap_future(future)

    @staticmethod
    def _run(jobs: queue.SimpleQueue) -> None:
        while (job := jobs.get()) is not None:
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:
                future.set_exception(e)
        while True:  # stopped: the calls still queued are cancelled
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job[0].cancel()

    def __enter__(self) -> ModelThread:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
