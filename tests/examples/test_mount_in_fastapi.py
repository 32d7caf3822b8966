"""examples/mount_in_fastapi.py, run as a user would: a real uvicorn server,
called with httpx and, for its progress page, from real headless Chromium."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.adapters.test_cli import free_port
from tests.tools import find_tool, wait_answering

pytestmark = pytest.mark.realtime

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mount_in_fastapi.py"
# As this machine's notes advise: no background networking (its closed
# network refuses it), a fresh profile, no sandbox when run as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        [sys.executable, str(EXAMPLE), str(port)],
        cwd=tmp_path_factory.mktemp("mounted"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        try:
            wait_answering(f"{base}/", server)
            yield base
        finally:
            server.send_signal(signal.SIGINT)
            try:
                output, _ = server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                output, _ = server.communicate()
    assert "Traceback" not in output, output


def test_mounted_app_serves_tasks_under_its_prefix(example: str) -> None:
    base = example
    schema = httpx.get(f"{base}/jobs/schema.json").json()
    assert [r["route"] for r in schema["routes"]] == ["/build_report"]
    submitted = httpx.post(f"{base}/jobs/build_report/submit", json={"customer": "acme"})
    assert submitted.status_code == 200, submitted.text
    task_id = submitted.json()["task_id"]
    status = httpx.get(  # a long poll: answered when the task ends
        f"{base}/jobs/build_report/status", params={"task_id": task_id, "wait": 30}, timeout=40
    ).json()
    assert status["status"] == "success"
    assert status["progress"] == 1.0 and status["message"] == "page 3 of 3"
    result = httpx.get(f"{base}/jobs/build_report/get", params={"task_id": task_id})
    assert result.json() == {"customer": "acme", "pages": 3}
    bad = httpx.post(f"{base}/jobs/build_report/submit", json={"customer": 5})
    assert bad.status_code == 422 and bad.json()["errors"][0]["path"] == "$.customer"
    assert httpx.get(f"{base}/").json()["service"] == "reports"  # the host still works
    assert "dashboard/dashboard.js" in httpx.get(f"{base}/jobs/dashboard").text


def test_progress_page_follows_the_task_live_in_chromium(example: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        chromium = find_tool("chromium", "chromium-browser", what="the browser test")
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"{example}/progress")
            page.fill("#customer", "globex")
            page.click("button")
            expect(page.locator("#state")).to_have_text("success", timeout=30_000)
            lines = page.locator("#log li").all_inner_texts()
            assert page.locator("#bar").evaluate("bar => bar.value") == 1
        finally:
            browser.close()
    # Live: the page saw the task running and its pages' progress before the
    # end, from events, not from polling.
    assert lines[-1] == "success 1 page 4 of 4", lines
    assert any(line.startswith("in_progress 0.") for line in lines), lines
    events = [url for url in requests if "/events?" in url]
    statuses = [url for url in requests if "/status?" in url]
    assert len(events) == 1 and not statuses, requests


def test_http_client_under_the_mount_prefix(example: str) -> None:
    import errands

    with errands.SyncHTTPClient(f"{example}/jobs") as client:
        task = client.build_report.submit(customer="initech", pages=2)
        assert task.wait(timeout=30) is errands.TaskStatus.SUCCESS
        assert task.get() == {"customer": "initech", "pages": 2}
        assert task.get_info().message == "page 2 of 2"


def test_a_client_without_the_mount_prefix_is_told_to_add_it(example: str) -> None:
    import errands

    with (
        errands.SyncHTTPClient(example) as client,
        pytest.raises(errands.RemoteError, match=r"put that path in the client's URL"),
    ):
        client.build_report.submit(customer="initech", pages=1)


def test_the_hosts_own_route_submits_through_the_app_client(example: str) -> None:
    import httpx

    import errands

    answer = httpx.post(f"{example}/reports/initech", timeout=30)
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["task_id"]
    with errands.SyncHTTPClient(f"{example}/jobs") as client:
        task = client.build_report.get_task(task_id)
        assert task.wait(timeout=30) is errands.TaskStatus.SUCCESS
        assert task.get() == {"customer": "initech", "pages": 2}
