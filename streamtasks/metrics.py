"""A worker's Prometheus metrics and health probes: `streamtasks worker --metrics-port PORT`.

Needs prometheus-client (`pip install 'streamtasks-queue[metrics]'`). The port serves `/metrics`
(Prometheus text), `/healthz` (200 while the worker's threads are alive and Redis answered
lately, else 503 with why) and `/readyz` (200 once the worker serves its queues). Task counts and
durations are recorded by the settler thread as it applies each run, off the threads that run
tasks; the worker's own figures are read when scraped. Queue gauges are computed by one worker of
the app at a time (the one that holds a short lease in Redis), so summing them over workers is
not needed and is wrong.
"""

from __future__ import annotations

import bisect
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from streamtasks.errors import ConfigurationError
from streamtasks.outcome import Settle
from streamtasks.protocol import REFUSED

if TYPE_CHECKING:
    from streamtasks.worker import Worker

#: How each settled status counts in streamtasks_tasks_total{outcome}.
OUTCOMES = {
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "RETRY": "retried",
    "DEAD": "dead",
    "REVOKED": "revoked",
}
_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install 'streamtasks-queue[metrics]'"
        ) from None
    return prometheus_client


class _Histogram:
    """Observations of one label set, in the buckets of `_SECONDS`: a bisect and two additions
    an observation, where prometheus-client's own takes a lock and a loop (the settler records
    tens of thousands a second)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_SECONDS) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(_SECONDS, value)] += 1
        self.sum += value

    def read(self) -> tuple[list[tuple[str, float]], float]:
        """The buckets, cumulative with +Inf last, and the sum: the sum first, then one copy of
        the counts, so the count (the +Inf bucket) matches the buckets."""
        total, counts, cumulative, buckets = self.sum, list(self.counts), 0, []
        for bound, count in zip([*map(str, _SECONDS), "+Inf"], counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        return buckets, total


class _TaskFigures:
    """What one task of one queue did: runs by outcome, and their durations and waits."""

    __slots__ = ("runs", "took", "waited")

    def __init__(self) -> None:
        self.runs = dict.fromkeys(OUTCOMES.values(), 0)
        self.took = _Histogram()
        self.waited = _Histogram()


class WorkerMetrics:
    """The metrics of one worker process, on a registry of their own. What `observe` records is
    kept in plain counts (one thread writes them) and turned into metrics when scraped."""

    def __init__(self) -> None:
        self.registry = _client().CollectorRegistry()
        self._tasks: dict[tuple[str, str], _TaskFigures] = {}
        self._fenced = 0
        self.worker: Worker | None = None
        self.registry.register(_Figures(self))

    def observe(self, s: Settle, code: int) -> None:
        """One run the settler applied (`code` says how); called on the settler's thread."""
        if code == REFUSED:
            self._fenced += 1
            return
        d = s.delivery
        outcome = OUTCOMES.get(s.status)
        if outcome is None:
            return  # skipped: done already under its idempotency key
        task = (d.task_name, d.keys.queue)
        figures = self._tasks.get(task)
        if figures is None:
            figures = self._tasks[task] = _TaskFigures()
        figures.runs[outcome] += 1
        if d.started:  # else revoked or dead-lettered before it ran: no times to record
            figures.took.observe(d.took)
            added_ms = int(d.entry_id.partition("-")[0])
            figures.waited.observe(max(0.0, d.started_at - added_ms / 1000))

    def text(self) -> bytes:
        return bytes(_client().generate_latest(self.registry))


