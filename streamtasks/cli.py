"""The `streamtasks` command: a thin click layer over the library; logging is set up here only."""

from __future__ import annotations

import datetime as dt
import gc
import json
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from streamtasks.app import App, load_app
from streamtasks.deadletters import DeadLetter, DeadLetters, locate
from streamtasks.errors import ConfigurationError, StreamTasksError
from streamtasks.supervisor import SUPERVISED_ENV, Signals, supervise

if TYPE_CHECKING:
    from streamtasks.worker import Worker

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# click >= 8.2 raises this for a group run without arguments; its message is the group's help.
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


class AppParam(click.ParamType):  # type: ignore[type-arg]
    name = "module:app"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> App:
        if isinstance(value, App):
            return value
        try:
            return load_app(value)
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)


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
@click.version_option(package_name="streamtasks-queue")
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
    processes: int,
    url: str | None,
    name: str | None,
    loglevel: str,
    shutdown_timeout: float,
    startup_timeout: float | None,
) -> None:
    """Run tasks. SIGTERM/SIGINT: finish in-flight tasks and exit 0; another one a second or more
    later exits at once (two within a second count as one)."""
    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT)
    try:
        w = _use_url(app, url).Worker(
            _queues(queues),
            concurrency,
            name=name,
            shutdown_timeout=shutdown_timeout,
            startup_timeout=startup_timeout,
        )
        app.broker  # noqa: B018 - opening the client now turns a bad URL into a usage error
    except StreamTasksError as exc:
        raise click.UsageError(str(exc)) from exc
    if processes > 1:
        sys.exit(supervise(sys.argv, processes, name))
    log = logging.getLogger(__name__)
    signals = Signals()

    # A supervised child takes orders from its supervisor only. A signal sent to the whole
    # process group (Ctrl-C, systemd's stop) reaches it twice, directly and forwarded, so it
    # never treats a repeat as "exit now": the supervisor escalates with SIGKILL instead.
    supervised = os.environ.get(SUPERVISED_ENV) == "1"

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
    """Inspect, replay and purge dead-lettered messages: of every queue of the app, or of -Q."""


QUEUES = click.option(
    "-Q",
    "--queues",
    "--queue",
    "queues",
    help="Comma-separated queues (default: every queue of the app).",
)
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _app_queues(app: App) -> list[str]:
    return app.queues or [app.default_queue]


def _streams(app: App, url: str | None, queues: str | None) -> list[DeadLetters]:
    app = _use_url(app, url)
    chosen = _queues(queues) or _app_queues(app)
    return [app.dead_letters(q) for q in dict.fromkeys(chosen)]


def _searched(streams: list[DeadLetters]) -> str:
    names = ", ".join(s.queue for s in streams)
    return f"queue {names}" if len(streams) == 1 else f"queues {names}"


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _when(iso: str | None, now: float) -> str:
    """`2026-12-01 21:55:11 UTC (4 min ago)` for a time as_dict() gives in ISO 8601."""
    if iso is None:
        return "-"
    at = dt.datetime.fromisoformat(iso)
    seconds = now - at.timestamp()
    ago = "in the future" if seconds < 0 else f"{_span(seconds)} ago"
    return f"{at:%Y-%m-%d %H:%M:%S} UTC ({ago})"


