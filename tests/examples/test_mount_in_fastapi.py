"""examples/mount_in_fastapi.py, run as a user would: a real uvicorn server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.adapters.test_cli import free_port

pytestmark = pytest.mark.realtime

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mount_in_fastapi.py"


def test_mounted_app_serves_tasks_under_its_prefix(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        [sys.executable, str(EXAMPLE), str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        try:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None
                try:
                    if httpx.get(f"{base}/", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.05)
            schema = httpx.get(f"{base}/jobs/schema.json").json()
            assert [r["route"] for r in schema["routes"]] == ["/build_report"]
            submitted = httpx.post(f"{base}/jobs/build_report/submit", json={"customer": "acme"})
            assert submitted.status_code == 200, submitted.text
            task_id = submitted.json()["task_id"]
            while True:
                status = httpx.get(
                    f"{base}/jobs/build_report/status", params={"task_id": task_id}
                ).json()
                if status["status"] == "success":
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.02)
            assert status["progress"] == 1.0 and status["message"] == "page 3 of 3"
            result = httpx.get(f"{base}/jobs/build_report/get", params={"task_id": task_id})
            assert result.json() == {"customer": "acme", "pages": 3}
            bad = httpx.post(f"{base}/jobs/build_report/submit", json={"customer": 5})
            assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "$.customer"
            assert httpx.get(f"{base}/").json()["service"] == "reports"  # the host still works
            server.send_signal(signal.SIGTERM)
            # uvicorn drains, then re-raises the signal it caught: -15 is a clean exit.
            assert server.wait(timeout=30) in (0, -signal.SIGTERM)
            assert server.stdout is not None
            log = server.stdout.read()
            assert "Application shutdown complete" in log  # lifespan ran: engine stopped
            assert "Traceback" not in log
        finally:
            if server.poll() is None:
                server.kill()
