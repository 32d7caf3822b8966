"""Metrics and logs from real servers: /metrics scraped from ``errands serve``
(one process, several, and a worker's --metrics-port) and read with
prometheus_client's own parser after a known workload; ``--log-format json``
lines parse and carry the task's id and name; a final failure's traceback is
in the server's log only."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.adapters.test_cli import ERRANDS, free_port, serving

pytestmark = [pytest.mark.realtime]

SERVICE = textwrap.dedent(
    """
    import errands

    svc = errands.Service("known")

    @svc.task(retries=1, retry_delay=0.01)
    async def work(mode: str) -> str:
        if mode == "fail":
            raise ValueError("asked to fail")
        return mode

    @svc.task(batchable=True, max_batch_size=4, max_latency_ms=50)
    async def embed(items: list[int]) -> list[int]:
        return [i * 2 for i in items]
    """
)

#: A sample's key: its name and its labels but ``process``.
Key = tuple[str, tuple[tuple[str, str], ...]]


def scrape(url: str) -> tuple[dict[str, str], Counter[Key]]:
    """The families' types and the samples (summed over ``process``) at ``url``."""
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    types: dict[str, str] = {}
    samples: Counter[Key] = Counter()
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "process"))
            samples[sample.name, labels] += sample.value
    return types, samples


def task(name: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"task": name, **more}.items()))


def run_workload(base: str) -> None:
    """3 successes, 1 failure after 1 retry, 1 cancelled while pending, and a
    batch of 4 items of a batchable task; returns once all are final."""
    ids = [
        httpx.post(f"{base}/work/submit", json={"mode": mode}).json()["task_id"]
        for mode in ("a", "b", "c", "fail")
    ]
    later = httpx.post(f"{base}/work/submit", params={"delay": 3600}, json={"mode": "later"})
    cancelled = httpx.post(f"{base}/work/cancel", params={"task_id": later.json()["task_id"]})
    assert cancelled.json()["status"] == "cancelled"
    batch = httpx.post(f"{base}/embed/submit_many", json=[{"items": [i]} for i in range(4)])
    batch_id = batch.json()["batch_id"]
    for task_id in ids:
        status = httpx.get(
            f"{base}/work/status", params={"task_id": task_id, "wait": 30}, timeout=40
        ).json()
        assert status["status"] in ("success", "failure"), status
    counts = httpx.get(f"{base}/batches/{batch_id}", params={"wait": 30}, timeout=40).json()
    assert counts["counts"]["success"] == 4, counts


def check_workload(types: dict[str, str], samples: Counter[Key]) -> None:
    """The values ``run_workload`` leaves, whatever process ran what."""
    assert types["errands_tasks_submitted"] == "counter"
    assert types["errands_task_run_seconds"] == "histogram"
    assert types["errands_queue_depth"] == "gauge"
    work, embed = task("work"), task("embed")
    assert samples["errands_tasks_submitted_total", work] == 5
    assert samples["errands_tasks_started_total", work] == 5  # the failing one twice
    finished = {
        outcome: samples["errands_tasks_finished_total", task("work", outcome=outcome)]
        for outcome in ("success", "failure", "cancelled")
    }
    assert finished == {"success": 3, "failure": 1, "cancelled": 1}
    assert samples["errands_tasks_retried_total", work] == 1
    assert samples["errands_tasks_lost_total", work] == 0
    assert samples["errands_tasks_running", work] == 0
    # Five runs (the retried one's first run too), each waited and ran.
    assert samples["errands_task_run_seconds_count", work] == 5
    assert samples["errands_task_run_seconds_bucket", task("work", le="+Inf")] == 5
    assert samples["errands_task_wait_seconds_count", work] == 5
    assert samples["errands_task_wait_seconds_bucket", task("work", le="+Inf")] == 5
    assert samples["errands_task_run_seconds_sum", work] > 0
    # Buckets are cumulative.
    buckets = [v for (name, labels), v in samples.items() if name.endswith("run_seconds_bucket")]
    assert buckets and max(buckets) == 5
    assert samples["errands_tasks_submitted_total", embed] == 4
    finished_embed = ("success", "failure", "cancelled")
    assert [
        samples["errands_tasks_finished_total", task("embed", outcome=o)] for o in finished_embed
    ] == [4, 0, 0]
    assert samples["errands_task_batch_size_sum", embed] == 4  # 4 items, in 1 to 4 calls
    assert 1 <= samples["errands_task_batch_size_count", embed] <= 4
    assert ("errands_task_batch_size_count", work) not in samples  # not batchable
    assert samples["errands_queue_depth", work] == 0
    assert samples["errands_queue_depth", embed] == 0
    assert samples["errands_storage_faults_total", ()] == 0


