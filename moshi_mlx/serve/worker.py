"""The one thread that owns the models.

A lazy MLX graph built on one thread cannot be evaluated on another, so the server loads every
model and runs every step on a single thread; the asyncio side awaits `ModelThread.call`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThread:
    """A single worker thread running calls in the order they were made (FIFO).

    `await thread.call(fn, *args, **kwargs)` runs `fn` on the thread and returns its result; an
    exception raised by `fn` is raised in the awaiting coroutine. A call cancelled before it
    started is never run; one already running finishes (MLX work cannot be interrupted).
    """

    def __init__(self, name: str = "moshi-mlx-models"):
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._ident: int | None = None

    def start(self) -> None:
        """Start the thread (calls made before `start` are refused)."""
        if self._executor is not None:
            raise RuntimeError("the model thread is already started")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        self._ident = self._executor.submit(threading.get_ident).result()

    def stop(self) -> None:
        """Cancel the calls not started, wait for the running one, end the thread."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    @property
    def running(self) -> bool:
        return self._executor is not None

    @property
    def ident(self) -> int | None:
        """The thread's identifier (`threading.get_ident()` inside a call)."""
        return self._ident

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the model thread and return its result."""
        if self._executor is None:
            raise RuntimeError("the model thread is not running")
        future = self._executor.submit(fn, *args, **kwargs)
        return await asyncio.wrap_future(future)

    def __enter__(self) -> ModelThread:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
