"""The trio <-> asyncio hand-off, on its own (no sockets, no libp2p)."""

import asyncio
import gc
import threading
from typing import Any

import pytest
import trio
import trio.testing

from logos_p2p.errors import NodeShutdown
from logos_p2p.server._handoff import Loops, Wakeup, open_loops


async def settle(loops: Loops, *tasks: "asyncio.Future[Any]") -> None:
    """Wait (from trio) until the asyncio tasks are done and their callbacks ran."""
    with trio.fail_after(2):
        await loops.to_aio(lambda: asyncio.wait(tasks))


async def test_wakeup_wakes_trio_and_asyncio_waiters_together():
    async with open_loops() as loops:
        wake = Wakeup()
        woke: list[str] = []

        async def aio_waiter() -> None:
            await wake.wait_aio()
            woke.append("aio")

        async def trio_waiter() -> None:
            await wake.wait_trio()
            woke.append("trio")

        task = loops.spawn_aio(aio_waiter())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            wake.notify()
        await settle(loops, task)
        assert sorted(woke) == ["aio", "trio"]


async def test_cancelling_one_asyncio_waiter_leaves_the_others_waiting():
    async with open_loops() as loops:
        wake = Wakeup()
        first = loops.spawn_aio(wake.wait_aio())
        second = loops.spawn_aio(wake.wait_aio())
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
        await settle(loops, first)
        assert first.cancelled() and not second.done()
        wake.notify()
        await settle(loops, second)
        assert second.result() is None


async def test_to_trio_returns_raises_and_cancels():
    async with open_loops() as loops:

        async def add() -> int:
            await trio.lowlevel.checkpoint()
            return 42

        async def boom() -> int:
            raise KeyError("x")

        assert await loops.to_aio(lambda: loops.to_trio(add)) == 42
        with pytest.raises(KeyError):
            await loops.to_aio(lambda: loops.to_trio(boom))

        cancelled = trio.Event()

        async def forever() -> None:
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()

        task = loops.spawn_aio(loops.to_trio(forever))
        await trio.testing.wait_all_tasks_blocked()
        task.cancel()
        with trio.fail_after(2):
            await cancelled.wait()


async def test_a_result_the_caller_gave_up_on_goes_to_orphan():
    async with open_loops() as loops:
        release = trio.Event()
        orphaned = trio.Event()
        orphans: list[str] = []

        async def opener() -> str:
            with trio.CancelScope(shield=True):  # like a stream that opens anyway
                await release.wait()
            return "stream"

        def orphan(result: str) -> None:
            orphans.append(result)
            orphaned.set()

        task = loops.spawn_aio(loops.to_trio(opener, orphan=orphan))
        await trio.testing.wait_all_tasks_blocked()
        task.cancel()
        release.set()
        with trio.fail_after(2):
            await orphaned.wait()
        await settle(loops, task)
        assert orphans == ["stream"] and task.cancelled()


async def test_the_trio_side_stopping_fails_the_caller_with_node_shutdown():
    async with open_loops() as loops:
        started = trio.Event()

        async def hang() -> None:
            started.set()
            await trio.sleep_forever()

        task = loops.aio.create_task(loops.to_trio(hang))
        await started.wait()
        loops.nursery.cancel_scope.cancel()
        await settle(loops, task)
        assert isinstance(task.exception(), NodeShutdown)


async def test_a_failing_background_task_is_logged_not_fatal(caplog):
    async with open_loops() as loops:

        async def fail() -> None:
            raise RuntimeError("one task broke")

        task = loops.spawn_aio(fail())
        await settle(loops, task)
        assert loops.aio_tasks == 0
    assert "a node task failed" in caplog.text and "one task broke" in caplog.text


async def test_soon_runs_in_trio_from_del_and_from_other_threads():
    async with open_loops() as loops:
        ran: list[str] = []
        done = trio.Event()

        class Dropped:
            def __del__(self) -> None:
                loops.soon(lambda: ran.append("del"))

        Dropped()
        gc.collect()
        thread = threading.Thread(target=lambda: loops.soon(lambda: (ran.append("thread"), done.set())))
        thread.start()
        with trio.fail_after(2):
            await done.wait()
        thread.join()
        assert sorted(ran) == ["del", "thread"]


async def test_a_failing_deferred_callback_is_logged_not_fatal(caplog):
    async with open_loops() as loops:
        done = trio.Event()

        def boom() -> None:
            raise RuntimeError("deferred callback broke")

        loops.soon(boom)
        loops.soon(done.set)
        with trio.fail_after(2):
            await done.wait()
    assert "a deferred node callback failed" in caplog.text and "deferred callback broke" in caplog.text


