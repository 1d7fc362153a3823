"""The `streamtasks` command: a thin click layer over the library; logging is set up here only."""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import select
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from streamtasks.app import App
from streamtasks.errors import StreamTasksError
from streamtasks.supervisor import SUPERVISED_ENV, supervise

if TYPE_CHECKING:
    from streamtasks.worker import Worker

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def load_app(target: str) -> App:
    """Import `module:attribute` (attribute defaults to `app`) and return the App it names."""
    module_name, _, attribute = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import module {module_name!r}: {exc}") from exc
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, App):
        raise click.BadParameter(
            f"{module_name!r} has no streamtasks App named {attribute or 'app'!r}"
        )
    return app


class AppParam(click.ParamType):  # type: ignore[type-arg]
    name = "module:app"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> App:
        if isinstance(value, App):
            return value
        try:
            return load_app(value)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


APP = click.option(
    "-A",
    "--app",
    "app",
    type=AppParam(),
    required=True,
    help="The App to use, as module:attribute (e.g. shop.tasks:app).",
)
URL = click.option("--url", help="Redis URL; overrides the app's own and STREAMTASKS_URL.")


def _use_url(app: App, url: str | None) -> App:
    if url:
        app.url = url
    return app


def _queues(value: str | None) -> list[str] | None:
    return [q.strip() for q in value.split(",") if q.strip()] if value else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamtasks")
def main() -> None:
    """streamtasks: a task queue on Redis Streams."""


@main.command()
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
@URL
@click.option(
    "-n",
    "--name",
    help="Consumer name, unique among live workers (default host-pid-random). Keep it stable "
    "across restarts and a worker first re-runs what it held when it last stopped.",
)
@click.option(
    "-l",
    "--loglevel",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--shutdown-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds in-flight tasks get to finish after SIGTERM before being handed back.",
)
def worker(
    app: App,
    queues: str | None,
    concurrency: int,
    processes: int,
    url: str | None,
    name: str | None,
    loglevel: str,
    shutdown_timeout: float,
) -> None:
    """Run tasks. SIGTERM/SIGINT: finish in-flight tasks and exit 0; a second one exits at once."""
    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT)
    try:
        w = _use_url(app, url).Worker(
            _queues(queues), concurrency, name=name, shutdown_timeout=shutdown_timeout
        )
        app.broker  # noqa: B018 - opening the client now turns a bad URL into a usage error
    except StreamTasksError as exc:
        raise click.UsageError(str(exc)) from exc
    if processes > 1:
        sys.exit(supervise(sys.argv, processes, name))
    stopping = False

    # A supervised child takes orders from its supervisor only. A signal sent to the whole
    # process group (Ctrl-C, systemd's stop) reaches it twice, directly and forwarded, so it
    # never treats a repeat as "exit now": the supervisor escalates with SIGKILL instead.
    supervised = os.environ.get(SUPERVISED_ENV) == "1"

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            if supervised:
                return
            logging.getLogger(__name__).warning(
                "second signal: exiting now, unfinished entries stay pending for another worker"
            )
            os._exit(128 + signum)
        stopping = True
        logging.getLogger(__name__).info("signal %d: finishing in-flight tasks", signum)
        w.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN if supervised else on_signal)
    # What start-up loaded (the app, its imports) lives as long as this process: moved out of the
    # collector's reach, full collections stop walking it, which shortened the pickup-latency tail
    # (p99 over 3 runs: 1.49-3.36 ms without, 1.61-1.82 ms with; benchmarks/, latency section).
    gc.collect()
    gc.freeze()
    _run_awake_to_signals(w)


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


@main.group()
def dlq() -> None:
    """Inspect, replay and purge a queue's dead-letter stream."""