def test_metrics_of_a_known_workload_from_a_real_server(tmp_path: Path) -> None:
    (tmp_path / "known.py").write_text(SERVICE)
    with serving(["known.py:svc", "--backend", "memory://"], tmp_path) as (proc, base):
        _, before = scrape(f"{base}/metrics")
        assert before["errands_tasks_submitted_total", task("work")] == 0  # there from the start
        run_workload(base)
        types, samples = scrape(f"{base}/metrics")
        check_workload(types, samples)
        assert samples["errands_up", ()] == 1
        assert samples["errands_ready", ()] == 1
        assert samples["errands_engine_state", (("state", "running"),)] == 1
        assert samples["errands_engine_state", (("state", "stopping"),)] == 0
        assert samples["errands_http_held", ()] == 0
        # A task waiting in the queue shows in its depth.
        httpx.post(f"{base}/work/submit", params={"delay": 3600}, json={"mode": "x"})
        _, samples = scrape(f"{base}/metrics")
        assert samples["errands_queue_depth", task("work")] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
def test_one_process_with_a_metrics_port(tmp_path: Path, server: str) -> None:
    (tmp_path / "known.py").write_text(SERVICE)
    port = free_port()
    args = ["known.py:svc", "--backend", "memory://", "--server", server]
    with serving([*args, "--metrics-port", str(port)], tmp_path) as (proc, base):
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until_up(url)
        httpx.post(f"{base}/work/submit", params={"delay": 3600}, json={"mode": "x"})
        for text in (httpx.get(url).text, httpx.get(f"{base}/metrics").text):
            assert 'errands_tasks_submitted_total{task="work"} 1.0\n' in text  # no process label
            assert 'errands_queue_depth{task="work"} 1.0\n' in text
        elsewhere = httpx.get(url.replace("/metrics", "/tasks"))
        assert elsewhere.status_code == 404, elsewhere.text
        assert httpx.get(f"{base}/tasks").status_code == 200  # the main port has it all
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises it


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
def test_several_processes_each_have_a_metrics_port_and_add_up(tmp_path: Path, server: str) -> None:
    """``--workers 2 --metrics-port P``: each process answers on its own port
    with a process label; summed, they give the workload's values."""
    (tmp_path / "known.py").write_text(SERVICE)
    metrics_port = free_port_pair()
    args = ["known.py:svc", "--workers", "2", "--backend", "diskcache://./data"]
    args += ["--server", server]
    args += ["--metrics-port", str(metrics_port)]
    with serving(args, tmp_path) as (proc, base):
        urls = [f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(2)]
        for url in urls:
            wait_until_up(url)
        run_workload(base)
        # A task's final state is visible (to any process) just before the
        # process that ran it counts it: wait for the last counts to land.
        deadline = time.monotonic() + 30
        while True:
            samples = sum_of(urls)
            finished = [v for (n, _), v in samples.items() if n == "errands_tasks_finished_total"]
            if sum(finished) == 5 + 4:
                break
            assert time.monotonic() < deadline, samples
            time.sleep(0.05)
        types, _ = scrape(urls[0])
        check_workload(types, sum_of(urls))
        # Each port is one process, labelled; it answers metrics only.
        for index, url in enumerate(urls):
            text = httpx.get(url).text
            assert f'errands_up{{process="{index}"}} 1.0' in text
            other = httpx.get(url.replace("/metrics", "/work/status"), params={"task_id": "x"})
            assert other.status_code == 404
            assert httpx.get(url.replace("/metrics", "/readyz")).status_code == 200
        # The shared port answers from one process or the other, labelled.
        shared = httpx.get(f"{base}/metrics").text
        assert 'errands_up{process="0"} 1.0' in shared or 'errands_up{process="1"} 1.0' in shared
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises it


