"""Producers in an event loop: `adelay`, `aapply_async` and `aget` on redis.asyncio, on a real
Redis, with the checks and outcomes of their blocking twins, and a loop that keeps running while
they wait."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from streamtasks import App, IdempotencyConflict, TaskError, TimeoutError
from streamtasks.connection import ASYNC_CONNECTIONS
from tests.redis_server import RedisServer
from tests.unit.support import running


def test_adelay_enqueues_and_aget_waits_for_the_result(redis_app: App) -> None:
    square = redis_app.task(name="square")(lambda x: x * x)

    async def produce() -> list[int]:
        results = [await square.adelay(n) for n in range(5)]
        values = [await r.aget(timeout=10) for r in results]
        assert await results[0].astatus() == "SUCCESS"
        await redis_app.aclose()
        return values

    with running(redis_app.Worker()):
        assert asyncio.run(produce()) == [0, 1, 4, 9, 16]


def test_the_loop_runs_other_work_while_aget_waits(redis_app: App) -> None:
    hold = asyncio.Event()
    redis_app.task(name="slow")(lambda: "done")

    async def produce() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while not hold.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        result = await redis_app.tasks["slow"].aapply_async()
        ticking = asyncio.create_task(ticker())
        with pytest.raises(TimeoutError):
            await result.aget(timeout=0.3)  # no worker yet: waits the whole time on Redis
        hold.set()
        await ticking
        await redis_app.aclose()
        return result.id, ticks

    task_id, ticks = asyncio.run(produce())
    assert ticks >= 10, "the loop was blocked while aget waited"
    redis_app.Worker().drain(timeout=10)
    assert redis_app.AsyncResult(task_id).get(timeout=1) == "done"


def test_async_producers_check_calls_and_keys_like_sync_ones(redis_app: App) -> None:
    @redis_app.task(name="charge", idempotency_key=lambda order_id, cents: f"charge:{order_id}")
    def charge(order_id: str, cents: int) -> int:
        return cents

    async def produce() -> None:
        with pytest.raises(TypeError, match="missing 1 required positional argument"):
            await charge.adelay("o-1")  # type: ignore[call-arg]
        first = await charge.adelay("o-1", 100)
        assert (await charge.adelay("o-1", 100)).id == first.id
        with pytest.raises(IdempotencyConflict):
            await charge.adelay("o-1", 999)
        later = await charge.aapply_async(("o-2", 5), countdown=3600)
        assert await later.astatus() == "PENDING"
        await redis_app.aclose()

    asyncio.run(produce())
    assert redis_app.broker.client.xlen(redis_app.keys("default").stream) == 1
    assert redis_app.broker.client.zcard(redis_app.keys("default").delayed) == 1


def test_a_failed_task_raises_task_error_from_aget(redis_app: App) -> None:
    redis_app.task(name="boom")(lambda: 1 / 0)

    async def produce() -> None:
        result = await redis_app.tasks["boom"].adelay()
        redis_app.Worker().drain(timeout=10)
        with pytest.raises(TaskError, match="ZeroDivisionError"):
            await result.aget(timeout=5)
        await redis_app.aclose()

    asyncio.run(produce())


def test_an_async_producer_rides_out_a_short_outage(
    own_redis: RedisServer, make_app: Callable[..., App], app_name: str
) -> None:
    app = make_app(app_name, url=own_redis.url)
    app.task(name="ping")(lambda: "pong")

    async def produce() -> str:
        await app.tasks["ping"].adelay()  # connected before the outage
        own_redis.stop()
        loop = asyncio.get_running_loop()
        restart = loop.run_in_executor(None, own_redis.start)
        result = await app.tasks["ping"].adelay()  # retried with backoff until Redis is back
        await restart
        await app.aclose()
        return result.id

    task_id = asyncio.run(produce())
    assert app.outage.down is False
    app.Worker().drain(timeout=10)
    assert app.AsyncResult(task_id).get(timeout=1) == "pong"


def test_many_aget_calls_waiting_do_not_hold_up_an_enqueue(redis_app: App) -> None:
    slow = redis_app.task(name="slow")(lambda n: n)

    async def produce() -> float:
        waiting = [await slow.adelay(n) for n in range(80)]  # no worker: they wait
        getters = [asyncio.create_task(r.aget(timeout=10)) for r in waiting]
        while redis_app.broker.client.info("clients")["blocked_clients"] < ASYNC_CONNECTIONS:
            await asyncio.sleep(0.01)  # until every connection a loop may open is blocked
        began = asyncio.get_running_loop().time()
        await slow.adelay(99)
        took = asyncio.get_running_loop().time() - began
        for getter in getters:
            getter.cancel()
        await asyncio.gather(*getters, return_exceptions=True)
        await redis_app.aclose()
        return took

    # Before, the enqueue waited for a blocked read to give its connection back (5 s).
    assert asyncio.run(produce()) < 2.0, "the enqueue waited behind the blocked reads"
