"""The stock BentoML clients against an errands server (``--bentoml-compat``).

BentoML cannot share errands' environment (it pins an old cattrs), so its
client runs in its own venv, made by ``make test`` and named by
``ERRANDS_BENTOML_PYTHON``; the errands server runs from this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.adapters.test_cli import serving

pytestmark = [pytest.mark.realtime, pytest.mark.slow]

BENTOML_PYTHON = os.environ.get("ERRANDS_BENTOML_PYTHON")

SERVICE = textwrap.dedent(
    """
    import trio
    import errands

    svc = errands.Service("compat")

    @svc.task
    async def add(a: int, b: int) -> int:
        return a + b

    @svc.task
    def greet(name: str) -> str:
        return f"hi {name}"

    @svc.task
    def render(prompt: str) -> bytes:
        return b"\\x89PNG\\r\\n\\x1a\\n" + prompt.encode()

    @svc.task
    async def slow(seconds: float) -> None:
        await trio.sleep(seconds)

    @svc.task
    async def boom() -> None:
        raise RuntimeError("kaput")

    @svc.task
    def measure(blob: bytes, label: str) -> list:
        return [len(blob), blob[:4].hex(), label]
    """
)

CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import bentoml

    FINAL = ("completed", "failed", "canceled")

    def settle(task):
        deadline = time.monotonic() + 20
        while (status := task.get_status().value) not in FINAL:
            assert time.monotonic() < deadline, status
            time.sleep(0.02)
        return status

    out = {}
    with bentoml.SyncHTTPClient(sys.argv[1]) as client:
        task = client.add.submit(a=1, b=2)
        out["add"] = [settle(task), task.get()]
        task = client.greet.submit(name="bob")
        out["greet"] = [settle(task), task.get()]
        task = client.render.submit(prompt="cat")
        status = settle(task)
        out["render"] = [status, task.get().hex()]
        task = client.slow.submit(seconds=60)
        deadline = time.monotonic() + 10
        while task.get_status().value != "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        task.cancel()
        out["cancel"] = settle(task)
        task = client.boom.submit()
        out["boom"] = settle(task)
        again = task.retry()
        out["retry"] = [again.id != task.id, settle(again)]
        try:
            task.get()
        except Exception as exc:
            out["boom_get"] = type(exc).__name__ + ": " + str(exc)
        import pathlib
        upload = pathlib.Path(sys.argv[2])
        upload.write_bytes(bytes(range(256)) * 40)
        task = client.measure.submit(blob=upload, label="file")
        out["measure"] = [settle(task), task.get()]

    async def main():
        async with bentoml.AsyncHTTPClient(sys.argv[1]) as client:
            task = await client.add.submit(a=20, b=22)
            deadline = time.monotonic() + 20
            while (status := (await task.get_status()).value) not in FINAL:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            out["async_add"] = [status, await task.get()]

    asyncio.run(main())
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(
    not BENTOML_PYTHON,
    reason="set ERRANDS_BENTOML_PYTHON (make test does) to a python with bentoml",
)
def test_stock_bentoml_clients_work_against_errands(tmp_path: Path) -> None:
    assert BENTOML_PYTHON is not None
    (tmp_path / "compat.py").write_text(SERVICE)
    (tmp_path / "client.py").write_text(CLIENT)
    with serving(["compat.py:svc", "--bentoml-compat", "--backend", "memory://"], tmp_path) as (
        _,
        base,
    ):
        done = subprocess.run(
            [BENTOML_PYTHON, str(tmp_path / "client.py"), base, str(tmp_path / "upload.bin")],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["add"] == ["completed", 3]
    assert out["greet"] == ["completed", "hi bob"]
    assert out["render"] == ["completed", (b"\x89PNG\r\n\x1a\n" + b"cat").hex()]
    assert out["cancel"] == "canceled"
    assert out["boom"] == "failed"
    assert out["retry"] == [True, "failed"]
    assert "kaput" in out["boom_get"]
    assert out["async_add"] == ["completed", 42]
    assert out["measure"] == ["completed", [10240, "00010203", "file"]]  # sent as multipart


TOKEN_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import bentoml

    url, token = sys.argv[1], sys.argv[2]
    out = {}
    with bentoml.SyncHTTPClient(url, token=token) as client:
        task = client.add.submit(a=1, b=2)
        deadline = time.monotonic() + 20
        while task.get_status().value != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        out["sync"] = task.get()

    async def main():
        async with bentoml.AsyncHTTPClient(url, token=token) as client:
            task = await client.add.submit(a=20, b=22)
            deadline = time.monotonic() + 20
            while (await task.get_status()).value != "completed":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            out["async"] = await task.get()

    asyncio.run(main())
    try:
        with bentoml.SyncHTTPClient(url, token="wrong") as client:
            client.add.submit(a=1, b=1)
        out["wrong"] = "accepted"
    except Exception as exc:
        out["wrong"] = type(exc).__name__
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(
    not BENTOML_PYTHON,
    reason="set ERRANDS_BENTOML_PYTHON (make test does) to a python with bentoml",
)
def test_stock_bentoml_clients_send_their_token(tmp_path: Path) -> None:
    assert BENTOML_PYTHON is not None
    (tmp_path / "compat.py").write_text(SERVICE)
    (tmp_path / "client.py").write_text(TOKEN_CLIENT)
    token = "bento-token-123"
    (tmp_path / "token").write_text(token)
    env = {k: v for k, v in os.environ.items() if k != "ERRANDS_TOKEN"}
    args = ["compat.py:svc", "--bentoml-compat", "--backend", "memory://"]
    with serving([*args, "--token-file", str(tmp_path / "token")], tmp_path, env=env) as (_, base):
        done = subprocess.run(
            [BENTOML_PYTHON, str(tmp_path / "client.py"), base, token],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["sync"] == 3 and out["async"] == 42
    assert out["wrong"] != "accepted"