def test_a_worker_serves_its_own_metrics(tmp_path: Path) -> None:
    """A server that runs nothing (--task-slots 0) and a worker with
    --metrics-port: the server counts the submits, the worker the runs (and
    logs them, here in JSON)."""
    (tmp_path / "known.py").write_text(SERVICE)
    port = free_port()
    backend = f"diskcache://{tmp_path / 'data'}"
    args = ["known.py:svc", "--backend", backend, "--task-slots", "0"]
    with (
        serving(args, tmp_path) as (_, base),
        running(
            [*ERRANDS, "worker", "known.py:svc", "--backend", backend, "--log-format", "json"],
            port,
            tmp_path,
        ),
    ):
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until_up(url)
        ids = [
            httpx.post(f"{base}/work/submit", json={"mode": str(i)}).json()["task_id"]
            for i in range(3)
        ]
        for task_id in ids:
            status = httpx.get(
                f"{base}/work/status", params={"task_id": task_id, "wait": 30}, timeout=40
            ).json()
            assert status["status"] == "success", status
        deadline = time.monotonic() + 30
        while scrape(url)[1]["errands_tasks_finished_total", task("work", outcome="success")] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _, worker = scrape(url)
        _, server = scrape(f"{base}/metrics")
        assert server["errands_tasks_submitted_total", task("work")] == 3
        assert server["errands_tasks_started_total", task("work")] == 0
        assert worker["errands_tasks_started_total", task("work")] == 3
        assert worker["errands_tasks_finished_total", task("work", outcome="success")] == 3
        assert ("errands_http_held", ()) not in worker  # a worker holds no requests
        assert httpx.get(url.replace("/metrics", "/livez")).status_code == 200
        assert httpx.get(url.replace("/metrics", "/tasks")).status_code == 404
    lines = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()]
    for task_id in ids:
        ran = [line["message"] for line in lines if line.get("task_id") == task_id]
        assert len(ran) == 2 and "started" in ran[0] and "succeeded" in ran[1]


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
def test_json_logs_carry_the_task_and_tracebacks_stay_in_the_log(
    tmp_path: Path, server: str
) -> None:
    (tmp_path / "known.py").write_text(SERVICE)
    args = ["known.py:svc", "--backend", "memory://", "--log-format", "json", "--server", server]
    with serving(args, tmp_path) as (proc, base):
        ok = httpx.post(f"{base}/work/submit", json={"mode": "ok"}).json()["task_id"]
        bad = httpx.post(f"{base}/work/submit", json={"mode": "fail"}).json()["task_id"]
        for task_id in (ok, bad):
            httpx.get(f"{base}/work/status", params={"task_id": task_id, "wait": 30}, timeout=40)
        # Over the wire: the error's type and message, never its traceback.
        wire = [
            httpx.get(f"{base}/work/status", params={"task_id": bad}).text,
            httpx.get(f"{base}/work/get", params={"task_id": bad}).text,
            httpx.get(f"{base}/tasks").text,
        ]
        assert "asked to fail" in wire[0]
        assert not any("Traceback" in text or "known.py" in text for text in wire)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises it
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    mine = [line for line in lines if line.get("task_id") == ok]
    assert [line["message"].split(" ")[-1] for line in mine[:1]] == ["submitted"]
    assert {line["task_name"] for line in mine} == {"work"}
    assert {line["logger"] for line in mine} == {"errands.tasks"}
    assert any(line.get("attempt") == 1 and "succeeded" in line["message"] for line in mine)
    failed = [line for line in lines if line.get("task_id") == bad and line["level"] == "ERROR"]
    assert len(failed) == 1
    assert failed[0]["message"] == f"task work {bad} failed: ValueError: asked to fail"
    assert failed[0]["exception"].startswith("Traceback (most recent call last):")
    assert 'raise ValueError("asked to fail")' in failed[0]["exception"]
    retried = [line for line in lines if line.get("task_id") == bad and line["level"] == "WARNING"]
    assert len(retried) == 1 and retried[0]["attempt"] == 1
    loggers = {line["logger"] for line in lines}
    assert {"errands.cli", "errands.engine", "errands.tasks"} <= loggers
    assert any(name.startswith(server) for name in loggers)  # the server's own lines too


