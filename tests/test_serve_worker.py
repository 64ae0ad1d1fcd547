"""The model thread: one thread, FIFO, results and exceptions back to the awaiting coroutine."""

import asyncio
import threading
import time

import mlx.core as mx
import pytest

from moshi_mlx.serve.worker import ModelThread


def test_calls_run_in_order_on_one_thread_and_return_results():
    async def main(thread):
        seen = []

        def work(i):
            time.sleep(0.01 * (5 - i))  # later calls are quicker: order must still hold
            seen.append((i, threading.get_ident()))
            return i * i

        results = await asyncio.gather(*(thread.call(work, i) for i in range(5)))
        return results, seen

    with ModelThread() as thread:
        results, seen = asyncio.run(main(thread))
        assert results == [0, 1, 4, 9, 16]
        assert [i for i, _ in seen] == list(range(5))
        assert {ident for _, ident in seen} == {thread.ident}
        assert thread.ident != threading.get_ident()


def test_mlx_graph_built_and_evaluated_on_the_thread():
    def build():
        return mx.arange(10) * 2

    def evaluate(x):
        return int(x.sum().item())

    async def main(thread):
        x = await thread.call(build)
        return await thread.call(evaluate, x)

    with ModelThread() as thread:
        assert asyncio.run(main(thread)) == 90


def test_exception_reaches_the_caller_and_the_thread_goes_on():
    def fail():
        raise ValueError("bad frame")

    async def main(thread):
        with pytest.raises(ValueError, match="bad frame"):
            await thread.call(fail)
        return await thread.call(lambda a, b=0: a + b, 1, b=2)

    with ModelThread() as thread:
        assert asyncio.run(main(thread)) == 3


def test_cancelled_call_not_started_is_never_run():
    ran = []

    async def main(thread):
        blocker = asyncio.ensure_future(thread.call(time.sleep, 0.2))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(thread.call(ran.append, "queued"))
        await asyncio.sleep(0)
        queued.cancel()
        await blocker
        await thread.call(ran.append, "after")

    with ModelThread() as thread:
        asyncio.run(main(thread))
    assert ran == ["after"]


def test_calls_refused_when_not_running():
    thread = ModelThread()
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(thread.call(int))
    thread.start()
    thread.stop()
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(thread.call(int))