class _Figures:
    """Everything the worker measured, turned into metric families at each scrape."""

    def __init__(self, metrics: WorkerMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        m = self.metrics
        runs = CounterMetricFamily(
            "streamtasks_tasks",
            "Runs that ended, by task, queue and outcome.",
            labels=["task", "queue", "outcome"],
        )
        took = HistogramMetricFamily(
            "streamtasks_task_duration_seconds", "How long a task ran.", labels=["task", "queue"]
        )
        waited = HistogramMetricFamily(
            "streamtasks_task_wait_seconds",
            "From when an entry entered its queue (or a delayed one came due) to its start.",
            labels=["task", "queue"],
        )
        for task, figures in list(m._tasks.items()):
            for outcome, count in list(figures.runs.items()):
                if count:
                    runs.add_metric([*task, outcome], count)
            if any(figures.took.counts):
                took.add_metric(list(task), *figures.took.read())
                waited.add_metric(list(task), *figures.waited.read())
        yield runs
        yield took
        yield waited
        yield CounterMetricFamily(
            "streamtasks_worker_fenced_refusals",
            "Runs whose outcome was not applied: another worker had taken their entry over.",
            value=m._fenced,
        )
        found = m.worker.figures() if m.worker is not None else None
        if found is None:
            return  # not serving
        yield GaugeMetricFamily(
            "streamtasks_worker_in_flight", "Runs under way here.", value=found.in_flight
        )
        yield GaugeMetricFamily(
            "streamtasks_worker_redis_silence_seconds",
            "Seconds since Redis last answered this worker.",
            value=found.silence,
        )
        yield CounterMetricFamily(
            "streamtasks_worker_reclaimed",
            "Abandoned entries this worker took over.",
            value=found.reclaimed,
        )
        yield CounterMetricFamily(
            "streamtasks_worker_lease_renewals",
            "Leases of held entries renewed.",
            value=found.renewed,
        )
        queues = found.queues
        for name, help_text in _QUEUE_GAUGES.items():
            family = GaugeMetricFamily(f"streamtasks_queue_{name}", help_text, labels=["queue"])
            for queue, measured in queues.items():
                family.add_metric([queue], measured[name])
            yield family


_QUEUE_GAUGES = {
    "waiting": "Entries no worker has read yet.",
    "in_flight": "Entries read by a worker and not settled yet.",
    "delayed": "Retries and delayed tasks not yet due.",
    "dead": "Dead letters.",
    "oldest_waiting_seconds": "How long the oldest waiting entry has waited.",
}


def serve(
    text: Callable[[], bytes],
    health: Callable[[], str | None],
    ready: Callable[[], bool],
    port: int,
    host: str = "0.0.0.0",
) -> ThreadingHTTPServer:
    """Serve /metrics (what `text` gives), /healthz and /readyz on `host`:`port` from a thread
    of its own."""

    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, text(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/healthz":
                why = health()
                self._answer(200 if why is None else 503, (why or "ok").encode() + b"\n")
            elif path == "/readyz":
                ok = ready()
                self._answer(200 if ok else 503, b"ready\n" if ok else b"not serving yet\n")
            else:
                self._answer(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _answer(self, code: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes are not worth a log line each."""

    server = ThreadingHTTPServer((host, port), Probe)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


# -- under `streamtasks worker -p`: one endpoint for all the children -----------------------

#: Gauges whose children's values add up; the others (silence, the queue figures only one
#: worker measures) are the largest child's.
_SUMMED_GAUGES = frozenset({"streamtasks_worker_in_flight"})
#: How long a child has to answer a probe: the whole endpoint answers within about this long.
_CHILD_TIMEOUT = 0.5

Series = tuple[str, tuple[tuple[str, str], ...]]


def _probe(port: int, path: str) -> tuple[int, bytes]:
    """GET a child's probe on loopback: its status and body, or 0 when it does not answer."""
    try:
        url = f"http://127.0.0.1:{port}{path}"
        with urllib.request.urlopen(url, timeout=_CHILD_TIMEOUT) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as failed:
        return failed.code, failed.read()
    except OSError:
        return 0, b""


def _probe_all(ports: dict[str, int], path: str) -> dict[str, tuple[int, bytes]]:
    """Every child's answer to `path`, asked all at once."""
    if not ports:
        return {}
    with ThreadPoolExecutor(max_workers=len(ports)) as pool:
        answers = pool.map(lambda port: _probe(port, path), ports.values())
        return dict(zip(ports, answers, strict=True))


class Gathered:
    """The children's /metrics as one: counters and histograms added up, runs in flight too,
    and of the other gauges the largest. A total never goes down: what a child counted before
    it was replaced (a new child answers on a new port) stays in it, and a child that does not
    answer this time counts with what it said last."""

    def __init__(self) -> None:
        self._kinds: dict[str, tuple[str, str]] = {}  # family: its type and help
        self._families: dict[Series, str] = {}  # each series: its family
        self._last: dict[tuple[str, int], dict[Series, float]] = {}  # counts, by child and port
        self._retired: dict[Series, float] = {}  # counts of children since replaced
        self._lock = threading.Lock()

    def text(self, ports: dict[str, int]) -> bytes:
        from prometheus_client.parser import text_string_to_metric_families

        answers = _probe_all(ports, "/metrics")
        with self._lock:
            gauges: dict[Series, float] = {}
            for child, (status, body) in answers.items():
                if status != 200:
                    continue
                try:
                    families = list(text_string_to_metric_families(body.decode()))
                except ValueError:
                    continue  # not a worker's answer: a stale port someone else took
                counts: dict[Series, float] = {}
                for family in families:
                    self._kinds.setdefault(family.name, (family.type, family.documentation))
                    summed = family.name in _SUMMED_GAUGES
                    for sample in family.samples:
                        series = (sample.name, tuple(sorted(sample.labels.items())))
                        self._families[series] = family.name
                        if family.type != "gauge":
                            counts[series] = sample.value
                        elif series not in gauges:
                            gauges[series] = sample.value
                        elif summed:
                            gauges[series] += sample.value
                        else:
                            gauges[series] = max(gauges[series], sample.value)
                self._last[(child, ports[child])] = counts
            for gone in [k for k in self._last if ports.get(k[0]) != k[1]]:
                for series, value in self._last.pop(gone).items():
                    self._retired[series] = self._retired.get(series, 0.0) + value
            totals = dict(self._retired)
            for counts in self._last.values():
                for series, value in counts.items():
                    totals[series] = totals.get(series, 0.0) + value
            return self._render({**totals, **gauges})

    def _render(self, values: dict[Series, float]) -> bytes:
        by_family: dict[str, list[tuple[Series, float]]] = {}
        for series, value in values.items():
            by_family.setdefault(self._families[series], []).append((series, value))
        lines = []
        for family, samples in by_family.items():
            kind, documentation = self._kinds[family]
            # A counter's family is named without its _total, its samples with it.
            shown = f"{family}_total" if kind == "counter" else family
            lines.append(f"# HELP {shown} {_escaped(documentation, help_text=True)}")
            lines.append(f"# TYPE {shown} {kind}")
            for (name, labels), value in samples:
                tags = ",".join(f'{k}="{_escaped(v)}"' for k, v in labels)
                lines.append(f"{name}{{{tags}}} {value!r}" if tags else f"{name} {value!r}")
        return ("\n".join(lines) + "\n").encode()


def _escaped(text: str, help_text: bool = False) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text if help_text else text.replace('"', '\\"')


def children_health(ports: dict[str, int | None], path: str) -> str | None:
    """None if every child answers `path` (/healthz or /readyz) with 200; else who does not."""
    answers = _probe_all({c: p for c, p in ports.items() if p is not None}, path)
    failing = []
    for child, port in ports.items():
        status, body = answers.get(child, (0, b""))
        if status != 200:
            why = body.decode(errors="replace").strip() or "not answering"
            failing.append(f"{child}: {why if port is not None else 'starting'}")
    return "; ".join(failing) or None
