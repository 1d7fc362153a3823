"""`streamtasks status`: every queue of an app and every live worker, once or every few seconds.

`--json` prints one object (one a line with `--watch`), whose fields docs/operations.md defines:
{"queues": [{"name", "waiting", "in_flight", "delayed", "dead", "oldest_waiting_s",
"done_per_min_1m", "done_per_min_5m", "consumers"}], "workers": [{"name", "host", "pid", "queues",
"in_flight", "done", "failed", "retried", "revoked", "last_seen_s", "up_s", "version",
"concurrency", "async_concurrency"}]}
"""

from __future__ import annotations

import json
import threading
from typing import Any

import click

from streamtasks.app import App
from streamtasks.cli.options import APP, AS_JSON, QUEUES, URL, app_queues, queue_list, use_url
from streamtasks.keys import WorkerKeys

_COUNTS = ("in_flight", "done", "failed", "retried", "revoked", "pid")
_QUEUE_COLUMNS = (
    *("waiting", "in_flight", "delayed", "dead", "oldest_waiting_s"),
    *("done_per_min_1m", "done_per_min_5m", "consumers"),
)
_WORKER_COLUMNS = ("host", "pid", "in_flight", "done", "failed", "retried", "last_seen_s")


@click.command()
@APP
@QUEUES
@URL
@AS_JSON
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Print it again every SECONDS until Ctrl-C.",
)
def status(
    app: App, queues: str | None, url: str | None, as_json: bool, watch: float | None
) -> None:
    """Every queue (waiting, in flight, delayed, dead, oldest waiting, runs ended a minute) and
    every live worker."""
    app = use_url(app, url)
    names = queue_list(queues) or app_queues(app)
    pause = threading.Event()
    try:
        while True:
            found = snapshot(app, names)
            if as_json:
                click.echo(json.dumps(found, indent=None if watch else 2))
            else:
                if watch:
                    click.clear()
                click.echo(_tables(found))
            if watch is None or pause.wait(watch):
                return
    except KeyboardInterrupt:  # how --watch is ended
        return


def snapshot(app: App, queues: list[str]) -> dict[str, Any]:
    """What `status --json` prints, at the app's clock's now."""
    now = app.clock()
    minute = int(now // 60)
    # Runs are counted per clock minute: a window of the last 60 s (or 300) takes the minutes it
    # covers whole, and of the oldest one it reaches into the part it covers, as if its runs
    # were spread evenly.
    minutes = [minute - i for i in range(6)]
    covered = 1 - (now % 60) / 60
    rows = []
    for name in queues:
        found = app.broker.queue_status(app.keys(app.check_queue(name)), minutes)
        rows.append(
            {
                "name": name,
                "waiting": found.waiting,
                "in_flight": found.in_flight,
                "delayed": found.delayed,
                "dead": found.dead,
                "oldest_waiting_s": found.oldest_waited(now),
                "done_per_min_1m": round(found.ended[0] + found.ended[1] * covered, 1),
                "done_per_min_5m": round((sum(found.ended[:5]) + found.ended[5] * covered) / 5, 1),
                "consumers": found.consumers,
            }
        )
    workers = []
    for record in app.broker.workers(WorkerKeys(app.name)):
        row = {k: _int(record.get(k)) for k in _COUNTS}
        workers.append(
            {
                "name": record.get("name"),
                "host": record.get("host"),
                "queues": [q for q in record.get("queues", "").split(",") if q],
                **row,
                "last_seen_s": _since(now, record.get("last_seen")),
                "up_s": _since(now, record.get("started")),
                "version": record.get("version"),
                "concurrency": _int(record.get("concurrency")),
                "async_concurrency": _int(record.get("async_concurrency")),
            }
        )
    return {"queues": rows, "workers": workers}


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _since(now: float, ms: str | None) -> float | None:
    found = _int(ms)
    return None if found is None else round(max(0.0, now - found / 1000), 3)


def _tables(found: dict[str, Any]) -> str:
    queues = [[q["name"], *(_cell(q[c]) for c in _QUEUE_COLUMNS)] for q in found["queues"]]
    lines = _table(["queue", *_QUEUE_COLUMNS], queues)
    lines.append("")
    if found["workers"]:
        workers = [[w["name"], *(_cell(w[c]) for c in _WORKER_COLUMNS)] for w in found["workers"]]
        lines += _table(["worker", *_WORKER_COLUMNS], workers)
    else:
        lines.append("no live worker")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell: the first left-aligned, the others right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        right = [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        return "  ".join([first.ljust(widths[0]), *right])

    return [line(header)] + [line(row) for row in rows]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)
