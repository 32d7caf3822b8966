"""``GET /metrics``: the engine's counts in Prometheus' text format, through
``prometheus_client``.

Each app has its own :class:`Metrics`: its own ``CollectorRegistry`` (never
the process-global one, so two apps in one process, or a host app's own
metrics, never collide) holding one collector that turns a
:class:`Snapshot` into metric families.  A scrape takes the snapshot first —
one ``engine.statistics()`` and the queue depth of every task name, which
must be awaited where the engine runs — then renders it; collectors are
synchronous, so nothing is awaited while the registry is read.

The families (all prefixed ``errands_``; per task endpoint, label ``task``):

========================================= ========= ===========================
``errands_up``                            gauge     1 while the engine runs
``errands_http_held``                     gauge     requests held open now
``errands_ready``                         gauge     1 while it takes work
``errands_engine_state{state}``           gauge     1 for the current state
``errands_storage_faults_total``          counter   storage faults met (retried)
``errands_workers``                       gauge     task slots of this process
``errands_tasks_submitted_total``         counter   tasks accepted here
``errands_tasks_started_total``           counter   runs started here
``errands_tasks_finished_total{outcome}`` counter   success, failure, cancelled
``errands_tasks_retried_total``           counter   runs failed and retried
``errands_tasks_lost_total``              counter   runs whose worker died
``errands_tasks_running``                 gauge     running in this process now
``errands_queue_depth``                   gauge     waiting in the queue (all
                                                    processes on the backend)
``errands_task_wait_seconds``             histogram ready to started
``errands_task_run_seconds``              histogram started to ended
``errands_task_batch_size``               histogram items per call (batchable)
========================================= ========= ===========================

Counts are this process's since its engine started; with several processes
each is scraped on its own (``process`` label, see ``docs/decisions.md``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import errands
from errands import EngineStatistics, Histogram, Service
from errands._events import BATCH_BUCKETS, SECONDS_BUCKETS

from ._answers import Answer
from ._bridge import EngineAccess
from ._protocol import HTTPError

__all__ = ["METRICS_PATHS", "Metrics", "Snapshot", "take_snapshot"]

log = logging.getLogger("errands.http")

#: The engine states ``errands_engine_state`` has a sample for.
STATES = ("starting", "running", "stopping", "stopped", "dead")
#: The outcomes of ``errands_tasks_finished_total``.
OUTCOMES = ("success", "failure", "cancelled")
#: What a per-process metrics port answers (the rest of the API stays on the main port).
METRICS_PATHS = frozenset({"/metrics", "/livez", "/readyz"})

#: The classic text format (0.0.4), which every Prometheus reads; generate_latest
#: writes it (names are plain ASCII here, so no escaping is needed).
_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


@attrs.frozen(kw_only=True)
class Snapshot:
    """What one scrape reports, read before rendering."""

    #: The engine's statistics; None while no engine runs.
    statistics: EngineStatistics | None
    #: Waiting tasks by task name (empty when the storage did not answer).
    depths: Mapping[str, int]
    #: Requests held open now (None: no HTTP API, as in ``errands worker``).
    held: int | None


async def take_snapshot(
    access: EngineAccess | None, service: Service, *, held: int | None
) -> Snapshot:
    """The snapshot of one scrape; blocks while the queue depths are read.

    A storage fault leaves the depths out (``errands_ready`` says 0 then)
    rather than failing the scrape.
    """
    if access is None:
        return Snapshot(statistics=None, depths={}, held=held)
    engine = access.engine
    names = list(service.tasks)

    async def depths() -> dict[str, int]:
        queue = engine.core.queue
        return {name: await queue.depth(name) for name in names}

    try:
        found = await access.call(depths)
    except errands.BackendError as exc:
        log.warning("metrics: the queue depth could not be read: %s", exc)
        found = {}
    except errands.EngineClosed:
        return Snapshot(statistics=None, depths={}, held=held)
    return Snapshot(statistics=engine.statistics(), depths=found, held=held)


class Metrics:
    """The Prometheus metrics of one app (or one ``errands worker``).

    Attributes:
        registry: this app's own registry; a host may register its own
            collectors in it, and they are served on the same ``/metrics``.
        process: the value of a ``process`` label put on every errands
            sample (``errands serve --workers N`` numbers its processes);
            None: no label.
        only_port: a port on which only :data:`METRICS_PATHS` are answered
            (``--metrics-port``); None: none.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.process: str | None = None
        self.only_port: int | None = None
        self._collector = _SnapshotCollector(self)
        self.registry.register(self._collector)
        # A host may read the registry from another thread (its own exporter).
        self._rendering = threading.Lock()

    async def answer(self, access: EngineAccess | None, *, held: int | None) -> Answer:
        """The ``/metrics`` answer: a snapshot (awaited), then the registry
        rendered (nothing awaited in between, so concurrent scrapes each
        render their own snapshot)."""
        snapshot = await take_snapshot(access, self.service, held=held)
        body = self.render(snapshot)
        return 200, [(b"content-type", _CONTENT_TYPE)], body

    def render(self, snapshot: Snapshot) -> bytes:
        """The registry in Prometheus' text format, the errands families from ``snapshot``."""
        with self._rendering:
            self._collector.snapshot = snapshot
            try:
                return generate_latest(self.registry)
            finally:
                self._collector.snapshot = None

    def check_port(self, scope: MutableMapping[str, Any]) -> None:
        """Refuse (404) a request that reached the metrics-only port for
        another path than :data:`METRICS_PATHS`.

        Raises:
            HTTPError: 404.
        """
        if self.only_port is None:
            return
        server = scope.get("server")
        if server and server[1] == self.only_port and scope["path"] not in METRICS_PATHS:
            raise HTTPError(404, "this port serves /metrics, /livez and /readyz only")


