"""The dashboard in real headless Chromium (Debian's, driven by Playwright;
no browser download), against real servers on 127.0.0.1:

* ``errands serve`` (hypercorn): the page loads with no console error; a task
  submitted after load appears and turns ``success`` without a reload; its
  progress shows while it runs; the cancel and retry buttons work; filters
  and the details panel; a screenshot of a busy queue is saved (the pytest
  tmp dir, and ``tests/artifacts/dashboard.png``);
* a FastAPI host (uvicorn) with errands mounted at ``/jobs`` and a token:
  the page works from ``/jobs/dashboard#token=...`` with every request under
  ``/jobs``, and asks for the token when it has none.

Tasks wait on gate files the test creates, so nothing depends on timing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adapters.test_cli import free_port, serving
from tests.examples.test_mount_in_fastapi import CHROMIUM_ARGS
from tests.tools import find_tool, wait_answering

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT = 20_000  # ms, for expect()
TOKEN = "dashboard-test-token"

SERVICE = textwrap.dedent(
    """
    import os
    import trio
    import errands

    svc = errands.Service("studio")

    async def _gate(path: str) -> None:
        while not os.path.exists(path):
            await trio.sleep(0.02)

    @svc.task(concurrency=4)
    async def render(scene: str, gate: str = "") -> str:
        me = errands.current_task()
        me.report(0.25, "sketching")
        if gate:
            me.report(0.5, f"{scene}: half way")
            await _gate(gate)
        me.report(1.0, "done")
        return scene

    @svc.task
    async def upscale(image: str, gate: str) -> str:
        await _gate(gate)
        return image

    @svc.task
    async def publish(target: str) -> None:
        raise ConnectionError(f"{target} refused the upload")
    """
)

HOST = textwrap.dedent(
    f"""
    import contextlib, sys
    import uvicorn
    from fastapi import FastAPI
    from errands.adapters.asgi import create_app
    from studio import svc

    jobs = create_app(svc, auth={TOKEN!r})

    @contextlib.asynccontextmanager
    async def lifespan(_):
        async with jobs.running():
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/jobs", jobs)

    @app.get("/")
    async def index():
        return {{"ok": True}}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


def submit(base: str, route: str, body: dict[str, Any], token: str | None = None) -> str:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    answer = httpx.post(f"{base}/{route}/submit", json=body, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    task_id: str = answer.json()["task_id"]
    return task_id


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = find_tool("chromium", "chromium-browser", what="the dashboard browser tests")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``errands serve`` of the studio service; yields its URL and a gate directory."""
    where = tmp_path_factory.mktemp("studio")
    (where / "studio.py").write_text(SERVICE)
    gates = where / "gates"
    gates.mkdir()
    with serving(["studio.py:svc", "--backend", "memory://"], where) as (_, base):
        yield base, gates


class Console:
    """The page's console errors and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on(
            "response",
            lambda r: r.status >= 400 and self.errors.append(f"{r.status} {r.url}"),
        )


def row(page: Any, task_id: str) -> Any:
    return page.locator(f'#rows tr[data-id="{task_id}"]')


def test_tasks_appear_progress_and_end_live_with_cancel_and_retry(
    browser: Any, studio: tuple[str, Path]
) -> None:
    from playwright.sync_api import expect

    base, gates = studio
    page = browser.new_page()
    console = Console(page)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{base}/dashboard")
    expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT)
    expect(page.locator("#service")).to_have_text("studio")
    loads = len([u for u in requests if u.endswith("/dashboard")])

    # Submitted after load: appears, shows its progress, ends without a reload.
    gate = gates / "first"
    task_id = submit(base, "render", {"scene": "harbour", "gate": str(gate)})
    line = row(page, task_id)
    expect(line.locator(".badge")).to_have_text("in progress", timeout=TIMEOUT)
    expect(line).to_contain_text("harbour: half way", timeout=TIMEOUT)
    expect(line.locator(".pct")).to_have_text(" 50%")
    gate.touch()
    expect(line.locator(".badge")).to_have_text("success", timeout=TIMEOUT)
    expect(line.locator(".pct")).to_have_text(" 100%")
    expect(line).to_contain_text("done")

    # Cancel: a task that would wait for ever.
    stuck = submit(base, "upscale", {"image": "moon.png", "gate": str(gates / "never")})
    stuck_row = row(page, stuck)
    expect(stuck_row.locator(".badge")).to_have_text("in progress", timeout=TIMEOUT)
    stuck_row.locator("button.cancel").click()
    expect(stuck_row.locator(".badge")).to_have_text("cancelled", timeout=TIMEOUT)
    expect(page.locator("#notice")).to_have_text("cancelled: cancelled")
    expect(stuck_row.locator("button.cancel")).to_be_disabled()

    # Retry: a failed task runs again as a new task pointing back.
    failed = submit(base, "publish", {"target": "cdn"})
    failed_row = row(page, failed)
    expect(failed_row.locator(".badge")).to_have_text("failure", timeout=TIMEOUT)
    expect(failed_row.locator("button.retry")).to_be_enabled()
    failed_row.locator("button.retry").click()
    expect(page.locator("#notice")).to_contain_text("retried as ", timeout=TIMEOUT)
    retried = page.locator("#notice").inner_text().removeprefix("retried as ")
    expect(row(page, retried).locator(".badge")).to_have_text("failure", timeout=TIMEOUT)

    # Details: arguments, error, attempts, timings, and the link back.
    row(page, retried).locator("td").first.click()
    details = page.locator("#details")
    expect(details).to_be_visible()
    expect(page.locator("#dargs")).to_contain_text('"target": "cdn"', timeout=TIMEOUT)
    expect(page.locator("#derrortext")).to_have_text("ConnectionError: cdn refused the upload")
    expect(page.locator("#dfields")).to_contain_text(failed)  # retry of
    expect(page.locator("#dattempts tr")).to_have_count(1)
    expect(page.locator("#dattempts")).to_contain_text("failure")
    expect(page.locator("#dfields")).to_contain_text("ran")

    # Counts and filters (the filter reopens the stream with ?status=).
    expect(page.locator('.tile[data-status="failure"] b')).to_have_text("2", timeout=TIMEOUT)
    expect(page.locator('.tile[data-status="cancelled"] b')).to_have_text("1")
    page.select_option("#fstatus", "failure")
    expect(page.locator("#rows tr")).to_have_count(2, timeout=TIMEOUT)
    page.select_option("#fstatus", "")
    page.select_option("#fname", "render")
    expect(page.locator("#rows tr")).to_have_count(1, timeout=TIMEOUT)
    expect(row(page, task_id)).to_be_visible()
    page.select_option("#fname", "")

    assert not console.errors, console.errors
    # No reload, and the page polled nothing: one stream per filter change.
    assert len([u for u in requests if u.endswith("/dashboard")]) == loads
    assert not [u for u in requests if "/status?" in u or "/tasks?" in u], requests
    page.close()


