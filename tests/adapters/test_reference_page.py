"""The usage on the feature page users know (BentoML's "Async task queues"),
with ``errands`` in place of ``bentoml``, runs as written against
``errands serve`` on http://localhost:3000.

The page's three client blocks are quoted below verbatim apart from that
one word; between them the test waits for the task ("at a later time").
The service is the page's ``ImageGenerationService`` returning a PIL image.
"""

from __future__ import annotations

import contextlib
import io
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

import errands
from tests.adapters.test_cli import free_port, serving

pytestmark = [pytest.mark.realtime]

SUBMIT = textwrap.dedent(
    """
    import errands

    prompt = "a scenic mountain view that ..."
    client = errands.SyncHTTPClient('http://localhost:3000')
    # The arguments are the same as the Service method, just call with `.submit()`
    task = client.long_running_image_generation.submit(prompt=prompt)
    print("Task submitted, ID:", task.id)
    """
)

LATER = textwrap.dedent(
    """
    # Use the following code at a later time
    status = task.get_status()
    if status.value == 'success':
        print("The task runs successfully. The result is", task.get())
    elif status.value == 'failure':
        print("The task run failed.")
    else:
        print("The task is still running.")
    """
)

RETRY = textwrap.dedent(
    """
    status = task.get_status()
    if status.value == 'failure':
        print("Task failed, retrying...")
        new_task = task.retry()
        new_status = new_task.get_status()
        print("New task status:", new_status.value)
    """
)

# The page's service, made runnable: it draws the image, and with FLAKY set
# its first call fails (so the page's retry branch runs too).
SERVICE = textwrap.dedent(
    """
    import os
    import errands
    from PIL import Image as PILImage
    from PIL.Image import Image

    @errands.service
    class ImageGenerationService:
        def __init__(self):
            self.calls = 0

        @errands.task
        def long_running_image_generation(self, prompt: str) -> Image:
            self.calls += 1
            if os.environ.get("FLAKY") and self.calls == 1:
                raise RuntimeError("out of memory")
            return PILImage.new("RGB", (16, 9), (90, 140, 200))
    """
)


def _port_3000_free() -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", 3000))
        except OSError:
            return False
        return True


def _run(block: str, scope: dict[str, Any], port: int) -> str:
    out = io.StringIO()
    source = block.replace("localhost:3000", f"localhost:{port}")
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<reference page>", "exec"), scope)
    return out.getvalue()


@pytest.mark.parametrize("flaky", [False, True], ids=["succeeds", "fails-then-retried"])
def test_reference_page_usage_runs_as_written(tmp_path: Path, flaky: bool) -> None:
    (tmp_path / "page.py").write_text(SERVICE)
    # As written means port 3000; only if something else holds it here does
    # the test move (the page's text is otherwise untouched).
    port = 3000 if _port_3000_free() else free_port()
    env = {"FLAKY": "1"} if flaky else {}
    args = ["page.py:ImageGenerationService", "--backend", "memory://"]
    scope: dict[str, Any] = {}
    with serving(args, tmp_path, port=port, env=env), contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: scope["client"].close() if "client" in scope else None)
        printed = _run(SUBMIT, scope, port)
        task = scope["task"]
        assert printed == f"Task submitted, ID: {task.id}\n"
        task.wait(timeout=30)  # "at a later time"
        printed = _run(LATER, scope, port)
        if not flaky:
            assert printed.startswith("The task runs successfully. The result is <PIL.")
            image = task.get()
            assert image.size == (16, 9) and image.getpixel((0, 0)) == (90, 140, 200)
            assert _run(RETRY, scope, port) == ""
            return
        assert printed == "The task run failed.\n"
        printed = _run(RETRY, scope, port)
        assert printed.startswith("Task failed, retrying...\nNew task status: ")
        new_task = scope["new_task"]
        assert new_task.get_info().retry_of == task.id
        assert new_task.wait(timeout=30) is errands.TaskStatus.SUCCESS
        assert new_task.get().size == (16, 9)
