"""``errands serve`` through storage faults and engine death, as real processes.

* A full disk (a file-size limit set with ``prlimit``; Python ignores
  SIGXFSZ, so writes fail with EFBIG) is weather: submits are refused with
  503 and ``Retry-After``, ``/readyz`` says 503, ``/livez`` and the process
  stay up, and once the limit is lifted every accepted task completes.
* An engine bug ends the engine, and the process exits non-zero.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from .test_cli import ERRANDS, free_port, serving

pytestmark = [pytest.mark.realtime]

SERVICE = textwrap.dedent(
    """
    import errands

    svc = errands.Service("weather")

    @svc.task
    def keep(n: int, pad: str) -> dict:
        return {"n": n, "size": len(pad)}
    """
)


def _until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_a_full_disk_is_weather_and_loses_nothing(tmp_path: Path) -> None:
    (tmp_path / "weather.py").write_text(SERVICE)
    data = tmp_path / "data"
    with serving(
        ["weather.py:svc", "--backend", f"diskcache://{data}", "--lease", "2"], tmp_path
    ) as (proc, base):
        # A file-size limit on the running server: its database cannot grow
        # past what it has now plus a little.
        limit = 256 * 1024
        subprocess.run(
            ["prlimit", "--pid", str(proc.pid), f"--fsize={limit}:unlimited"], check=True
        )
        accepted: dict[str, int] = {}
        refused = None
        pad = "x" * 2000
        with httpx.Client(base_url=base, timeout=30) as client:
            for n in range(2000):
                answer = client.post("/keep/submit", json={"n": n, "pad": pad})
                if answer.status_code == 200:
                    accepted[answer.json()["task_id"]] = n
                    continue
                refused = answer
                break
            assert refused is not None, "the disk never filled up"
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"].isdigit()
            body = refused.json()
            assert body["state"] == "storage_unavailable"
            assert str(data) not in refused.text and "errands.db" not in refused.text
            assert "Traceback" not in refused.text
            # The process and /livez stay up; /readyz says not ready.
            assert proc.poll() is None
            assert client.get("/livez").status_code == 200
            _until(lambda: client.get("/readyz").status_code == 503, 10, "readyz stayed 200")
            ready = client.get("/readyz")
            assert ready.json()["state"] == "storage_unavailable" and str(data) not in ready.text
            # Reads still work meanwhile.
            some = next(iter(accepted))
            assert client.get("/keep/status", params={"task_id": some}).status_code == 200
            # Storage comes back.
            subprocess.run(
                ["prlimit", "--pid", str(proc.pid), "--fsize=unlimited:unlimited"], check=True
            )
            _until(lambda: client.get("/readyz").status_code == 200, 30, "never ready again")
            for task_id, n in accepted.items():
                deadline = time.monotonic() + 60
                while True:
                    status = client.get("/keep/status", params={"task_id": task_id}).json()
                    if status["status"] in ("success", "failure", "cancelled"):
                        break
                    assert time.monotonic() < deadline, status
                    time.sleep(0.05)
                assert status["status"] == "success", status
                got = client.get("/keep/get", params={"task_id": task_id})
                assert got.json() == {"n": n, "size": len(pad)}
            # And it takes new work.
            again = client.post("/keep/submit", json={"n": -1, "pad": ""})
            assert again.status_code == 200
        assert proc.poll() is None
    log = (tmp_path / "server.log").read_text()
    assert "storage fault" in log and "storage recovered" in log


BUGGY = textwrap.dedent(
    """
    import errands
    from errands._registry import BUILTIN_SCHEMES
    from errands.backends import MemoryBackend

    class BuggyBackend(MemoryBackend):
        # A backend with a bug: its claim raises something that is no storage
        # fault.  Its submits only enqueue, so that the dispatcher claims.
        starts_on_enqueue = False

        @classmethod
        def from_url(cls, url):
            backend = cls()
            real = backend.queue.claim
            async def claim(**kwargs):
                if backend.store._records:
                    raise ZeroDivisionError("a bug in claim")
                return await real(**kwargs)
            backend.queue.claim = claim
            return backend

    BUILTIN_SCHEMES["buggy"] = "buggy_service:BuggyBackend"

    svc = errands.Service("buggy")

    @svc.task
    async def work() -> int:
        return 1
    """
)


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
def test_serve_exits_non_zero_when_its_engine_dies(tmp_path: Path, server: str) -> None:
    (tmp_path / "buggy_service.py").write_text(BUGGY)
    with serving(
        ["buggy_service.py:svc", "--backend", "buggy://", "--server", server],
        tmp_path,
        env={"PYTHONPATH": str(tmp_path)},
    ) as (proc, base):
        answer = httpx.post(f"{base}/work/submit", json={})
        assert answer.status_code == 200
        code = proc.wait(timeout=30)
    assert code != 0
    log = (tmp_path / "server.log").read_text()
    assert "ZeroDivisionError: a bug in claim" in log
    assert "engine" in log and "died" in log


def test_engine_flags_are_checked_and_used(tmp_path: Path) -> None:
    (tmp_path / "weather.py").write_text(SERVICE)
    for flags, message in (
        (["--lease", "-1"], "--lease must be a positive number of seconds"),
        (["--ttl", "0"], "--ttl must be a positive number of seconds"),
        (["--grace", "-2"], "--grace must be a non-negative number"),
        (["--max-attempts", "0"], "--max-attempts must be a whole number >= 1"),
        (["--task-slots", "-1"], "--task-slots must be a whole number >= 0"),
        (["--priority-aging", "-5"], "--priority-aging must be a non-negative number"),
    ):
        for command in ("serve", "worker"):
            args = [command, "weather.py:svc", *flags]
            if command == "worker":
                args += ["--backend", f"diskcache://{tmp_path / 'w'}"]
            done = subprocess.run(
                [*ERRANDS, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 2, (args, done.stderr)
            assert message in done.stderr, (args, done.stderr)
            assert "Traceback" not in done.stderr
    with serving(
        [
            "weather.py:svc",
            "--backend",
            "memory://",
            "--task-slots",
            "3",
            "--ttl",
            "7",
            "--priority-aging",
            "0",
        ],
        tmp_path,
        port=free_port(),
    ) as (_, base):
        metrics = httpx.get(f"{base}/metrics").text
        assert "errands_workers 3" in metrics
        task_id = httpx.post(f"{base}/keep/submit", json={"n": 1, "pad": ""}).json()["task_id"]
        _until(
            lambda: (
                httpx.get(f"{base}/keep/status", params={"task_id": task_id}).json()["status"]
                == "success"
            ),
            20,
            "never finished",
        )
        status = httpx.get(f"{base}/keep/status", params={"task_id": task_id}).json()
        assert status["completed_at"] is not None
    help_text = subprocess.run(
        [*ERRANDS, "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "--task-slots" in help_text and "not server processes" in help_text
    assert "--priority-aging SECONDS" in help_text