def test_a_screenshot_of_a_busy_queue(
    browser: Any, studio: tuple[str, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    base, gates = studio
    gate = gates / "busy"
    for scene in ("forest", "desert", "city", "glacier", "canyon", "meadow"):
        submit(base, "render", {"scene": scene})
    for target in ("s3", "ftp"):
        submit(base, "publish", {"target": target})
    batch = httpx.post(
        f"{base}/render/submit_many",
        json=[{"scene": f"frame {n}"} for n in range(40)],
        timeout=10,
    ).json()
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    console = Console(page)
    page.goto(f"{base}/dashboard")
    page.fill("#fbatch", batch["batch_id"])
    page.click("#follow button")
    expect(page.locator("#batchlist li")).to_contain_text("40/40 done", timeout=TIMEOUT)
    # Four run (concurrency 4) and hold; the rest wait in the queue.
    held = [submit(base, "render", {"scene": f"scene {n}", "gate": str(gate)}) for n in range(1, 8)]
    expect(page.locator('.tile[data-status="pending"] b')).to_have_text("3", timeout=TIMEOUT)
    expect(page.locator('.tile[data-status="in_progress"] b')).to_have_text("4")
    row(page, held[0]).locator("td").first.click()
    expect(page.locator("#dargs")).to_contain_text("scene 1", timeout=TIMEOUT)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot))  # what a person sees on opening it
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "dashboard.png")
    gate.touch()
    for task_id in held:
        expect(row(page, task_id).locator(".badge")).to_have_text("success", timeout=TIMEOUT)
    assert not console.errors, console.errors
    page.close()


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A FastAPI host serving errands at ``/jobs`` with a token, under uvicorn."""
    where = tmp_path_factory.mktemp("mounted")
    (where / "studio.py").write_text(SERVICE)
    (where / "host.py").write_text(HOST)
    gates = where / "gates"
    gates.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with subprocess.Popen(
        [sys.executable, "host.py", str(port)],
        cwd=where,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        try:
            wait_answering(f"{base}/", server)
            yield base, gates
        finally:
            server.terminate()  # ours, by its PID
            try:
                output, _ = server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                output, _ = server.communicate()
    assert "Traceback" not in output, output


def test_under_a_mount_prefix_with_auth(browser: Any, mounted: tuple[str, Path]) -> None:
    from playwright.sync_api import expect

    base, gates = mounted
    jobs = f"{base}/jobs"
    assert httpx.get(f"{jobs}/dashboard/events").status_code == 401
    page = browser.new_page()
    console = Console(page)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{jobs}/dashboard#token={TOKEN}")
    expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT)
    assert "token" not in page.url  # taken out of the address bar at once

    gate = gates / "mounted"
    task_id = submit(jobs, "render", {"scene": "lighthouse", "gate": str(gate)}, TOKEN)
    line = row(page, task_id)
    expect(line).to_contain_text("lighthouse: half way", timeout=TIMEOUT)
    gate.touch()
    expect(line.locator(".badge")).to_have_text("success", timeout=TIMEOUT)
    stuck = submit(jobs, "upscale", {"image": "sun.png", "gate": str(gates / "never")}, TOKEN)
    expect(row(page, stuck).locator(".badge")).to_have_text("in progress", timeout=TIMEOUT)
    row(page, stuck).locator("button.cancel").click()
    expect(row(page, stuck).locator(".badge")).to_have_text("cancelled", timeout=TIMEOUT)
    line.locator("td").first.click()
    expect(page.locator("#dargs")).to_contain_text("lighthouse", timeout=TIMEOUT)
    assert not console.errors, console.errors
    assert requests and all(u.startswith(f"{jobs}/") for u in requests), requests
    page.close()

    # Without the token (a new tab: sessionStorage is per tab) it asks for it.
    page = browser.new_page()
    page.goto(f"{jobs}/dashboard")
    expect(page.locator("#signin")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#main")).to_be_hidden()
    page.fill("#token", TOKEN)
    page.click("#signin button")
    expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT)
    expect(row(page, task_id).locator(".badge")).to_have_text("success", timeout=TIMEOUT)
    page.close()
