"""`streamtasks dlq list|show|replay|purge` and `streamtasks status`, as a user runs them."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgpack
import psutil
import pytest

from streamtasks import App, AsyncResult, Reject, TaskError
from streamtasks.message import SCHEMA_VERSION
from tests.e2e.conftest import ROOT, TASKS, Scene
from tests.e2e.tasks import APP_ENV, VISIBILITY_ENV, build_app

pytestmark = pytest.mark.timeout(45)


def with_refunds(app: App) -> App:
    """The e2e tasks plus one on a second queue. tests.e2e.tasks keeps to one queue, which the
    `status` tables of other tests count on."""

    @app.task(name="e2e.refund", queue="refunds")
    def refund(token: str) -> None:
        raise Reject("refund window closed")

    return app


#: The app `-A TWO_QUEUES` loads in the CLI process, set up like tests.e2e.tasks:app.
two_queues = with_refunds(
    build_app(
        os.environ.get(APP_ENV, "e2e"),
        visibility_timeout=float(os.environ.get(VISIBILITY_ENV, "1.0")),
    )
)
TWO_QUEUES = f"{__name__}:two_queues"


def json_of(scene: Scene, *args: str) -> Any:
    """Like scene.cli_json, for the two-queue app (cli_json adds `-A` of the one-queue app)."""
    done = scene.cli(*args, "-A", TWO_QUEUES, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition Redis offers no event for (a result status that changes twice)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def decline(scene: Scene, *customers: str) -> list[AsyncResult[str]]:
    """Run payments that the task rejects, so each ends in the dead-letter stream."""
    scene.worker("-n", "cashier")
    results = [scene.task("pay_unless_blocked").delay(c) for c in customers]
    for result in results:
        with pytest.raises(TaskError) as failed:
            result.get(timeout=10)
        assert (failed.value.status, failed.value.type_name) == ("DEAD", "Reject")
    return results


def decline_in_both_queues(scene: Scene) -> tuple[str, str]:
    """A declined payment in `default` and a refused refund in `refunds`: their dead-letter ids."""
    producer = with_refunds(build_app(scene.name, scene.server.url))
    try:
        producer.tasks["e2e.pay_unless_blocked"].delay("alice")
        producer.Worker(["default"], name="cashier").drain(timeout=10)
        [payment] = dead_ids(scene, "default")
        # Entry ids are per stream: two written in the same millisecond would be equal (the case
        # test_an_id_held_by_several_queues_needs_Q is about). Here each must name one entry.
        eventually(lambda: time.time() * 1000 > int(payment.partition("-")[0]) + 1)
        producer.tasks["e2e.refund"].delay("bob")
        producer.Worker(["refunds"], name="cashier").drain(timeout=10)
        [refund] = dead_ids(scene, "refunds")
    finally:
        producer.close()
    return payment, refund


def bury(scene: Scene, queue: str = "default", entry_id: str = "*", **fields: Any) -> str:
    """Write a dead-letter entry with the fields a worker writes, for what no task produces on
    demand: a chosen id, failure time or call. `fields` override or add fields."""
    entry = {
        "schema_version": SCHEMA_VERSION,
        "id": uuid.uuid4().hex,
        "task": "e2e.square",
        "call": msgpack.packb({"args": [3], "kwargs": {}, "headers": {}}),
        "error_type": "Reject",
        "error": "written by the test",
        "traceback": "",
        "attempts": "1",
        "worker": "cashier",
        "failed_at": str(int(time.time() * 1000)),
        "origin_stream": scene.app.keys(queue).stream,
        "origin_id": "1-0",
        **fields,
    }
    return scene.redis.xadd(scene.app.keys(queue).dead, entry, id=entry_id).decode()


def dead_ids(scene: Scene, queue: str = "default") -> list[str]:
    return [i.decode() for i, _ in scene.redis.xrange(scene.app.keys(queue).dead)]


def table(stdout: str) -> list[dict[str, str]]:
    """The rows of `dlq list` by column name; the columns are cut at the header's words."""
    header, *lines = stdout.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+( at)?", header)]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return [
        {n: line[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)}
        for line in lines
    ]


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The last line of stderr, which is where a failure says what went wrong."""
    assert "Traceback" not in done.stderr, done.stderr
    assert "Error:" not in done.stderr, "click's own wording, not ours"
    return done.stderr.splitlines()[-1]


def test_dlq_list_json_shows_each_dead_letter_with_its_reason(scene: Scene) -> None:
    decline(scene, "alice", "bob")

    letters = scene.cli_json("dlq", "list")

    assert [(d["task"], d["call"]["args"]) for d in letters] == [
        ("e2e.pay_unless_blocked", ["alice"]),
        ("e2e.pay_unless_blocked", ["bob"]),
    ]
    for d in letters:
        assert (d["error_type"], d["error"], d["worker"]) == ("Reject", "card declined", "cashier")
        assert d["origin_stream"] == scene.stream
        assert d["queue"] == "default"
    (queue,) = scene.cli_json("status")["queues"]
    assert (queue["waiting"], queue["in_flight"], queue["delayed"], queue["dead"]) == (0, 0, 0, 2)


def test_the_ids_dlq_list_json_prints_are_the_ones_dlq_show_takes(scene: Scene) -> None:
    decline(scene, "alice")
    (listed,) = scene.cli_json("dlq", "list")

    shown = scene.cli_json("dlq", "show", "--id", listed["id"])

    assert shown == listed
    assert "Reject: card declined" in shown["traceback"]


def test_a_replayed_dead_letter_runs_again_and_purge_empties_the_dlq(scene: Scene) -> None:
    alices_payment, _ = decline(scene, "alice", "bob")
    listing = scene.cli("dlq", "list", "-A", TASKS)
    assert listing.returncode == 0, listing.stderr
    assert "2 dead-lettered message(s) in queue default" in listing.stderr
    alice, bob = (row["id"] for row in table(listing.stdout))
    assert "Reject: card declined" in listing.stdout

    missing = scene.cli("dlq", "show", "-A", TASKS, "--id", "1-1")
    assert missing.returncode == 1
    assert error_line(missing) == "error: no dead-lettered message 1-1 in queue default"

    scene.traces.allow("alice")
    replayed = scene.cli_json("dlq", "replay", "--id", alice)
    assert replayed == {"replayed": [alice], "queues": {"default": 1}}
    eventually(lambda: alices_payment.status == "SUCCESS")
    assert scene.traces.completions("alice") == 1
    assert scene.cli_json("status")["queues"][0]["dead"] == 1

    assert scene.cli_json("dlq", "purge", "--id", bob) == {"purged": 1, "queues": {"default": 1}}
    assert scene.cli_json("dlq", "list") == []
    assert scene.cli_json("status")["queues"][0]["dead"] == 0


def test_dlq_commands_cover_every_queue_of_the_app_unless_Q_narrows_them(scene: Scene) -> None:
    payment, refund = decline_in_both_queues(scene)

    listing = scene.cli("dlq", "list", "-A", TWO_QUEUES)
    assert listing.returncode == 0, listing.stderr
    assert [(r["id"], r["queue"], r["task"]) for r in table(listing.stdout)] == [
        (payment, "default", "e2e.pay_unless_blocked"),
        (refund, "refunds", "e2e.refund"),
    ]
    assert "2 dead-lettered message(s) in queues default, refunds" in listing.stderr
    for narrowed, expected in [("refunds", [refund]), ("refunds,default", [payment, refund])]:
        letters = json_of(scene, "dlq", "list", "-Q", narrowed)
        assert [d["id"] for d in letters] == expected

    # Each id is found in whichever queue holds it, no -Q needed.
    shown = json_of(scene, "dlq", "show", "--id", refund)
    assert (shown["queue"], shown["error"]) == ("refunds", "refund window closed")
    replayed = scene.cli("dlq", "replay", "-A", TWO_QUEUES, "--id", refund)
    assert (replayed.returncode, replayed.stdout) == (0, "replayed 1 message(s): 1 from refunds\n")
    assert dead_ids(scene, "refunds") == []
    assert scene.redis.xlen(scene.app.keys("refunds").stream) == 1, "back in its own queue"
    purged = json_of(scene, "dlq", "purge", "--id", payment)
    assert purged == {"purged": 1, "queues": {"default": 1}}
    assert dead_ids(scene, "default") == []


def test_replay_and_purge_refuse_the_whole_request_when_an_id_is_in_no_queue(
    scene: Scene,
) -> None:
    payment, refund = decline_in_both_queues(scene)

    for command, verb in [("replay", "replayed"), ("purge", "purged")]:
        done = scene.cli("dlq", command, "-A", TWO_QUEUES, "--id", refund, "--id", "7-7")
        assert done.returncode == 1
        assert error_line(done) == (
            f"error: no dead-lettered message 7-7 in queues default, refunds; nothing was {verb}"
        )
    assert (dead_ids(scene, "default"), dead_ids(scene, "refunds")) == ([payment], [refund])
    narrowed = scene.cli("dlq", "show", "-A", TWO_QUEUES, "-Q", "default", "--id", refund)
    assert error_line(narrowed) == f"error: no dead-lettered message {refund} in queue default"


def test_an_id_held_by_several_queues_needs_Q(scene: Scene) -> None:
    """Entry ids are unique within one stream only: two queues can hold the same one."""
    bury(scene, "default", "5-0", error="in default")
    bury(scene, "refunds", "5-0", error="in refunds")

    for command, refused in [("show", ""), ("replay", "; nothing was replayed")]:
        done = scene.cli("dlq", command, "-A", TWO_QUEUES, "--id", "5-0")
        assert done.returncode == 1
        assert error_line(done) == (
            "error: dead-lettered message 5-0 is in several queues (default, refunds); "
            f"choose one with -Q{refused}"
        )
    assert (dead_ids(scene, "default"), dead_ids(scene, "refunds")) == (["5-0"], ["5-0"])

    shown = json_of(scene, "dlq", "show", "-Q", "refunds", "--id", "5-0")
    assert (shown["queue"], shown["error"]) == ("refunds", "in refunds")


def test_times_read_as_dates_in_tables_and_iso_8601_in_json(scene: Scene) -> None:
    now_ms = int(time.time() * 1000)
    two_days_ago = now_ms - (2 * 86400 + 3600) * 1000
    four_min_ago = now_ms - 270 * 1000
    bury(scene, failed_at=str(two_days_ago))
    bury(scene, failed_at=str(four_min_ago))

    listing = scene.cli("dlq", "list", "-A", TASKS)
    assert listing.returncode == 0, listing.stderr
    assert [row["failed at"] for row in table(listing.stdout)] == [
        f"{utc(two_days_ago):%Y-%m-%d %H:%M:%S} UTC (2 days ago)",
        f"{utc(four_min_ago):%Y-%m-%d %H:%M:%S} UTC (4 min ago)",
    ]
    stamps = [d["failed_at"] for d in scene.cli_json("dlq", "list")]
    assert stamps == [
        utc(ms).isoformat(timespec="milliseconds") for ms in (two_days_ago, four_min_ago)
    ]
    assert all(s.endswith("+00:00") for s in stamps)


def utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


def test_dlq_show_prints_the_call_as_json_and_the_traceback_last(scene: Scene) -> None:
    decline(scene, "alice")
    (listed,) = scene.cli_json("dlq", "list")

    done = scene.cli("dlq", "show", "-A", TASKS, "--id", listed["id"])

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r'args:\s+\["alice"\]', next(x for x in lines if x.startswith("args:")))
    assert re.fullmatch(r"kwargs:\s+\{\}", next(x for x in lines if x.startswith("kwargs:")))
    assert re.fullmatch(
        r"failed_at:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)",
        next(x for x in lines if x.startswith("failed_at:")),
    )
    assert re.fullmatch(r"attempts:\s+1", next(x for x in lines if x.startswith("attempts:")))
    trace = lines.index("traceback:")
    assert lines[trace + 1].startswith("  Traceback (most recent call last)")
    assert lines[-1].endswith("Reject: card declined"), "the traceback comes last"


def test_values_json_cannot_carry_are_shown_readably(scene: Scene) -> None:
    """What the codec carries beyond JSON (bytes, maps with other keys, sets, datetimes,
    decimals) is printed readably by `show` and `show --json`, never a crash."""
    when = dt.datetime(2026, 12, 1, 21, 55, 11, tzinfo=dt.timezone.utc)
    call = scene.app.codec.pack_call(
        [b"\x00\xff", {b"sku": 2, 7: "seven"}, {3, 1, 2}],
        {"at": when, "price": Decimal("1.50")},
        {},
    )
    entry = bury(scene, call=call)

    view = scene.cli_json("dlq", "show", "--id", entry)
    args = ["b'\\x00\\xff'", {"b'sku'": 2, "7": "seven"}, [1, 2, 3]]
    kwargs = {"at": "2026-12-01T21:55:11+00:00", "price": "1.50"}
    assert (view["call"]["args"], view["call"]["kwargs"]) == (args, kwargs)

    done = scene.cli("dlq", "show", "-A", TASKS, "--id", entry)
    assert done.returncode == 0, done.stderr
    shown = dict(line.split(maxsplit=1) for line in done.stdout.splitlines()[:16])
    assert (json.loads(shown["args:"]), json.loads(shown["kwargs:"])) == (args, kwargs)
    assert "b'sku'" in shown["args:"], "printed as JSON text, not as a Python repr of the call"

    garbage = bury(scene, call=b"\xc1")
    done = scene.cli("dlq", "show", "-A", TASKS, "--id", garbage)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^call: +undecodable: \S", done.stdout, re.MULTILINE), done.stdout


def test_counts_are_json_integers_and_attempts_says_it_once(scene: Scene) -> None:
    decline(scene, "alice")
    bury(scene, attempt="3", attempts="4")

    (real, written) = scene.cli_json("dlq", "list")

    assert (real["attempts"], written["attempts"]) == (1, 4)
    for view in (real, written):
        assert "attempt" not in view and "attempt" not in view["fields"]
        assert view["fields"] == {"schema_version": real["fields"]["schema_version"]}
    assert scene.cli_json("dlq", "show", "--id", written["id"])["attempts"] == 4


def test_a_malformed_id_is_refused_in_our_words(scene: Scene) -> None:
    for args in (["show", "--id", "nope"], ["replay", "--id", "nope"], ["purge", "--id", "nope"]):
        done = scene.cli("dlq", *args, "-A", TASKS)
        assert done.returncode == 1
        assert error_line(done) == "error: not a stream entry id (like 1732270000000-0): nope"
    too_big = scene.cli("dlq", "show", "-A", TASKS, "--id", "99999999999999999999-0")
    assert "Invalid stream ID" not in too_big.stderr
    assert error_line(too_big).startswith("error: not a stream entry id")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["dlq", "replay", "-A", TASKS], 2, "give --id ID (repeatable) or --all"),
        (["dlq", "purge", "-A", TASKS], 2, "give --id ID (repeatable) or --all"),
        (["dlq", "list", "-A", "nosuchmodule:app"], 2, "Invalid value for '-A' / '--app': "),
        (["dlq", "list"], 2, "Missing option '-A' / '--app'."),
        (["no-such-command"], 2, "No such command 'no-such-command'."),
        (["dlq", "show", "-A", TASKS, "--id", "1-1"], 1, "no dead-lettered message 1-1"),
    ],
    ids=["replay-no-selection", "purge-no-selection", "bad-app", "no-app", "bad-command", "gone"],
)
def test_every_failure_is_worded_error_colon(
    scene: Scene, args: list[str], code: int, message: str
) -> None:
    done = scene.cli(*args)

    assert done.returncode == code
    assert error_line(done).startswith(f"error: {message}")
    if code == 2:
        assert done.stderr.startswith("Usage: "), "a usage error shows the usage first"


def cli_at_terminal(
    scene: Scene, *args: str, answer: str | None = None
) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run a command whose stdin is a terminal; wait for its prompt, then type `answer`, or
    press Ctrl-C (SIGINT) when it is None. Returns the run and the prompt it showed."""
    terminal, stdin = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamtasks", *args],
        cwd=ROOT,
        env=scene.env(),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(stdin)
    try:
        assert proc.stderr is not None
        prompt = b""
        deadline = time.monotonic() + 15
        while not prompt.rstrip().endswith(b"]:"):
            assert time.monotonic() < deadline, f"no prompt; stderr so far: {prompt!r}"
            if select.select([proc.stderr], [], [], 0.5)[0]:
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk, f"stderr closed before a prompt: {prompt!r}"
                prompt += chunk
        if answer is None:
            # Only once it sleeps in the read: a signal caught just before the read starts
            # would not interrupt it (a person's Ctrl-C comes long after the prompt).
            process = psutil.Process(proc.pid)
            while process.status() != psutil.STATUS_SLEEPING:
                assert time.monotonic() < deadline, "never waited for an answer"
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
        else:
            os.write(terminal, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(terminal)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    return done, prompt.decode()


def test_purge_all_asks_first_naming_what_it_would_delete(scene: Scene) -> None:
    _, refund = decline_in_both_queues(scene)
    bury(scene, "default")
    purge_all = ("dlq", "purge", "-A", TWO_QUEUES, "--all")
    what = "3 dead-lettered message(s) (2 in default, 1 in refunds)"

    for answer in ("n", None):  # no, then Ctrl-C
        done, prompt = cli_at_terminal(scene, *purge_all, answer=answer)
        assert prompt.strip() == f"Delete {what} for good? [y/N]:"
        assert done.returncode == 1
        assert error_line(done) == "error: aborted"
        assert done.stdout == ""
    assert len(dead_ids(scene, "default")) == 2 and dead_ids(scene, "refunds") == [refund]

    done, _ = cli_at_terminal(scene, *purge_all, "--json", answer="y")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"purged": 3, "queues": {"default": 2, "refunds": 1}}
    assert dead_ids(scene, "default") == dead_ids(scene, "refunds") == []