async def test_starting_a_task_after_the_node_stopped_is_a_no_op():
    async with open_loops() as loops:
        pass
    loops.spawn_trio(trio.lowlevel.checkpoint)  # the nursery is closed: nothing happens, nothing raises


async def test_errors_reported_to_asyncio_are_logged_not_raised_into_trio(caplog):
    """pycapnp reports a cancelled server call that raised through the loop's exception handler."""
    async with open_loops() as loops:
        loops.aio.call_exception_handler({"message": "Cancelled server method x raised", "exception": KeyError("k")})
        await trio.lowlevel.checkpoint()
    assert "Cancelled server method x raised" in caplog.text


async def test_asyncio_code_runs_from_any_trio_task():
    async with open_loops() as loops:
        assert await loops.to_aio(lambda: asyncio.sleep(0, result="aio")) == "aio"


class _Litter:
    """Garbage in a reference cycle whose finalizer queues an asyncio callback, as a
    pycapnp object does when its release makes the KJ loop runnable."""

    def __init__(self, loop: Any, counter: list[int]) -> None:
        self.me = self
        self.loop, self.counter = loop, counter

    def __del__(self) -> None:
        self.loop.call_soon(self.counter.append, 1)


async def test_a_callback_queued_by_a_gc_finalizer_waits_for_trio_s_next_turn():
    async with open_loops() as loops:
        direct = []
        real = loops.aio._q_send

        class Spy:  # sees every synchronous put on trio-asyncio's callback queue
            def send_nowait(self, handle: Any) -> None:
                direct.append(handle)
                real.send_nowait(handle)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

        loops.aio._q_send = Spy()
        ran: list[int] = []
        try:
            _Litter(loops.aio, ran)
            gc.collect()
            assert direct == [] and ran == []  # not queued inside the collection
            await trio.testing.wait_all_tasks_blocked()
            assert ran == [1]  # queued at the next turn, and run
            loops.aio.call_soon(ran.append, 2)  # outside a collection: queued at once
            assert len(direct) == 1
            await trio.testing.wait_all_tasks_blocked()
            assert ran == [1, 2]
        finally:
            loops.aio._q_send = real


async def test_a_collection_inside_the_loop_s_own_receive_loses_no_callback(monkeypatch):
    """The race itself, made certain: a collection strikes in trio-asyncio's queue read
    between "nothing queued" and "now waiting", and a finalizer queues a callback there.
    Unguarded, the callback sat in the queue of a sleeping reader (the node stopped
    answering) and the next one failed trio's assert."""
    async with open_loops() as loops:
        queue = loops.aio._q_recv
        real = type(queue).receive_nowait
        ran: list[int] = []
        armed = [True]

        def receive_nowait(self: Any) -> Any:
            try:
                return real(self)
            except trio.WouldBlock:
                if self is queue and armed:
                    armed.clear()
                    _Litter(loops.aio, ran)
                    gc.collect()
                raise

        monkeypatch.setattr(type(queue), "receive_nowait", receive_nowait)
        loops.aio.call_soon(ran.append, 0)  # the loop reads its queue again: the trap fires
        with trio.fail_after(2):
            await trio.testing.wait_all_tasks_blocked()
        stats = queue.statistics()
        if stats.current_buffer_used and stats.tasks_waiting_receive:
            real(queue)  # take the stranded callback out, so that the loop can still close
            pytest.fail("a callback is stranded in the queue of a sleeping reader")
        assert ran == [0, 1] and not armed
        loops.aio.call_soon(ran.append, 2)  # and the queue still works
        await trio.testing.wait_all_tasks_blocked()
        assert ran == [0, 1, 2]


async def test_any_kj_loop_on_trio_asyncio_gets_the_guard_and_gives_it_back():
    """The client library (a module on trio via trio-asyncio) is guarded like the node."""
    import trio_asyncio

    from logos_p2p import _kj

    async with trio_asyncio.open_loop() as loop:
        plain = loop._queue_handle

        async def inside() -> bool:
            async with _kj.kj_loop():
                return loop._queue_handle is not plain and _kj._GcSafeQueue.on_gc in gc.callbacks

        assert await trio_asyncio.aio_as_trio(inside)()
        assert loop._queue_handle == plain and _kj._GcSafeQueue.on_gc not in gc.callbacks


def test_plain_asyncio_is_left_alone():
    from logos_p2p import _kj

    async def inside() -> bool:
        loop = asyncio.get_running_loop()
        async with _kj.kj_loop():
            return not _kj._GcSafeQueue.applies(loop) and _kj._GcSafeQueue.on_gc not in gc.callbacks

    loop = asyncio.SelectorEventLoop()  # not asyncio.run: trio-asyncio's policy rules this process
    try:
        assert loop.run_until_complete(inside())
    finally:
        loop.close()