def _span(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{int(seconds // 86400)} days"
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 60)} min" if seconds >= 60 else f"{int(seconds)} s"


def _age(letter: DeadLetter) -> tuple[int, int]:
    ms, _, seq = letter.id.partition("-")
    return int(ms), int(seq)


@dlq.command("list")
@APP
@QUEUES
@URL
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@AS_JSON
def dlq_list(app: App, queues: str | None, url: str | None, limit: int, as_json: bool) -> None:
    """List dead-lettered messages, oldest first."""
    streams = _streams(app, url, queues)
    letters = sorted((d for s in streams for d in s.list(limit)), key=_age)[:limit]
    views = [d.as_dict() for d in letters]
    if as_json:
        _echo_json(views)
        return
    now = app.clock()
    rows = [("id", "queue", "task", "attempts", "failed at", "error")]
    for v in views:
        attempts = "?" if v["attempts"] is None else str(v["attempts"])
        error = " ".join(f"{v['error_type'] or '?'}: {v['error'] or ''}".split())  # one line
        error = error if len(error) <= 100 else error[:97] + "..."
        rows.append(
            (v["id"], v["queue"], v["task"] or "?", attempts, _when(v["failed_at"], now), error)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        click.echo("  ".join([*(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)), row[5]]))
    total = sum(len(s) for s in streams)
    more = total > len(letters)
    shown = f"{len(letters)} of {total}" if more else str(total)
    hint = "; a larger --limit shows more" if more else ""
    click.echo(f"{shown} dead-lettered message(s) in {_searched(streams)}{hint}", err=True)


@dlq.command("show")
@APP
@QUEUES
@URL
@click.option("--id", "entry_id", required=True, help="The dead-letter entry id.")
@AS_JSON
def dlq_show(app: App, queues: str | None, url: str | None, entry_id: str, as_json: bool) -> None:
    """Show one dead-lettered message in full, from whichever queue holds it."""
    streams = _streams(app, url, queues)
    [(queue, _)] = _located(streams, [entry_id], refused="").items()
    letter = next(s for s in streams if s.queue == queue).get(entry_id)
    if letter is None:
        raise click.ClickException(f"dead-lettered message {entry_id} is gone (replayed or purged)")
    view = letter.as_dict()
    if as_json:
        _echo_json(view)
        return
    for line in _details(view, app.clock()):
        click.echo(line)


def _details(view: dict[str, Any], now: float) -> list[str]:
    """`show` for people: times human, the call as JSON, the traceback last and indented."""
    pairs: list[tuple[str, str]] = []
    for key, value in view.items():
        if key in ("failed_at", "replayed_at"):
            pairs.append((key, _when(value, now)))
        elif key == "call" and "undecodable" in (value or {}):
            pairs.append(("call", f"undecodable: {value['undecodable']}"))
        elif key == "call" and value is not None:
            for part, data in value.items():
                name = part if part in ("args", "kwargs", "headers") else f"call.{part}"
                pairs.append((name, _compact(data)))
        elif key == "fields":
            pairs += [(f"fields.{name}", text) for name, text in value.items()]
        elif key != "traceback":
            pairs.append((key, "-" if value is None else str(value)))
    width = max(len(key) for key, _ in pairs) + 2
    lines = [f"{key + ':':<{width}}{value}" for key, value in pairs]
    trace = (view["traceback"] or "").rstrip()
    lines += ["traceback:", *("  " + line for line in trace.splitlines())] if trace else []
    return lines


def _compact(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


def _located(
    streams: list[DeadLetters], entry_ids: Iterable[str], refused: str
) -> dict[str, list[str]]:
    """The ids by the queue whose dead-letter stream holds them; an id in none, or in several,
    refuses the whole request before anything changes (`refused` says so)."""
    found = locate(streams, entry_ids)
    missing = [i for i, held_by in found.items() if not held_by]
    if missing:
        what = "message" if len(missing) == 1 else "messages"
        raise click.ClickException(
            f"no dead-lettered {what} {', '.join(missing)} in {_searched(streams)}{refused}"
        )
    for entry_id, held_by in found.items():
        if len(held_by) > 1:
            raise click.ClickException(
                f"dead-lettered message {entry_id} is in several queues ({', '.join(held_by)}); "
                f"choose one with -Q{refused}"
            )
    by_queue: dict[str, list[str]] = {}
    for entry_id, (queue,) in found.items():
        by_queue.setdefault(queue, []).append(entry_id)
    return by_queue


def _selection(
    streams: list[DeadLetters], entry_ids: tuple[str, ...], everything: bool, refused: str
) -> list[tuple[DeadLetters, list[str] | None]]:
    """Each stream to act on, with its ids (None: all of them)."""
    if bool(entry_ids) == everything:
        raise click.UsageError("give --id ID (repeatable) or --all")
    if everything:
        return [(s, None) for s in streams]
    by_queue = _located(streams, entry_ids, refused)
    return [(s, by_queue[s.queue]) for s in streams if s.queue in by_queue]


def _summary(verb: str, counts: dict[str, int]) -> str:
    per_queue = ", ".join(f"{n} from {q}" for q, n in counts.items() if n)
    return f"{verb} {sum(counts.values())} message(s)" + (f": {per_queue}" if per_queue else "")


@dlq.command("replay")
@APP
@QUEUES
@URL
@click.option("--id", "entry_ids", multiple=True, help="Entry id to replay (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Replay every dead-lettered message.")
@AS_JSON
def dlq_replay(
    app: App,
    queues: str | None,
    url: str | None,
    entry_ids: tuple[str, ...],
    everything: bool,
    as_json: bool,
) -> None:
    """Re-enqueue dead-lettered messages with their attempts reset."""
    streams = _streams(app, url, queues)
    chosen = _selection(streams, entry_ids, everything, "; nothing was replayed")
    done = {s.queue: s.replay(ids) for s, ids in chosen}
    counts = {queue: len(ids) for queue, ids in done.items()}
    if as_json:
        _echo_json({"replayed": [i for ids in done.values() for i in ids], "queues": counts})
    else:
        click.echo(_summary("replayed", counts))


@dlq.command("purge")
@APP
@QUEUES
@URL
@click.option("--id", "entry_ids", multiple=True, help="Entry id to delete (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Delete every dead-lettered message.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before purging --all.")
@AS_JSON
def dlq_purge(
    app: App,
    queues: str | None,
    url: str | None,
    entry_ids: tuple[str, ...],
    everything: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete dead-lettered messages for good."""
    streams = _streams(app, url, queues)
    chosen = _selection(streams, entry_ids, everything, "; nothing was purged")
    if everything and not yes:
        _confirm_purge(streams)
    counts = {s.queue: s.purge(ids) for s, ids in chosen}
    if as_json:
        _echo_json({"purged": sum(counts.values()), "queues": counts})
    else:
        click.echo(_summary("purged", counts))


def _confirm_purge(streams: list[DeadLetters]) -> None:
    counts = {s.queue: len(s) for s in streams}
    total = sum(counts.values())
    if not total:
        return
    per_queue = ", ".join(f"{n} in {q}" for q, n in counts.items() if n)
    what = f"{total} dead-lettered message(s) ({per_queue})"
    if not (sys.stdin and sys.stdin.isatty()):
        # Nobody to ask: a script must say --yes, rather than purge on an empty stdin.
        raise click.UsageError(f"purge --all would delete {what}; without a terminal, add --yes")
    click.confirm(f"Delete {what} for good?", abort=True, err=True)


@main.command()
@APP
@URL
@AS_JSON
def status(app: App, url: str | None, as_json: bool) -> None:
    """Backlog per queue: entries in the stream, pending on workers, delayed, dead-lettered."""
    app = _use_url(app, url)
    rows = []
    for queue in _app_queues(app):
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
    """Entry point, and the one place failures are worded: `error: <message>` on stderr, exit 1;
    a usage error prints the usage line first and exits 2."""
    try:
        code = main(standalone_mode=False)
    except click.UsageError as exc:
        if isinstance(exc, _NO_ARGS_IS_HELP):  # `streamtasks dlq` alone: the help, not an error
            exc.show()
            sys.exit(exc.exit_code)
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.\n", err=True)
        _fail(exc.format_message(), exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:  # a declined prompt, Ctrl-C or end of input at one
        _fail("aborted", 1)
    except StreamTasksError as exc:
        _fail(str(exc), 1)
    # Without standalone mode click returns the code of an explicit exit (--help, --version).
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
