"""The command line through real processes: errands serve / worker, python -m errands."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

#: /metrics says one request is held (with or without a process label).
HELD_ONE = re.compile(r"(?m)^errands_http_held(\{[^}]*\})? 1\.0$")

pytestmark = [pytest.mark.realtime]

ROOT = Path(__file__).resolve().parents[2]
ERRANDS = [sys.executable, "-m", "errands"]
IMAGE_TARGET = f"{ROOT / 'examples' / 'image_generation.py'}:ImageGenerationService"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(
    args: list[str], cwd: Path, *, port: int | None = None, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``errands serve ARGS`` on ``port`` (default: a free one); stopped (by its
    PID) on exit.  ``env`` is added to this process's environment."""
    port = port or free_port()
    log = (cwd / "server.log").open("w")
    proc = subprocess.Popen(
        [*ERRANDS, "serve", *args, "--port", str(port)],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (cwd / "server.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        log.close()


def wait_final(base: str, route: str, task_id: str, timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, object] = httpx.get(
            f"{base}/{route}/status", params={"task_id": task_id}
        ).json()
        if body["status"] in ("success", "failure", "cancelled"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.02)


def test_serve_the_example_then_stop_and_restart(tmp_path: Path) -> None:
    route = "long_running_image_generation"
    with serving([IMAGE_TARGET], tmp_path) as (proc, base):
        submitted = httpx.post(f"{base}/{route}/submit", json={"prompt": "a lake"})
        assert submitted.status_code == 200
        task_id = submitted.json()["task_id"]
        assert wait_final(base, route, task_id)["status"] == "success"
        image = httpx.get(f"{base}/{route}/get", params={"task_id": task_id})
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG\r\n\x1a\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    log = (tmp_path / "server.log").read_text()
    assert "received SIGTERM: draining" in log and "stopped" in log
    assert (tmp_path / ".errands" / "errands.db").is_file()  # the durable default
    with serving([IMAGE_TARGET], tmp_path) as (_, base):
        again = httpx.get(f"{base}/{route}/get", params={"task_id": task_id})
        assert again.content == image.content


SLOW_SERVICE = textwrap.dedent(
    """
    import time
    import errands

    svc = errands.Service("slowish")

    @svc.task
    def work(n: int) -> int:
        time.sleep(0.01)
        return n
    """
)


def test_sigterm_answers_what_is_in_flight_and_loses_no_task(tmp_path: Path) -> None:
    (tmp_path / "slowish.py").write_text(SLOW_SERVICE)
    accepted: list[str] = []
    outcomes: list[str] = []
    lock = threading.Lock()
    with serving(["slowish.py:svc", "--graceful-timeout", "5"], tmp_path) as (proc, base):
        stop = threading.Event()

        def submitter(k: int) -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        response = client.post("/work/submit", json={"n": k * 100_000 + n})
                    except httpx.ConnectError:
                        with lock:
                            outcomes.append("refused")
                        return
                    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                        # A keep-alive connection the server closed (or reset)
                        # as this request went out.  Checked below: a task
                        # nobody was told of exists only for such a request.
                        cut = "without sending a response" in str(exc) or "reset" in str(exc)
                        with lock:
                            outcomes.append("unread" if cut else repr(exc))
                        return
                    except httpx.TransportError as exc:  # cut mid-answer: a real loss
                        with lock:
                            outcomes.append(f"broken: {exc!r}")
                        return
                    with lock:
                        outcomes.append(str(response.status_code))
                        if response.status_code == 200:
                            accepted.append(response.json()["task_id"])

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while len(accepted) < 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not [o for o in outcomes if o not in ("200", "refused", "unread")], set(outcomes)
    with serving(["slowish.py:svc"], tmp_path) as (_, base):
        for task_id in accepted:
            assert wait_final(base, "work", task_id)["status"] == "success"
        listed: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page = httpx.get(f"{base}/tasks", params={"limit": 1000, "offset": offset}).json()
            listed += [t["task_id"] for t in page["tasks"]]
            offset = page["next_offset"]
        # Every task answered is there.  A task nobody was told of can exist
        # only for a request the server cut off unanswered: hypercorn closes
        # idle keep-alive connections at shutdown, racing a request that
        # arrives on one at that moment (clients retry those with an
        # Idempotency-Key).
        assert set(accepted) <= set(listed)
        assert len(listed) - len(accepted) <= outcomes.count("unread")


HELD_SERVICE = textwrap.dedent(
    """
    import errands

    svc = errands.Service("held")

    @svc.task
    async def later() -> str:
        return "done"
    """
)


@pytest.mark.parametrize(
    "server",
    [
        ["--server", "hypercorn"],
        ["--server", "uvicorn"],
        ["--workers", "2"],
        ["--server", "uvicorn", "--workers", "2"],
    ],
    ids=["hypercorn", "uvicorn", "hypercorn-2-processes", "uvicorn-2-processes"],
)
def test_sigterm_answers_held_long_polls_at_once(tmp_path: Path, server: list[str]) -> None:
    """A long poll held for up to 50 s is answered on SIGTERM, and the server exits
    without waiting for it (the graceful timeout is longer than the test allows)."""
    (tmp_path / "held.py").write_text(HELD_SERVICE)
    args = ["held.py:svc", "--graceful-timeout", "100", *server]
    if "--workers" not in server:
        args += ["--backend", "memory://"]  # else the durable default, shared by the processes
    with serving(args, tmp_path) as (proc, base):
        submitted = httpx.post(f"{base}/later/submit", params={"delay": 1000}, json={})
        task_id = submitted.json()["task_id"]
        answers: list[httpx.Response | BaseException] = []

        def long_poll() -> None:
            try:
                query = {"task_id": task_id, "wait": 50}
                answers.append(httpx.get(f"{base}/later/status", params=query, timeout=90))
            except BaseException as exc:  # reported by the assertions below
                answers.append(exc)

        poller = threading.Thread(target=long_poll)
        poller.start()
        deadline = time.monotonic() + 20
        # (with several processes, /metrics answers from any one: ask until
        # the one holding the poll answers)
        while not HELD_ONE.search(httpx.get(f"{base}/metrics").text):
            assert time.monotonic() < deadline, "the long poll was not held"
            time.sleep(0.01)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        poller.join(timeout=60)
        answered = time.monotonic() - signalled
        assert not poller.is_alive()
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert len(answers) == 1 and isinstance(answers[0], httpx.Response), answers
    assert answers[0].status_code == 200
    assert answers[0].json()["status"] == "pending"
    assert answered < 20  # not held to its 50 s, nor to the 100 s graceful timeout


def test_bad_targets_and_options_exit_2(tmp_path: Path) -> None:
    for args, message in (
        (["serve", "missing.py:svc"], "no such file"),
        (["serve", "no_colon"], "MODULE:ATTR"),
        (["serve", f"{ROOT / 'examples' / 'quickstart.py'}:nothing"], "no attribute"),
        (["serve", f"{ROOT / 'examples' / 'quickstart.py'}:main"], "expected an errands.Service"),
        (["serve", IMAGE_TARGET, "--workers", "2", "--backend", "memory://"], "shared backend"),
        (["worker", IMAGE_TARGET, "--backend", "memory://"], "shared backend"),
        (["serve", IMAGE_TARGET, "--max-wait", "-1"], "--max-wait"),
        (["serve", IMAGE_TARGET, "--max-wait", "nan"], "--max-wait"),
        # A backend URL is checked before anything starts (it used to fail in
        # the server's startup, as a traceback).
        (
            ["serve", IMAGE_TARGET, "--backend", "memory"],
            "--backend: backend URL 'memory' has no scheme",
        ),
        (["serve", IMAGE_TARGET, "--backend", "memroy://"], "unknown backend scheme 'memroy'"),
        (["serve", IMAGE_TARGET, "--backend", "diskcache://data"], "needs a path"),
        (
            ["worker", IMAGE_TARGET, "--backend", "diskcache"],
            "--backend: backend URL 'diskcache' has no",
        ),
    ):
        done = subprocess.run(
            [*ERRANDS, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_max_wait_bounds_long_polls(tmp_path: Path) -> None:
    (tmp_path / "held.py").write_text(HELD_SERVICE)
    args = ["held.py:svc", "--backend", "memory://", "--max-wait", "0.5"]
    with serving(args, tmp_path) as (_, base):
        assert httpx.get(f"{base}/schema.json").json()["errands"]["max_wait"] == 0.5
        later = httpx.post(f"{base}/later/submit", params={"delay": 1000}, json={})
        task_id = later.json()["task_id"]
        held = httpx.get(f"{base}/later/status", params={"task_id": task_id, "wait": 0.5})
        assert held.status_code == 200 and held.json()["status"] == "pending"
        longer = httpx.get(f"{base}/later/status", params={"task_id": task_id, "wait": 50})
        assert longer.status_code == 400
        assert longer.json() | {"error": ""} == {
            "error": "",
            "type": "LimitExceeded",
            "limit": "max_wait",
            "maximum": 0.5,
        }


WORKER_SERVICE = textwrap.dedent(
    """
    import os
    import errands

    svc = errands.Service("jobs")

    @svc.task
    def job(n: int) -> int:
        return os.getpid()
    """
)


def test_worker_runs_tasks_from_a_shared_backend(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(WORKER_SERVICE)
    data = tmp_path / "data"
    # Submit with a pure client: workers=0 runs nothing itself.
    submit = textwrap.dedent(
        f"""
        import json, errands, jobs
        client = errands.start(jobs.svc, backend="diskcache://{data}", workers=0)
        ids = [client.job.submit(n=i).id for i in range(20)]
        client.close()
        print(json.dumps(ids))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", submit], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout)
    with subprocess.Popen(
        [*ERRANDS, "worker", "jobs.py:svc", "--backend", f"diskcache://{data}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            check = textwrap.dedent(
                f"""
                import json, errands, jobs
                with errands.start(jobs.svc, backend="diskcache://{data}", workers=0) as c:
                    tasks = [c.get_task(i) for i in {ids!r}]
                    print(json.dumps([[t.wait(timeout=30).value, t.get()] for t in tasks]))
                """
            )
            result = subprocess.run(
                [sys.executable, "-c", check],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            rows = json.loads(result.stdout)
            assert all(status == "success" for status, _ in rows)
            assert {pid for _, pid in rows} == {worker.pid}  # all ran in the worker
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
            assert worker.stderr is not None and "draining" in worker.stderr.read()
        finally:
            if worker.poll() is None:
                worker.kill()


def test_python_dash_m_errands_shows_help() -> None:
    done = subprocess.run([*ERRANDS, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "serve" in done.stdout and "worker" in done.stdout
    assert os.path.exists(ROOT / "engine" / "__main__.py")


def test_serve_with_several_worker_processes(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(WORKER_SERVICE)
    args = ["jobs.py:svc", "--workers", "2", "--backend", "diskcache://./data"]
    with serving(args, tmp_path) as (proc, base):
        ids = [httpx.post(f"{base}/job/submit", json={"n": i}).json()["task_id"] for i in range(20)]
        pids = set()
        for task_id in ids:
            assert wait_final(base, "job", task_id)["status"] == "success"
            pids.add(httpx.get(f"{base}/job/get", params={"task_id": task_id}).json())
        assert len(pids) >= 1 and proc.pid not in pids  # run by the worker processes
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_serve_with_uvicorn(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(WORKER_SERVICE)
    args = ["jobs.py:svc", "--server", "uvicorn", "--backend", "memory://"]
    with serving(args, tmp_path) as (proc, base):
        task_id = httpx.post(f"{base}/job/submit", json={"n": 1}).json()["task_id"]
        assert wait_final(base, "job", task_id)["status"] == "success"
        assert httpx.get(f"{base}/job/get", params={"task_id": task_id}).json() == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
