"""The worker on a real Redis: streams stay small, results wake waiters at once, several queues,
drain deadlines, garbage in a stream, and hand-back on shutdown."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from streamtasks import App
from streamtasks import TimeoutError as StreamTasksTimeout
from streamtasks.keys import GROUP
from tests.integration.conftest import Consumer
from tests.redis_server import RedisServer
from tests.unit.support import running, stream_len, wait_until


def test_settled_entries_are_deleted_so_streams_do_not_grow(redis_app: App) -> None:
    task = redis_app.task(name="noop")(lambda payload: None)
    keys = redis_app.keys("default")
    client = redis_app.broker.client
    task.delay("x")
    redis_app.Worker().drain(timeout=5)
    baseline = client.memory_usage(keys.stream)

    task.map(["x" * 200] * 2000)
    loaded = client.memory_usage(keys.stream)
    redis_app.Worker().drain(timeout=20)
    assert client.xlen(keys.stream) == 0
    assert client.xinfo_groups(keys.stream)[0]["pending"] == 0
    drained = client.memory_usage(keys.stream)
    assert loaded > 200 * 2000
    assert drained <= baseline + 1024, f"{drained} bytes left after draining (was {baseline})"


def test_get_blocks_on_redis_and_wakes_as_soon_as_the_result_is_written(
    redis_app: App, redis_server: RedisServer
) -> None:
    finished: list[float] = []

    @redis_app.task(name="quick")
    def quick() -> str:
        finished.append(time.monotonic())
        return "ok"

    result = quick.delay()
    got: list[tuple[str, float]] = []
    waiter = threading.Thread(target=lambda: got.append((result.get(timeout=10), time.monotonic())))
    waiter.start()
    admin = redis_server.client()

    def blocked_readers() -> int:
        return sum(1 for c in admin.client_list() if c["cmd"] == "xread" and "b" in c["flags"])

    wait_until(lambda: blocked_readers() == 1, what="get() to block in XREAD")
    for _ in range(3):  # still one blocking call, not a loop of short ones
        assert blocked_readers() == 1
    redis_app.Worker().drain(timeout=5)
    waiter.join(5)
    [(value, woke)] = got
    assert value == "ok"
    assert woke - finished[0] < 0.25, f"get() returned {woke - finished[0]:.3f}s after the run"


def test_one_worker_serves_several_queues(redis_app: App) -> None:
    served = Counter[str]()
    for queue in ("orders", "payments", "emails"):
        redis_app.task(name=f"{queue}.handle", queue=queue)(lambda q=queue: served.update([q]) or q)
    results = [
        redis_app.tasks[f"{q}.handle"].delay()
        for q in ("orders", "payments", "emails")
        for _ in range(5)
    ]
    redis_app.Worker(concurrency=3).drain(timeout=10)
    assert served == {"orders": 5, "payments": 5, "emails": 5}
    assert [r.get(timeout=1) for r in results[::5]] == ["orders", "payments", "emails"]


def test_a_worker_serves_only_the_queues_it_is_given(redis_app: App) -> None:
    orders = redis_app.task(name="orders.handle", queue="orders")(lambda: "o")
    emails = redis_app.task(name="emails.handle", queue="emails")(lambda: "e")
    o, e = orders.delay(), emails.delay()
    redis_app.Worker(queues=["orders"]).drain(timeout=5)
    assert (o.status, e.status) == ("SUCCESS", "PENDING")


def test_drain_raises_timeout_error_when_work_cannot_finish(redis_app: App) -> None:
    release = threading.Event()
    started = threading.Event()

    @redis_app.task(name="stuck")
    def stuck() -> str:
        started.set()
        release.wait(4)
        return "finally"

    result = stuck.delay()
    worker = redis_app.Worker(name="first", shutdown_timeout=0.2)
    began = time.monotonic()
    with pytest.raises(StreamTasksTimeout):
        worker.drain(timeout=0.5)
    assert time.monotonic() - began < 3
    assert started.is_set()
    # The unfinished entry was handed back, so another worker takes it now, not in 30 s.
    release.set()
    redis_app.Worker(name="second").drain(timeout=5)
    assert result.get(timeout=1) == "finally"


def test_garbage_in_a_stream_is_dead_lettered_and_the_worker_keeps_serving(
    redis_app: App,
) -> None:
    good = redis_app.task(name="good")(lambda n: n + 1)
    stream = redis_app.keys("default").stream
    client = redis_app.broker.client
    before = good.delay(1)
    client.xadd(stream, {"blob": bytes(range(256))})
    client.xadd(stream, {"schema_version": "7", "id": "x", "task": "good", "call": b"\x90"})
    stranger = dict(client.xrange(stream, "-", "+", 1)[0][1], task=b"nobody.registered.this")
    client.xadd(stream, stranger)
    after = good.delay(2)
    with running(redis_app.Worker()):
        assert (before.get(timeout=5), after.get(timeout=5)) == (2, 3)
        wait_until(lambda: len(redis_app.dead_letters()) == 3, what="three dead letters")
    kinds = [(d.get("error_type"), d.get("error")) for d in redis_app.dead_letters().list()]
    assert kinds[0][0] == "DecodeError" and "schema_version" in kinds[0][1]
    assert kinds[1][0] == "DecodeError" and "'7'" in kinds[1][1]
    assert kinds[2][0] == "UnknownTask" and "nobody.registered.this" in kinds[2][1]
    assert redis_app.dead_letters().list()[0].fields[b"blob"] == bytes(range(256))
    assert stream_len(redis_app) == 0


def test_a_restarted_worker_first_reruns_what_it_held(redis_app: App) -> None:
    runs = Counter[str]()
    task = redis_app.task(name="t")(lambda n: runs.update([n]))
    task.map(["a", "b"])
    ghost = Consumer(redis_app, "stable-name")
    assert len(ghost.read()) == 2  # then the process died
    redis_app.Worker(name="stable-name").drain(timeout=5)
    assert runs == {"a": 1, "b": 1}
    assert ghost.pending() == {}


def test_workers_sharing_a_queue_run_each_task_once(
    make_app: Callable[..., App], app_name: str
) -> None:
    runs = Counter[int]()
    lock = threading.Lock()
    apps = [make_app(app_name) for _ in range(3)]
    for app in apps:

        @app.task(name="count")
        def count(n: int) -> None:
            with lock:
                runs[n] += 1

    apps[0].tasks["count"].map(range(300))
    workers = [app.Worker(name=f"w{i}", concurrency=2) for i, app in enumerate(apps)]
    threads = [threading.Thread(target=w.drain, kwargs={"timeout": 15}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert runs == dict.fromkeys(range(300), 1)
    infos = apps[0].broker.client.xinfo_groups(apps[0].keys("default").stream)
    assert [(i["name"], i["pending"]) for i in infos] == [(GROUP.encode(), 0)]


def test_a_task_that_outlives_its_worker_run_takes_no_new_work_afterwards(redis_app: App) -> None:
    """An embedded worker stopped while a task outlives shutdown_timeout returns and hands the
    entry back; when that task finally ends, its thread must stop there, not read and run new
    entries for a worker that is no longer running (nothing would settle or renew them)."""
    release, started = threading.Event(), threading.Event()
    ran: list[str] = []

    @redis_app.task(name="stuck")
    def stuck() -> None:
        started.set()
        release.wait(10)

    later = redis_app.task(name="later")(ran.append)
    stuck.delay()
    worker = redis_app.Worker(name="gone", shutdown_timeout=0.2)
    with running(worker):
        assert started.wait(10)
    later.delay("after the run")
    (leftover,) = [t for t in threading.enumerate() if t.name.startswith("gone-exec-")]
    release.set()
    leftover.join(5)
    assert not leftover.is_alive(), "the task's thread went on serving after its run ended"
    assert ran == []
    assert stream_len(redis_app, "default") == 2, "both entries are left for another worker"


def test_a_keeper_stuck_past_its_run_stays_out_of_the_next_one(
    redis_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keeper stuck in a Redis call (a connection gone silent) is not waited for past its read's
    block; when the call returns, in the next run of the same Worker, it ends there instead of
    keeping beside the new keeper."""
    stuck, release = threading.Event(), threading.Event()
    wakes = redis_app.broker.wakes

    def silent_once(after: dict[str, str], block_ms: int) -> dict[str, tuple[str, float]]:
        if not stuck.is_set():
            stuck.set()
            release.wait(10)
        return wakes(after, block_ms)

    monkeypatch.setattr(redis_app.broker, "wakes", silent_once)
    later = redis_app.task(name="later")(lambda: "later")
    worker = redis_app.Worker(name="again", block=0.1)
    with running(worker):
        assert stuck.wait(5)

    def keepers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "again-keeper"]

    [first] = keepers()
    with running(worker):
        release.set()
        first.join(5)
        assert not first.is_alive(), "the first run's keeper went on into the second run"
        assert len(keepers()) == 1
        assert later.apply_async(countdown=0.05).get(timeout=5) == "later"