def test_purge_all_without_a_terminal_needs_yes(scene: Scene) -> None:
    payment, refund = decline_in_both_queues(scene)
    purge_all = [sys.executable, "-m", "streamtasks", "dlq", "purge", "-A", TWO_QUEUES, "--all"]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*purge_all, *extra],
            cwd=ROOT,
            env=scene.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
        )

    refused = run()
    assert refused.returncode == 2
    assert error_line(refused) == (
        "error: purge --all would delete 2 dead-lettered message(s) (1 in default, 1 in refunds);"
        " without a terminal, add --yes"
    )
    assert (dead_ids(scene, "default"), dead_ids(scene, "refunds")) == ([payment], [refund])

    done = run("--yes")
    assert (done.returncode, done.stdout) == (
        0,
        "purged 2 message(s): 1 from default, 1 from refunds\n",
    )
    assert dead_ids(scene, "default") == dead_ids(scene, "refunds") == []
    assert run().stdout == "purged 0 message(s)\n", "nothing to ask about"


def test_replay_and_purge_need_a_selection(scene: Scene) -> None:
    for command in ("replay", "purge"):
        done = scene.cli("dlq", command, "-A", TASKS)
        assert done.returncode == 2
        assert "give --id ID (repeatable) or --all" in done.stderr


def test_status_prints_a_table(scene: Scene) -> None:
    scene.task("square").delay(1)

    done = scene.cli("status", "-A", TASKS)

    assert done.returncode == 0, done.stderr
    header, row, _, no_worker = done.stdout.splitlines()
    assert header.split()[:5] == ["queue", "waiting", "in_flight", "delayed", "dead"]
    assert row.split()[:5] == ["default", "1", "0", "0", "0"]
    assert no_worker == "no live worker"


