"""/metrics in-process: a registry per app, a host's own collectors, storage
faults, a mounted app and an engine not started."""

from __future__ import annotations

from collections.abc import Iterable

import prometheus_client
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import errands
from errands.adapters.asgi import create_app
from errands.backends import MemoryBackend
from tests.adapters._http import call_asgi, in_process
from tests.engine.faulty import FaultyBackend

svc = errands.Service("metered")


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


SUBMITTED = ("errands_tasks_submitted_total", (("task", "add"),))


class HostCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("host_answer", "The host's own metric.")
        family.add_metric([], 42)
        return [family]


async def test_each_app_has_its_own_registry_and_a_host_may_add_to_it() -> None:
    one, two = create_app(svc), create_app(svc)
    assert one.metrics.registry is not two.metrics.registry
    assert one.metrics.registry is not prometheus_client.REGISTRY
    one.metrics.registry.register(HostCollector())
    async with in_process(one) as first, in_process(two) as second:
        for a in range(3):
            answer = await first.post("/add/submit", json={"a": a, "b": 1})
            task_id = answer.json()["task_id"]
            await first.get("/add/status", params={"task_id": task_id, "wait": 10})
        await second.post("/add/submit", json={"a": 1, "b": 1})
        mine = samples((await first.get("/metrics")).text)
        theirs = samples((await second.get("/metrics")).text)
    assert mine[SUBMITTED] == 3 and theirs[SUBMITTED] == 1
    assert mine["host_answer", ()] == 42 and ("host_answer", ()) not in theirs
    # Nothing of errands' in the process-global registry.
    glob = samples(prometheus_client.generate_latest().decode())
    assert not any(name.startswith("errands_") for name, _ in glob)
    # The registry read outside a scrape has the host's metrics only.
    outside = samples(prometheus_client.generate_latest(one.metrics.registry).decode())
    assert set(outside) == {("host_answer", ())}


async def test_storage_faults_show_and_a_failing_depth_leaves_the_rest() -> None:
    backend = FaultyBackend(MemoryBackend())
    app = create_app(svc, backend=backend)
    async with in_process(app) as client:
        backend.faults.fail("backend.enqueue")
        answer = await client.post("/add/submit", json={"a": 1, "b": 2})
        assert answer.status_code == 503
        found = samples((await client.get("/metrics")).text)
        assert found["errands_storage_faults_total", ()] == 1
        assert found["errands_ready", ()] == 0  # held not ready for a while after a fault
        assert found["errands_queue_depth", (("task", "add"),)] == 0
        backend.faults.fail("queue.depth")
        answer = await client.get("/metrics")
        assert answer.status_code == 200
        found = samples(answer.text)
        assert not any(name == "errands_queue_depth" for name, _ in found)
        assert found["errands_up", ()] == 1


async def test_a_mounted_app_answers_metrics_under_its_prefix() -> None:
    app = create_app(svc)
    async with in_process(app, root_path="/jobs") as client:
        await client.post("/add/submit", json={"a": 1, "b": 2})  # under /jobs
        found = samples((await client.get("/metrics")).text)
    assert found[SUBMITTED] == 1


async def test_an_engine_not_started_has_up_and_held_only() -> None:
    app = create_app(svc)
    status, _, body = await call_asgi(app, {"path": "/metrics"})
    assert status == 200
    found = samples(body.decode())
    assert found == {("errands_up", ()): 0, ("errands_http_held", ()): 0}