class _SnapshotCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot
        if snapshot is None:  # a host's own collect() of the registry, outside a scrape
            return []
        return list(_families(snapshot, self.metrics.service, self.metrics.process))


def _families(snapshot: Snapshot, service: Service, process: str | None) -> Iterator[Metric]:
    extra = [] if process is None else ["process"]
    mine = [] if process is None else [process]

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=extra)
        family.add_metric(mine, value)
        return family

    stats = snapshot.statistics
    yield gauge("errands_up", "Whether the errands engine is running.", 0 if stats is None else 1)
    if snapshot.held is not None:
        yield gauge(
            "errands_http_held",
            "Requests held open now (long polls, event streams, waits on many tasks).",
            snapshot.held,
        )
    if stats is None:
        return
    yield gauge(
        "errands_ready", "Whether the engine takes work (runs, storage answers).", stats.ready
    )
    state = GaugeMetricFamily(
        "errands_engine_state",
        "The engine's state (1 for the current one).",
        labels=[*extra, "state"],
    )
    for name in STATES:
        state.add_metric([*mine, name], 1 if stats.state == name else 0)
    yield state
    faults = CounterMetricFamily(
        "errands_storage_faults",
        "Storage faults the engine met since it started (each retried).",
        labels=extra,
    )
    faults.add_metric(mine, stats.storage_faults)
    yield faults
    yield gauge("errands_workers", "How many tasks this process may run at once.", stats.workers)

    by_task = [*extra, "task"]
    names = sorted(set(service.tasks) | set(stats.tasks))
    tasks = stats.tasks

    def counter(name: str, doc: str, field: str) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=by_task)
        for task in names:
            one = tasks.get(task)
            family.add_metric([*mine, task], 0 if one is None else getattr(one, field))
        return family

    yield counter(
        "errands_tasks_submitted", "Tasks accepted by this process, by task.", "submitted"
    )
    yield counter(
        "errands_tasks_started", "Runs started in this process (retries too), by task.", "started"
    )
    finished = CounterMetricFamily(
        "errands_tasks_finished",
        "Tasks this process brought to a final state, by task and outcome.",
        labels=[*by_task, "outcome"],
    )
    for task in names:
        one = tasks.get(task)
        counts = (0, 0, 0) if one is None else (one.succeeded, one.failed, one.cancelled)
        for outcome, count in zip(OUTCOMES, counts, strict=True):
            finished.add_metric([*mine, task, outcome], count)
    yield finished
    yield counter(
        "errands_tasks_retried",
        "Runs that failed and were queued again (automatic retries), by task.",
        "retried",
    )
    yield counter(
        "errands_tasks_lost",
        "Runs whose worker stopped answering (re-queued, or failed on the last attempt), "
        "seen by this process, by task.",
        "lost",
    )
    running = GaugeMetricFamily(
        "errands_tasks_running", "Tasks running in this process now, by task.", labels=by_task
    )
    for task in names:
        one = tasks.get(task)
        running.add_metric([*mine, task], 0 if one is None else one.running)
    yield running
    if snapshot.depths:
        depth = GaugeMetricFamily(
            "errands_queue_depth",
            "Tasks waiting in the queue, by task (the backend's: the same in every "
            "process that shares it).",
            labels=by_task,
        )
        for task in names:
            depth.add_metric([*mine, task], snapshot.depths.get(task, 0))
        yield depth
    for name, doc, field, only_batchable in _HISTOGRAMS:
        family = HistogramMetricFamily(name, doc, labels=by_task)
        for task in names:
            definition = service.tasks.get(task)
            if only_batchable and (definition is None or not definition.options.batchable):
                continue
            one = tasks.get(task)
            bounds = BATCH_BUCKETS if only_batchable else SECONDS_BUCKETS
            histogram = _empty(bounds) if one is None else getattr(one, field)
            _add_histogram(family, [*mine, task], histogram)
        yield family


_HISTOGRAMS = (
    (
        "errands_task_wait_seconds",
        "Seconds from ready (submitted, or its delay over) to started, by task.",
        "wait_seconds",
        False,
    ),
    ("errands_task_run_seconds", "Seconds from started to ended, by task.", "run_seconds", False),
    (
        "errands_task_batch_size",
        "Items given to one call of a batchable task, by task.",
        "batch_sizes",
        True,
    ),
)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    buckets = [(_bound(bound), float(count)) for bound, count in histogram.buckets]
    family.add_metric(labels, buckets, histogram.sum)


def _empty(bounds: tuple[float, ...]) -> Histogram:
    return Histogram(buckets=tuple((b, 0) for b in (*bounds, float("inf"))), sum=0.0, count=0)


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