def test_a_busy_worker_holds_no_more_than_it_can_start_across_several_queues(
    redis_app: App,
) -> None:
    """-c 1 on four queues with slow tasks: while one runs, the other three stay in their
    streams, free for another worker, instead of one entry per queue being taken."""
    started, release = threading.Event(), threading.Event()

    def slow() -> None:
        started.set()
        release.wait(10)

    queues = ["q1", "q2", "q3", "q4"]
    for queue in queues:
        redis_app.task(name=f"slow_{queue}", queue=queue)(slow).delay()
    worker = redis_app.Worker(queues, concurrency=1)
    with running(worker):
        assert started.wait(10)
        held = sum(redis_app.broker.backlog(redis_app.keys(q))[1] for q in queues)
        release.set()
    assert held == 1


def test_an_empty_queue_does_not_hold_up_a_busy_one_when_room_is_short(redis_app: App) -> None:
    """-c 1 on an empty queue and a busy one: waiting on the empty queue must not cost the busy
    queue a whole block (1 s) per task."""
    redis_app.task(name="idle", queue="a")(lambda: None)
    work = redis_app.task(name="work", queue="b")(lambda n: time.sleep(0.05) or n)
    results = [work.delay(n) for n in range(10)]
    worker = redis_app.Worker(["a", "b"], concurrency=1, block=1.0)
    began = time.monotonic()
    with running(worker):
        assert [r.get(timeout=15) for r in results] == list(range(10))
    assert time.monotonic() - began < 5, "ten 50 ms tasks took a block each"


def test_a_busy_worker_settles_several_finished_runs_per_round_trip(
    own_redis: RedisServer, app_name: str
) -> None:
    """A settle round trip costs about what a short task does: while more runs wait their turn,
    the settler lingers a moment so that one round trip settles several of them."""
    app = App(app_name, url=own_redis.url)
    app.task(name="lookup")(lambda n: time.sleep(0.0005) or n)  # waits on I/O for 0.5 ms
    admin = own_redis.client()

    def scripts_run() -> int:
        return int(admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    try:
        results = app.tasks["lookup"].map(range(200))
        before = scripts_run()
        app.Worker().drain(timeout=30)
        settles = scripts_run() - before
        assert [r.get(timeout=0) for r in results] == list(range(200))
    finally:
        app.close()
    # One per run without lingering; a handful of the scripts are the keeper's.
    assert settles <= 120, f"{settles} scripts to settle 200 runs"
