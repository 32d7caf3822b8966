"""The dashboard over plain HTTP (its browser tests are test_dashboard_browser.py).

* in-process: the page and its files (open, with a strict CSP), the off
  switch, auth on the data routes, a task's details with its arguments;
* a real ``errands serve`` on diskcache, its ``/dashboard/events`` stream
  read as it comes: a task submitted by this server and one submitted and
  run by other processes sharing the store both appear and end ``success``;
  batches are followed; ``--no-dashboard`` turns it off.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import errands
from errands.adapters._options import HTTPOptions
from errands.adapters.asgi import create_app
from tests.adapters._http import in_process, wait_final
from tests.adapters.test_cli import ERRANDS, serving

svc = errands.Service("watched")


@svc.task
async def add(a: int, b: int) -> int:
    return a + b


@svc.task
async def boom(reason: str) -> None:
    raise ValueError(reason)


PAGE = ("/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css")


async def test_the_page_is_served_with_its_files_and_a_strict_policy() -> None:
    async with in_process(create_app(svc)) as client:
        for path in PAGE:
            answer = await client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        page = (await client.get("/dashboard")).text
        assert answer.headers["content-type"].startswith("text/css")
        # Relative URLs only: it works under any mount prefix; nothing from a CDN.
        assert 'src="dashboard/dashboard.js"' in page and 'href="dashboard/dashboard.css"' in page
        assert "http" not in page.replace("http-equiv", "")
        assert "<script>" not in page and "style=" not in page  # the CSP forbids inline code
        script = (await client.get("/dashboard/dashboard.js")).text
        assert (
            "EventSource" not in script and "setInterval" not in script
        )  # it listens, never polls
        assert (await client.post("/dashboard")).status_code == 405


async def test_the_off_switch() -> None:
    async with in_process(create_app(svc, dashboard=False)) as client:
        for path in (*PAGE, "/dashboard/events", "/dashboard/task?task_id=x"):
            assert (await client.get(path)).status_code == 404, path
    assert HTTPOptions().dashboard is True


async def test_with_auth_the_page_opens_but_its_data_needs_the_token() -> None:
    app = create_app(svc, auth="s3cret")
    async with in_process(app) as client:
        assert (await client.get("/dashboard")).status_code == 200  # no data in it
        task = await client.post(
            "/add/submit", json={"a": 1, "b": 2}, headers={"authorization": "Bearer s3cret"}
        )
        task_id = task.json()["task_id"]
        for path in ("/dashboard/events", f"/dashboard/task?task_id={task_id}"):
            answer = await client.get(path)
            assert answer.status_code == 401, path
            assert answer.headers["www-authenticate"].startswith("Bearer")
            wrong = await client.get(path, headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401
        client.headers["authorization"] = "Bearer s3cret"
        await wait_final(client, task_id)
        details = (await client.get("/dashboard/task", params={"task_id": task_id})).json()
        assert details["args"] == {"a": 1, "b": 2}
        assert details["status"] == "success"
        assert [a["outcome"] for a in details["attempts"]] == ["success"]


async def test_details_of_a_failed_task_and_bad_queries() -> None:
    async with in_process(create_app(svc, hide_errors=True)) as client:
        task_id = (await client.post("/boom/submit", json={"reason": "disk on fire"})).json()
        task_id = task_id["task_id"]
        await wait_final(client, task_id, route="/boom")
        details = (await client.get("/dashboard/task", params={"task_id": task_id})).json()
        assert details["args"] == {"reason": "disk on fire"}
        assert details["error"] == "ValueError"  # hide_errors holds here too
        assert "fire" not in json.dumps(details["attempts"])
        missing = await client.get("/dashboard/task", params={"task_id": "nope"})
        assert missing.status_code == 404
        for query in ("name=nobody", "status=done", "limit=0", "batch=../x"):
            assert (await client.get(f"/dashboard/events?{query}")).status_code == 400, query
        assert (await client.get("/dashboard/elsewhere")).status_code == 404


# ---------------------------------------------------------------------- a real server

SERVICE = textwrap.dedent(
    """
    import time
    import errands

    svc = errands.Service("shared")

    @svc.task
    def render(pages: int) -> int:
        for page in range(pages):
            time.sleep(0.05)
            errands.current_task().report((page + 1) / pages, f"page {page + 1}")
        return pages
    """
)


class Stream:
    """``/dashboard/events`` read in a thread; :meth:`until` waits for an event."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.tasks: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self.ended = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=60))
        self._response = self._client.send(
            self._client.build_request("GET", url, headers=headers), stream=True
        )
        assert self._response.status_code == 200, self._response.read()
        assert self._response.headers["content-type"] == "text/event-stream"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        block: list[str] = []
        try:
            for line in self._response.iter_lines():
                if line:
                    block.append(line)
                    continue
                event = block[0].removeprefix("event: ")
                data = json.loads(block[1].removeprefix("data: "))
                with self._changed:
                    self.events.append((event, data))
                    if event == "tasks":
                        for task in data["tasks"]:
                            self.tasks[task["task_id"]] = task
                    self._changed.notify_all()
                block = []
        except httpx.HTTPError:
            pass  # closed by the test
        self.ended.set()

    def until(self, check: Any, timeout: float = 30) -> Any:
        with self._changed:
            found = self._changed.wait_for(lambda: check(self), timeout)
        assert found, self.events[-5:]
        return found

    def close(self) -> None:
        self._response.close()
        self._client.close()