def test_status_of_queues_nobody_used_yet_reads_zeros_and_writes_nothing(scene: Scene) -> None:
    done = scene.cli("status", "-A", TASKS, "--json")

    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert {row["waiting"] for row in found["queues"]} == {0}
    assert found["workers"] == []
    assert scene.redis.keys(f"{scene.name}:*") == []


def test_status_lists_a_live_worker_with_its_work_until_it_stops(scene: Scene) -> None:
    worker = scene.worker("-n", "cashier-1", "-c", "2")
    assert [r.get(timeout=10) for r in scene.task("square").map(range(5))] == [0, 1, 4, 9, 16]

    # The record says what the worker did as of its last beat (every 2 s).
    rows: list[dict[str, Any]] = []

    def counted() -> bool:
        rows[:] = scene.cli_json("status")["workers"]
        return rows[0]["done"] == 5

    eventually(counted)
    (row,) = rows
    assert (row["name"], row["pid"], row["queues"]) == ("cashier-1", worker.pid, ["default"])
    assert (row["concurrency"], row["in_flight"], row["failed"]) == (2, 0, 0)
    assert row["last_seen_s"] < 10

    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert scene.cli_json("status")["workers"] == []


def test_a_second_worker_under_a_live_workers_name_is_refused(scene: Scene) -> None:
    first = scene.worker("-n", "cashier-1")

    second = scene.worker("-n", "cashier-1", ready=0)

    assert second.wait(timeout=30) == 2
    second.wait_for(rf"error: worker name 'cashier-1' is held by a live worker \(pid {first.pid}")
    assert second.lines("serving") == []
    assert scene.task("square").delay(3).get(timeout=10) == 9
    assert first.proc.poll() is None