def test_text_logs_name_the_task(tmp_path: Path) -> None:
    (tmp_path / "known.py").write_text(SERVICE)
    with serving(["known.py:svc", "--backend", "memory://"], tmp_path) as (proc, base):
        task_id = httpx.post(f"{base}/work/submit", json={"mode": "ok"}).json()["task_id"]
        httpx.get(f"{base}/work/status", params={"task_id": task_id, "wait": 30}, timeout=40)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    log = (tmp_path / "server.log").read_text()
    assert f" errands.tasks INFO task work {task_id} submitted\n" in log
    assert f" errands.tasks INFO task work {task_id} started (attempt 1, " in log


# --------------------------------------------------------------------------- helpers


def free_port_pair() -> int:
    """A port P with P+1 free too (for two processes' metrics ports)."""
    for _ in range(50):
        port = free_port()
        try:
            with _bound(port + 1):
                return port
        except OSError:
            continue
    raise AssertionError("no two free ports in a row")


@contextmanager
def _bound(port: int) -> Iterator[None]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        yield


def _two_free_ports(avoid: int) -> int:
    """A free port whose neighbour below is free too, neither of them
    ``avoid``: the test needs both (a port chosen alone was, once, next to
    the server's own, and the command then refused that instead)."""
    import socket

    for _ in range(100):
        high = free_port()
        if avoid in (high, high - 1):
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", high - 1))
            except OSError:
                continue
        return high
    raise AssertionError("no two neighbouring free ports")


def wait_until_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.05)


def sum_of(urls: list[str]) -> Counter[Key]:
    total: Counter[Key] = Counter()
    for url in urls:
        total.update(scrape(url)[1])
    return total


@contextmanager
def running(command: list[str], metrics_port: int, cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """``command --metrics-port PORT``, stopped (by its PID) on exit."""
    with (cwd / "worker.log").open("w") as log:
        proc = subprocess.Popen(
            [*command, "--metrics-port", str(metrics_port)],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            yield proc
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, (cwd / "worker.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def test_a_metrics_port_that_cannot_be_had_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "known.py").write_text(SERVICE)
    port = free_port()

    def serve(*more: str) -> subprocess.CompletedProcess[str]:
        command = [*ERRANDS, "serve", "known.py:svc", "--port", str(port), *more]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    same = serve("--backend", "memory://", "--metrics-port", str(port))
    assert same.returncode == 2 and "must be free ports, not --port" in same.stderr
    busy = _two_free_ports(avoid=port)
    with _bound(busy):
        taken = serve("--backend", "memory://", "--metrics-port", str(busy))
        assert taken.returncode == 2, taken.stderr
        assert f"cannot listen on 127.0.0.1:{busy}" in taken.stderr
        several = ["--workers", "2", "--backend", "diskcache://./data"]
        taken = serve(*several, "--metrics-port", str(busy - 1))
        assert taken.returncode == 2 and f"127.0.0.1:{busy}" in taken.stderr, taken.stderr
