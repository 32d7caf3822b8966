"""errands' HTTP clients against a real BentoML server (``bentoml serve``).

The other direction of migration: code written with ``errands.SyncHTTPClient``
or ``AsyncHTTPClient`` keeps working against a BentoML service.  BentoML runs
from its own venv (``ERRANDS_BENTOML_PYTHON``, made by ``make test``); the
clients run here.  BentoML has no long polls, so ``wait`` polls with backoff.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import errands
from errands.adapters import AsyncHTTPClient, SyncHTTPClient
from tests.adapters.test_cli import free_port

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("ERRANDS_BENTOML_PYTHON"),
        reason="set ERRANDS_BENTOML_PYTHON (make test does) to a python with bentoml",
    ),
]

SERVICE = textwrap.dedent(
    """
    import time
    import bentoml

    @bentoml.service
    class Compat:
        @bentoml.task
        def add(self, a: int, b: int) -> int:
            return a + b

        @bentoml.task
        def greet(self, name: str) -> str:
            return f"hi {name}"

        @bentoml.task
        def slow(self, seconds: float) -> str:
            time.sleep(seconds)
            return "done"

        @bentoml.task
        def boom(self) -> str:
            raise RuntimeError("kaput")
    """
)


@pytest.fixture(scope="module")
def bentoml_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    where = tmp_path_factory.mktemp("bentoml")
    (where / "service.py").write_text(SERVICE)
    bentoml = Path(os.environ["ERRANDS_BENTOML_PYTHON"]).with_name("bentoml")
    port = free_port()
    log = (where / "server.log").open("w")
    proc = subprocess.Popen(
        [str(bentoml), "serve", "service:Compat", "--host", "127.0.0.1", "--port", str(port)],
        cwd=where,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its worker processes go with it
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (where / "server.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "bentoml serve did not become ready"
            time.sleep(0.1)
        yield base
    finally:
        os.killpg(proc.pid, 15)  # the group of the server we started
        try:
            # BentoML's shutdown waits for the cancel request it never answers.
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
        log.close()


def test_sync_client_against_bentoml(bentoml_server: str) -> None:
    with SyncHTTPClient(bentoml_server) as client:
        assert set(client.endpoints) == {"add", "greet", "slow", "boom"}
        task = client.add.submit(a=1, b=2)
        assert task.wait(timeout=60) is errands.TaskStatus.SUCCESS  # from "completed"
        assert task.get() == 3
        info = task.get_info()
        assert info.id == task.id and info.name == "add" and info.started_at is not None
        greeting = client.greet.submit(name="bob")
        greeting.wait(timeout=60)
        assert greeting.get() == "hi bob"
        failing = client.boom.submit()
        assert failing.wait(timeout=60) is errands.TaskStatus.FAILURE  # from "failed"
        with pytest.raises(errands.TaskFailed):
            failing.get()
        again = failing.retry()
        assert again.id != failing.id
        assert again.wait(timeout=60) is errands.TaskStatus.FAILURE
        slow = client.slow.submit(seconds=1)
        with pytest.raises(errands.TaskNotReady):
            slow.get()
        with pytest.raises(errands.TaskNotReady):
            slow.retry()
        with pytest.raises(errands.TaskNotFound):
            client.get_task("0" * 32).get_status()
        done = list(errands.as_completed([task, greeting, failing], timeout=60))
        assert set(done) == {task, greeting, failing}
    # BentoML 1.4.29's local server never answers a cancel (its handler
    # updates a column its table lacks); the client gives up after its
    # timeout with a RemoteError instead of hanging.
    with (
        SyncHTTPClient(bentoml_server, timeout=2) as impatient,
        pytest.raises(errands.RemoteError, match="did not answer in time"),
    ):
        impatient.get_task(task.id).cancel()


def test_async_client_against_bentoml_under_asyncio(bentoml_server: str) -> None:
    async def main() -> None:
        async with AsyncHTTPClient(bentoml_server) as client:
            task = await client.add.submit(a=20, b=22)
            assert await task.wait(timeout=60) is errands.TaskStatus.SUCCESS
            assert await task.get() == 42
            quick = await client.greet.submit(name="ann")
            order = [t async for t in errands.as_completed([quick, task], timeout=60)]
            assert set(order) == {quick, task}

    asyncio.run(main())
