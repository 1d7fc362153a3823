"""`streamtasks worker`: run the tasks of an app, in one process or several supervised ones."""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from streamtasks.app import App
from streamtasks.cli.jsonlog import JsonFormatter
from streamtasks.cli.options import APP, URL, queue_list, use_url
from streamtasks.errors import StreamTasksError
from streamtasks.metrics import WorkerMetrics, serve
from streamtasks.registry import NameTaken
from streamtasks.supervisor import (
    PORT_FILE_ENV,
    REPLACE_ME,
    SUPERVISED_ENV,
    USAGE_ERROR,
    Signals,
    supervise,
)
from streamtasks.worker import Worker

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@click.command()
@APP
@click.option("-Q", "--queues", help="Comma-separated queues to serve (default: all the app's).")
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Threads per process running tasks.",
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes, supervised: one that dies is restarted.",
)
@click.option(
    "--async-concurrency",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="async def tasks running at once per process, on its event loop.",
)
@URL
@click.option(
    "-n",
    "--name",
    help="Consumer name (default host-pid-random); one a live worker holds is refused. Keep it "
    "stable across restarts and a worker first re-runs what it held when it last stopped.",
)
@click.option(
    "-l",
    "--loglevel",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus metrics at /metrics and probes at /healthz and /readyz on this port "
    "(needs streamtasks-queue[metrics]).",
)
@click.option(
    "--metrics-host",
    default="0.0.0.0",
    show_default=True,
    help="The address --metrics-port listens on.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object a line, with the task's id, name, queue, attempt, outcome, duration "
    "and worker on every task line.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds in-flight tasks get to finish after SIGTERM before being handed back.",
)
@click.option(
    "--startup-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Exit non-zero if Redis does not answer within this many seconds of starting "
    "(default: keep trying, warning at most every 30 s).",
)
def worker(
    app: App,
    queues: str | None,
    concurrency: int,
    async_concurrency: int,
    processes: int,
    url: str | None,
    name: str | None,
    loglevel: str,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
    shutdown_timeout: float,
    startup_timeout: float | None,
) -> None:
    """Run tasks. SIGTERM/SIGINT: finish in-flight tasks and exit 0; another one a second or more
    later exits at once (two within a second count as one)."""
    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    # A supervised child takes orders from its supervisor only. A signal sent to the whole
    # process group (Ctrl-C, systemd's stop) reaches it twice, directly and forwarded, so it
    # never treats a repeat as "exit now": the supervisor escalates with SIGKILL instead.
    # And it leaves no thread behind: one stuck past a time limit, it exits to be replaced.
    supervised = os.environ.get(SUPERVISED_ENV) == "1"
    try:
        metrics = None if metrics_port is None else WorkerMetrics()
        w = use_url(app, url).Worker(
            queue_list(queues),
            concurrency,
            name=name,
            shutdown_timeout=shutdown_timeout,
            startup_timeout=startup_timeout,
            async_concurrency=async_concurrency,
            exit_on_stuck=supervised,
            metrics=metrics,
        )
        app.broker  # noqa: B018 - opening the client now turns a bad URL into a usage error
    except StreamTasksError as exc:
        raise click.UsageError(str(exc)) from exc
    if processes > 1:
        probes = None if metrics_port is None else (metrics_host, metrics_port)
        sys.exit(supervise(sys.argv, processes, name, probes))
    log = logging.getLogger(__name__)
    signals = Signals()
    if metrics is not None and metrics_port is not None:
        try:
            server = serve(metrics.text, w.health, lambda: w.ready, metrics_port, metrics_host)
        except OSError as exc:
            where = f"{metrics_host}:{metrics_port}"
            raise click.UsageError(f"cannot serve metrics on {where}: {exc}") from exc
        bound = server.server_address[1]
        log.info("metrics and probes on http://%s:%d/metrics", metrics_host, bound)
        port_file = os.environ.get(PORT_FILE_ENV)
        if port_file:  # a child of -p: its supervisor gathers what this port serves
            Path(port_file + ".new").write_text(str(bound))
            os.replace(port_file + ".new", port_file)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        heard = signals.heard()
        if heard == Signals.REPEAT:
            return
        if heard == Signals.AGAIN:
            if supervised:
                return
            log.warning("exiting now: unfinished tasks stay pending and other workers run them")
            os._exit(128 + signum)
        log.warning(
            "stopping: waiting up to %gs for %d running task(s) to finish; %s again to exit at "
            "once, leaving them to other workers",
            w.shutdown_timeout,
            w.running,
            "Ctrl-C" if signum == signal.SIGINT else f"{signal.Signals(signum).name}",
        )
        w.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN if supervised else on_signal)
    # What start-up loaded (the app, its imports) lives as long as this process: moved out of the
    # collector's reach, full collections stop walking it, which shortened the pickup-latency tail
    # (p99 over 3 runs: 1.49-3.36 ms without, 1.61-1.82 ms with; benchmarks/, latency section).
    gc.collect()
    gc.freeze()
    try:
        _run_awake_to_signals(w)
    except NameTaken as exc:
        # Starting again would not help while the namesake lives: exit as a usage error does,
        # which a -p supervisor does not restart.
        click.echo(f"error: {exc}", err=True)
        sys.exit(USAGE_ERROR)
    if w.stuck:
        sys.exit(REPLACE_ME)


def _run_awake_to_signals(w: Worker) -> None:
    """`w.run()` on a thread of its own, while the main thread waits on the signal wakeup fd.

    Python runs signal handlers on the main thread only, and the kernel may hand a signal to any
    thread (it does so with a second signal that comes while the main thread still handles the
    first): a main thread blocked in a lock inside `run()` would not notice. The wakeup fd is
    written whichever thread took the signal, so the main thread wakes and runs the handler.
    """
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    previous = signal.set_wakeup_fd(wake_write)
    failed: list[BaseException] = []
    done = threading.Event()

    def serve() -> None:
        try:
            w.run()
        except BaseException as exc:  # re-raised on the main thread below
            failed.append(exc)
        finally:
            done.set()
            os.write(wake_write, b"\0")

    thread = threading.Thread(target=serve, name=f"{w.name}-run")
    thread.start()
    try:
        while not done.is_set():
            select.select([wake_read], [], [])
            os.read(wake_read, 512)
    finally:
        signal.set_wakeup_fd(previous)
    thread.join()
    os.close(wake_read)
    os.close(wake_write)
    if failed:
        raise failed[0]