QUEUE = click.option("-Q", "--queue", help="The queue (default: the app's default queue).")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@dlq.command("list")
@APP
@QUEUE
@URL
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@AS_JSON
def dlq_list(app: App, queue: str | None, url: str | None, limit: int, as_json: bool) -> None:
    """List dead-lettered messages, oldest first."""
    letters = _use_url(app, url).dead_letters(queue).list(limit)
    if as_json:
        click.echo(json.dumps([d.as_dict() for d in letters], indent=2, default=repr))
        return
    for d in letters:
        click.echo(f"{d.id}  {d.task}  attempts={d.get('attempts') or '?'}  {d.reason[:120]}")
    click.echo(f"{len(letters)} dead-lettered message(s)", err=True)


@dlq.command("show")
@APP
@QUEUE
@URL
@click.option("--id", "entry_id", required=True, help="The dead-letter entry id.")
@AS_JSON
def dlq_show(app: App, queue: str | None, url: str | None, entry_id: str, as_json: bool) -> None:
    """Show one dead-lettered message in full."""
    letter = _use_url(app, url).dead_letters(queue).get(entry_id)
    if letter is None:
        raise click.ClickException(f"no dead-lettered message {entry_id}")
    data = letter.as_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, default=repr))
        return
    for key, value in data.items():
        click.echo(f"{key}: {value}")


def _selection(entry_ids: tuple[str, ...], everything: bool) -> list[str] | None:
    if bool(entry_ids) == everything:
        raise click.UsageError("give --id ID (repeatable) or --all")
    return None if everything else list(entry_ids)


@dlq.command("replay")
@APP
@QUEUE
@URL
@click.option("--id", "entry_ids", multiple=True, help="Entry id to replay (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Replay every dead-lettered message.")
@AS_JSON
def dlq_replay(
    app: App,
    queue: str | None,
    url: str | None,
    entry_ids: tuple[str, ...],
    everything: bool,
    as_json: bool,
) -> None:
    """Re-enqueue dead-lettered messages with their attempts reset."""
    done = _use_url(app, url).dead_letters(queue).replay(_selection(entry_ids, everything))
    click.echo(json.dumps({"replayed": done}) if as_json else f"replayed {len(done)} message(s)")


@dlq.command("purge")
@APP
@QUEUE
@URL
@click.option("--id", "entry_ids", multiple=True, help="Entry id to delete (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Delete every dead-lettered message.")
@AS_JSON
def dlq_purge(
    app: App,
    queue: str | None,
    url: str | None,
    entry_ids: tuple[str, ...],
    everything: bool,
    as_json: bool,
) -> None:
    """Delete dead-lettered messages for good."""
    count = _use_url(app, url).dead_letters(queue).purge(_selection(entry_ids, everything))
    click.echo(json.dumps({"purged": count}) if as_json else f"purged {count} message(s)")


@main.command()
@APP
@URL
@AS_JSON
def status(app: App, url: str | None, as_json: bool) -> None:
    """Backlog per queue: entries in the stream, pending on workers, delayed, dead-lettered."""
    app = _use_url(app, url)
    rows = []
    for queue in app.queues or [app.default_queue]:
        keys = app.keys(queue)
        length, pending, delayed = app.broker.backlog(keys)
        rows.append(
            {
                "queue": queue,
                "stream": length,
                "pending": pending,
                "delayed": delayed,
                "dead": app.broker.dead_count(keys),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'queue':<24}{'stream':>10}{'pending':>10}{'delayed':>10}{'dead':>10}")
    for r in rows:
        click.echo(
            f"{r['queue']:<24}{r['stream']:>10}{r['pending']:>10}{r['delayed']:>10}{r['dead']:>10}"
        )


@main.command()
@AS_JSON
def demo(as_json: bool) -> None:
    """Black Friday on an embedded Redis: 1,000 orders for 100 units, one worker killed mid-run."""
    from streamtasks.demo import run_demo

    sys.exit(run_demo(as_json=as_json))


def run() -> None:
    """Entry point: StreamTasksError becomes a one-line message and exit status 1."""
    try:
        main(standalone_mode=True)
    except StreamTasksError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
