"""errands mounted in a FastAPI app, served by uvicorn.

Run it with ``python examples/mount_in_fastapi.py [PORT]`` (needs ``pip install
fastapi uvicorn``), then::

    curl -s -X POST http://127.0.0.1:8000/jobs/build_report/submit \\
         -H 'content-type: application/json' -d '{"customer": "acme"}'
    curl -s "http://127.0.0.1:8000/jobs/build_report/status?task_id=<id>"
    curl -s "http://127.0.0.1:8000/jobs/build_report/get?task_id=<id>"

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

import errands
from errands.adapters.asgi import create_app

svc = errands.Service("reports")


@svc.task(concurrency=2)
def build_report(customer: str, pages: int = 3) -> dict[str, object]:
    """Pretend to render a report, page by page."""
    me = errands.current_task()
    for page in range(pages):
        time.sleep(0.01)
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


if __name__ == "__main__":
    import uvicorn

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run(app, host="127.0.0.1", port=port)
