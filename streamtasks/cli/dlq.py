"""`streamtasks dlq`: list, show, replay and purge the dead letters of an app's queues."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable
from typing import Any

import click

from streamtasks.app import App
from streamtasks.cli.options import APP, AS_JSON, QUEUES, URL, app_queues, queue_list, use_url
from streamtasks.deadletters import DeadLetter, DeadLetters, locate


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered messages: of every queue of the app, or of -Q."""


def _streams(app: App, url: str | None, queues: str | None) -> list[DeadLetters]:
    app = use_url(app, url)
    chosen = queue_list(queues) or app_queues(app)
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