@pytest.fixture(params=["diskcache", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``errands serve`` on a shared backend, running no task itself
    (``--task-slots 0``); yields its URL and the backend's."""
    (tmp_path / "jobs.py").write_text(SERVICE)
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        backend = f"{url}?prefix=dash-{tmp_path.name}"
    else:
        backend = f"diskcache://{tmp_path / 'data'}"
    args = ["jobs.py:svc", "--backend", backend, "--task-slots", "0"]
    with serving(args, tmp_path) as (_, base):
        yield base, backend


@pytest.mark.realtime
def test_the_stream_shows_tasks_of_other_processes_sharing_the_store(
    shared: tuple[str, str], tmp_path: Path
) -> None:
    base, backend = shared
    stream = Stream(f"{base}/dashboard/events")
    try:
        hello = stream.until(lambda s: s.events and s.events[0])
        assert hello[0] == "hello" and hello[1]["routes"] == {"render": "/render"}
        stream.until(lambda s: any(e == "stats" for e, _ in s.events))
        # Submitted here, run nowhere yet (this server has no task slots).
        here = httpx.post(f"{base}/render/submit", json={"pages": 2}).json()["task_id"]
        stream.until(lambda s: s.tasks.get(here, {}).get("status") == "pending")
        stream.until(
            lambda s: any(e == "stats" and d["counts"]["pending"] >= 1 for e, d in s.events)
        )
        # Submitted by another process, in bulk, straight into the store.
        submit = textwrap.dedent(
            f"""
            import json, errands, jobs
            with errands.start(jobs.svc, backend="{backend}", workers=0) as client:
                batch = client.render.submit_many([{{"pages": 3}}, {{"pages": 4}}])
                print(json.dumps([batch.id, [t.id for t in batch.tasks]]))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", submit], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        batch_id, there = json.loads(done.stdout)
        stream.until(lambda s: all(t in s.tasks for t in there))
        # Run by a worker process: the stream sees them end.
        with subprocess.Popen(
            [*ERRANDS, "worker", "jobs.py:svc", "--backend", backend],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as worker:
            try:
                for task_id in (here, *there):
                    stream.until(lambda s, t=task_id: s.tasks[t]["status"] == "success")
            finally:
                worker.terminate()  # ours, by its PID
                worker.wait(timeout=30)
        assert stream.tasks[there[1]]["progress"] == 1.0
        assert stream.tasks[there[1]]["message"] == "page 4"
        # Newest first.
        last = [d for e, d in stream.events if e == "tasks"][-1]
        assert last["ids"][-1] == here
        stream.until(
            lambda s: any(
                e == "stats" and d["counts"]["success"] == 3 and sum(d["chart"]["finished"]) == 3
                for e, d in s.events
            )
        )
    finally:
        stream.close()
    # A batch is followed when asked for by id.
    followed = Stream(f"{base}/dashboard/events?batch={batch_id}&status=success&limit=2")
    try:
        stats = followed.until(lambda s: next((d for e, d in s.events if e == "stats"), None))
        assert stats["batches"] == [
            {
                "batch_id": batch_id,
                "total": 2,
                "expired": 0,
                "counts": {
                    "pending": 0,
                    "in_progress": 0,
                    "success": 2,
                    "failure": 0,
                    "cancelled": 0,
                },
            }
        ]
        tasks = next(d for e, d in followed.events if e == "tasks")
        assert len(tasks["ids"]) == 2  # limit=2, success only
    finally:
        followed.close()


@pytest.mark.realtime
def test_batches_submitted_here_are_followed_and_a_shutdown_ends_streams(
    tmp_path: Path,
) -> None:
    (tmp_path / "jobs.py").write_text(SERVICE)
    with serving(["jobs.py:svc", "--backend", "memory://"], tmp_path) as (server, base):
        stream = Stream(f"{base}/dashboard/events")
        try:
            stream.until(lambda s: any(e == "stats" for e, _ in s.events))
            items = [{"pages": 1}, {"pages": 2}, {"pages": 3}]
            batch_id = httpx.post(f"{base}/render/submit_many", json=items).json()["batch_id"]
            stream.until(
                lambda s: any(
                    e == "stats"
                    and d["batches"]
                    and d["batches"][0]["batch_id"] == batch_id
                    and d["batches"][0]["counts"]["success"] == 3
                    for e, d in s.events
                )
            )
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0  # drained: the stream did not hold it
            stream.ended.wait(timeout=30)
            assert stream.ended.is_set()
        finally:
            stream.close()


@pytest.mark.realtime
def test_no_dashboard_flag(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(SERVICE)
    with serving(["jobs.py:svc", "--backend", "memory://", "--no-dashboard"], tmp_path) as (
        _,
        base,
    ):
        assert httpx.get(f"{base}/dashboard").status_code == 404
        assert httpx.get(f"{base}/dashboard/events").status_code == 404
        assert httpx.get(f"{base}/readyz").status_code == 200
