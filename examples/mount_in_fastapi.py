"""errands mounted in a FastAPI app, served by uvicorn.

Run it with ``python examples/mount_in_fastapi.py [PORT]`` (needs ``pip install
fastapi uvicorn``), then::

    curl -s -X POST http://127.0.0.1:8000/jobs/build_report/submit \\
         -H 'content-type: application/json' -d '{"customer": "acme"}'
    curl -s "http://127.0.0.1:8000/jobs/build_report/status?task_id=<id>"
    curl -s "http://127.0.0.1:8000/jobs/build_report/get?task_id=<id>"

or let the host's own route submit one in-process (``jobs.client``)::

    curl -s -X POST http://127.0.0.1:8000/reports/acme

and open http://127.0.0.1:8000/progress in a browser: the page submits a
report and shows its progress live, from the task's server-sent events
(``/jobs/build_report/events``), with no polling.  errands' own dashboard is
at http://127.0.0.1:8000/jobs/dashboard (every task, live, with cancel and
retry buttons).

Starlette's ``Mount`` does not pass lifespan on to the mounted app, so the host
runs the errands engine from its own lifespan.  Under uvicorn (asyncio) the
engine runs in its own trio thread; requests cross over without blocking.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

import errands
from errands.adapters.asgi import create_app

svc = errands.Service("reports")


@svc.task(concurrency=2)
def build_report(
    customer: str, pages: int = 3, seconds_per_page: float = 0.01
) -> dict[str, object]:
    """Pretend to render a report, page by page."""
    me = errands.current_task()
    for page in range(pages):
        time.sleep(seconds_per_page)
        me.report((page + 1) / pages, f"page {page + 1} of {pages}")
    return {"customer": customer, "pages": pages}


jobs = create_app(svc)


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with jobs.running():
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/jobs", jobs)


@app.get("/")
async def index() -> dict[str, str]:
    return {"service": "reports", "tasks": "/jobs/schema.json"}


@app.post("/reports/{customer}")
async def order_report(customer: str) -> dict[str, str]:
    """The host's own route submits in-process, with the same handles as
    ``open_engine`` (no HTTP round trip to its own server)."""
    task = await jobs.client.build_report.submit(customer=customer, pages=2)
    return {"task_id": task.id, "status": (await task.get_status()).value}


# A page that follows one task with EventSource: an event per change of
# status or progress, and the stream ends with the final one.
PROGRESS_PAGE = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>Build a report</title>
<form id="order">
  <input id="customer" value="acme" aria-label="customer">
  <button>Build report</button>
</form>
<p><progress id="bar" max="1" value="0"></progress> <span id="state">idle</span></p>
<ol id="log"></ol>
<script>
const $ = (id) => document.getElementById(id);
$("order").addEventListener("submit", async (event) => {
  event.preventDefault();
  const answer = await fetch("jobs/build_report/submit", {
    method: "POST",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({customer: $("customer").value, pages: 4, seconds_per_page: 0.3}),
  });
  const {task_id} = await answer.json();
  const events = new EventSource(`jobs/build_report/events?task_id=${task_id}`);
  events.addEventListener("status", (message) => {
    const task = JSON.parse(message.data);
    $("bar").value = task.progress ?? 0;
    $("state").textContent = task.status;
    const line = document.createElement("li");
    const parts = [task.status, task.progress, task.message];
    line.textContent = parts.filter((x) => x != null).join(" ");
    $("log").append(line);
    if (["success", "failure", "cancelled"].includes(task.status)) events.close();
  });
});
</script>
</html>
"""


@app.get("/progress", response_class=HTMLResponse)
async def progress_page() -> str:
    return PROGRESS_PAGE


if __name__ == "__main__":
    import uvicorn

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run(app, host="127.0.0.1", port=port)
