"""The event loop of a worker run: its `async def` tasks run there, many at once, beside the
threads that run its plain tasks (an Executor, see executors.py); and the watchdog that names a
task blocking the loop.

A task that calls something blocking (time.sleep, a sync HTTP client) inside `async def` holds up
every other async task of the worker. The loop beats every `stall / 4` seconds; when a beat is
`stall` late, the watchdog thread looks at the loop thread's stack, finds the run it is in, and
logs the task's name and the line it is blocked at, once per stall.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine
from functools import partial
from typing import Any

from streamtasks.errors import TimeLimitExceeded
from streamtasks.executors import Host
from streamtasks.limits import Interruptible
from streamtasks.outcome import Delivery, Settle
from streamtasks.runs import aexecute, begin, begins_plainly, context_of, expired, finish, not_run

log = logging.getLogger(__name__)

#: The function whose frame, on the loop thread's stack, holds the delivery being run.
RUN_FRAME = "aexecute"


class LoopExecutor:
    """One event loop on a thread of its own, running what `submit` is given."""

    def __init__(self, host: Host, *, stall: float = 0.5):
        self.host = host
        self.name = host.name
        self.stall = stall
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=f"{self.name}-loop", daemon=True)
        self._watchdog = threading.Thread(
            target=self._watch, name=f"{self.name}-watch", daemon=True
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._submitted = 0  # handed over, not yet a task on the loop
        self._idle = threading.Condition()
        #: Set once the worker cancels what runs: a CancelledError then is not the task's own.
        self.cancelling = False
        self._beat = time.monotonic()
        self._closing = threading.Event()

    def start(self) -> None:
        self._thread.start()
        self._watchdog.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def finish(self, deadline: float) -> None:
        if not self.wait_idle(deadline - time.monotonic()):
            # Cancelled runs record nothing: handed back by the run, they run elsewhere.
            self.cancel(timeout=1.0)

    def submit(self, deliveries: list[Delivery]) -> None:
        """Run these on the loop (from any thread): one wake-up of the loop for them all."""
        with self._idle:
            self._submitted += len(deliveries)
        self._loop.call_soon_threadsafe(self._spawn, deliveries)

    @property
    def busy(self) -> bool:
        """Whether anything runs on the loop now, or is about to."""
        return not self._is_idle()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs on the loop; False if something still does after `timeout`."""
        with self._idle:
            return self._idle.wait_for(self._is_idle, timeout=max(0.0, timeout))

    def _is_idle(self) -> bool:
        return not self._tasks and not self._submitted

    def cancel(self, timeout: float) -> None:
        """Cancel what still runs, and wait (up to `timeout`) for it to end."""
        self.cancelling = True
        self._loop.call_soon_threadsafe(lambda: [t.cancel() for t in list(self._tasks)])
        self.wait_idle(timeout)

    def close(self) -> None:
        """Cancel what still runs, then stop the loop and its watchdog."""
        if not self._thread.is_alive():  # never started: the run failed before it could
            self._loop.close()
            return
        self.cancel(timeout=1.0)
        self._closing.set()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._watchdog.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    # -- on the loop -----------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._tick)
        self._loop.run_forever()

    def _tick(self) -> None:
        self._beat = time.monotonic()
        if not self._closing.is_set():
            self._loop.call_later(self.stall / 4, self._tick)

    def _spawn(self, deliveries: list[Delivery]) -> None:
        create, done, tasks = self._loop.create_task, self._done, self._tasks
        for d in deliveries:
            task = create(self._run(d))
            if self.cancelling:
                task.cancel()  # submitted as the worker was giving everything back
            tasks.add(task)
            task.add_done_callback(done)
        with self._idle:  # only now: until then the batch counted as submitted
            self._submitted -= len(deliveries)

    def _done(self, task: asyncio.Task[None]) -> None:
        # The set changes on the loop's thread only; other threads only look (see _is_idle).
        self._tasks.discard(task)
        if not self._tasks:
            with self._idle:
                if self._is_idle():
                    self._idle.notify_all()
        if not task.cancelled() and task.exception() is not None:
            log.critical(
                "worker %s: an async run failed outside its task",
                self.name,
                exc_info=task.exception(),
            )

    async def _run(self, d: Delivery) -> None:
        """Run an async task, then hand how it ended to the host, as a thread of the pool does
        for a plain one."""
        host, app = self.host, self.host.app
        if host.ended.is_set():
            return  # its run is over: the entry stays pending in Redis, for redelivery
        d.started, d.started_at = True, time.time()
        alarms: list[asyncio.TimerHandle] = []
        options = d.options
        assert options is not None
        limited = options.soft_time_limit is not None or options.time_limit is not None
        try:
            late = expired(d, app.clock())
            if late is not None:
                settle: Settle | None = not_run(d, late, app, host.name)
            elif not begins_plainly(d) and not await asyncio.to_thread(
                begin, d, app, host.name, host.io
            ):
                settle = None
            else:
                # Its revocation cancels it, from whichever thread the keeper finds it on.
                task = asyncio.current_task()
                assert task is not None
                d.interrupt = partial(self._loop.call_soon_threadsafe, task.cancel)
                if d.revoked:  # while it began: the keeper found nothing to interrupt then
                    task.cancel()
                settle, d.took = await aexecute(
                    d,
                    app,
                    worker=host.name,
                    context=partial(context_of, d, host.name, app, True),
                    log_success=host.log_each,
                    cancelled_here=lambda: d.given_up or self.cancelling,
                    watch=partial(self._limit, d, alarms) if limited else None,
                )
        except asyncio.CancelledError:
            if d.given_up:
                return  # past its time limit: decided already
            raise  # shutdown: the entry is handed back with what still runs
        except BaseException as exc:  # streamtasks itself failed: stop, as a thread would
            log.critical(
                "worker %s: running %s[%s] failed; stopping",
                host.name,
                d.task_name,
                d.task_id,
                exc_info=True,
                extra={"worker": host.name},
            )
            host.decided(d, None)
            host.failed(exc)
            return
        finally:
            for alarm in alarms:
                alarm.cancel()
        if not d.given_up:  # else it ended after all, but was decided at its time limit
            host.decided(d, settle)

    def _limit(
        self, d: Delivery, alarms: list[asyncio.TimerHandle], coro: Coroutine[Any, Any, Any]
    ) -> Awaitable[Any]:
        """Set the alarms that stop a run at its time limits; the awaitable to run it by."""
        loop, task = self._loop, asyncio.current_task()
        assert task is not None and d.options is not None
        soft, hard = d.options.soft_time_limit, d.options.time_limit
        if hard is not None:
            alarms.append(loop.call_later(hard, self._give_up, d, task, hard))
        if soft is None:
            return coro
        softened = Interruptible(coro)

        def soften() -> None:
            softened.soften()
            task.cancel()

        alarms.append(loop.call_later(soft, soften))
        return softened

    def _give_up(self, d: Delivery, task: asyncio.Task[Any], limit: float) -> None:
        """A task ran past its time limit: decide its run as TimeLimitExceeded and cancel it;
        should it go on all the same, whatever it ends with is dropped."""
        host = self.host
        d.given_up = True
        exc = TimeLimitExceeded(f"ran past its time limit of {limit:g}s and was cancelled")
        host.decided(d, finish(d, host.app, None, exc, limit, worker=host.name, log_success=False))
        task.cancel()

    # -- the watchdog ----------------------------------------------------------------------

    def _watch(self) -> None:
        reported = False
        while not self._closing.wait(self.stall / 4):
            late = time.monotonic() - self._beat
            if late < self.stall:
                reported = False
            elif not reported:
                reported = True
                self._report(late)

    def _report(self, late: float) -> None:
        frame = sys._current_frames().get(self._thread.ident or 0)
        where, task = "?", "a callback outside any task"
        if frame is not None:
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            while frame is not None:
                d = frame.f_locals.get("d") if frame.f_code.co_name == RUN_FRAME else None
                if isinstance(d, Delivery):
                    task = f"{d.task_name}[{d.task_id}]"
                    break
                frame = frame.f_back
        log.warning(
            "worker %s: the event loop has been blocked for %.1fs by %s, at %s: every async "
            "task of this worker waits meanwhile. Await instead, or run blocking code in a "
            "thread (await asyncio.to_thread(...))",
            self.name,
            late,
            task,
            where,
            extra={"worker": self.name, "task": task},
        )
