"""The batch commands (errands submit-many, wait --batch, results --batch)
through real processes against a real ``errands serve``, with their exit codes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.adapters.test_cli import ERRANDS, serving
from tests.adapters.test_cli_client import run

pytestmark = [pytest.mark.realtime]

SERVICE = textwrap.dedent(
    '''
    import pathlib
    import trio
    import errands

    svc = errands.Service("cli_batches")

    @svc.task
    async def square(x: int) -> int:
        if x == 13:
            raise RuntimeError("unlucky")
        return x * x

    @svc.task
    async def gate(name: str) -> str:
        """Ends once the file gates/<name> exists."""
        path = pathlib.Path("gates") / name
        while not path.exists():
            await trio.sleep(0.01)
        return name
    '''
)


@pytest.fixture(scope="module")
def where(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli_batches")
    (folder / "service.py").write_text(SERVICE)
    (folder / "gates").mkdir()
    return folder


@pytest.fixture(scope="module")
def server(where: Path) -> Iterator[str]:
    with serving(["service.py:svc", "--backend", "memory://"], where) as (_, base):
        yield base


def jsonl(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_submit_many_names_refused_lines_and_wait_and_results_follow(
    server: str, tmp_path: Path
) -> None:
    source = jsonl(
        tmp_path / "in.jsonl",
        '{"x": 2}',
        '{"x": "two"}',
        "",
        "not json",
        '{"x": 13}',
        '{"x": 3}',
    )
    done = run(server, "submit-many", "square", "--from", str(source))
    assert done.returncode == 2, done.stderr  # some lines were refused
    batch_id = done.stdout.strip()
    assert done.stdout == f"{batch_id}\n" and len(batch_id) == 22
    errors = done.stderr.splitlines()
    assert errors[0] == (
        "errands: line 2 (item 1): invalid arguments: $.x: expected an integer, got string"
    )
    assert errors[1].startswith("errands: line 4 (item 2): not valid JSON")
    assert errors[2] == (
        f"errands: 2 of 5 items refused; the other 3 were accepted in batch {batch_id}"
    )
    waited = run(server, "wait", "--batch", batch_id)
    assert waited.returncode == 1  # one task failed
    assert waited.stdout == f"{batch_id} success=2 failure=1 cancelled=0 total=3\n"
    shown = run(server, "results", "--batch", batch_id)
    assert shown.returncode == 1, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    # Indexes count non-blank lines: a result names its line.
    assert [(r["index"], r["status"], r["result"]) for r in lines] == [
        (0, "success", 4),
        (3, "failure", None),
        (4, "success", 9),
    ]
    out = tmp_path / "out.jsonl"
    written = run(server, "results", "--batch", batch_id, "-o", str(out), "--order", "completed")
    assert (written.returncode, written.stdout) == (1, "")
    assert sorted(json.loads(line)["index"] for line in out.read_text().splitlines()) == [0, 3, 4]
    dash = run(server, "results", "--batch", batch_id, "-o", "-")
    assert dash.stdout == shown.stdout


def test_a_batch_that_all_succeeds_exits_0(server: str, tmp_path: Path) -> None:
    source = jsonl(tmp_path / "in.jsonl", *(json.dumps({"x": 100 + i}) for i in range(2500)))
    done = run(server, "submit-many", "square", "--from", str(source))
    assert (done.returncode, done.stderr) == (0, "")
    batch_id = done.stdout.strip()
    assert run(server, "wait", "--batch", batch_id).returncode == 0
    shown = run(server, "results", "--batch", batch_id)
    assert shown.returncode == 0
    assert [json.loads(line)["result"] for line in shown.stdout.splitlines()] == [
        (100 + i) ** 2 for i in range(2500)
    ]


def test_submit_many_from_stdin_and_with_options(server: str) -> None:
    lines = '{"x": 1}\n{"x": 2}\n'
    key = f"file-{uuid.uuid4().hex}"
    first = run(
        server, "submit-many", "square", "--from", "-", "--idempotency-key", key, stdin=lines
    )
    again = run(
        server, "submit-many", "square", "--from", "-", "--idempotency-key", key, stdin=lines
    )
    assert first.returncode == 0 and first.stdout == again.stdout
    later = run(server, "submit-many", "square", "--from", "-", "--delay", "3600", stdin=lines)
    batch_id = later.stdout.strip()
    info = httpx.get(f"{server}/batches/{batch_id}").json()
    assert info["counts"]["pending"] == 2
    httpx.post(f"{server}/batches/{batch_id}/cancel")


def test_unknown_batches_exit_3_and_bad_usage_exits_2(server: str, tmp_path: Path) -> None:
    for command in ("wait", "results"):
        done = run(server, command, "--batch", "A" * 22)
        assert done.returncode == 3, done.stderr
        assert "no batch with id" in done.stderr
    assert run(server, "submit-many", "nope", "--from", "-", stdin="").returncode == 2
    missing = run(server, "submit-many", "square", "--from", str(tmp_path / "missing.jsonl"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    both = run(server, "wait", "x" * 22, "--batch", "A" * 22)
    assert both.returncode == 2 and "not both" in both.stderr
    assert run(server, "wait").returncode == 2


def test_wait_times_out_and_results_without_wait_exit_4(server: str, where: Path) -> None:
    prefix = uuid.uuid4().hex[:8]
    lines = f'{{"name": "{prefix}-0"}}\n{{"name": "{prefix}-1"}}\n'
    batch_id = run(server, "submit-many", "gate", "--from", "-", stdin=lines).stdout.strip()
    assert run(server, "wait", "--batch", batch_id, "--timeout", "0.3").returncode == 124
    (where / "gates" / f"{prefix}-1").touch()
    tasks = httpx.get(f"{server}/batches/{batch_id}").json()["task_ids"]
    httpx.get(f"{server}/gate/status", params={"task_id": tasks[1], "wait": 30}, timeout=40)
    now = run(server, "results", "--batch", batch_id, "--no-wait")
    assert now.returncode == 4
    assert [json.loads(line)["index"] for line in now.stdout.splitlines()] == [1]
    assert "1 of 2 tasks" in now.stderr
    httpx.post(f"{server}/batches/{batch_id}/cancel")
    assert run(server, "results", "--batch", batch_id, "--no-wait").returncode == 1


def _on_a_terminal(args: list[str]) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """Run ``errands ARGS`` with stderr on a pseudo-terminal; what it showed there."""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        done = subprocess.run(
            [*ERRANDS, *args], stdout=subprocess.PIPE, stderr=secondary, text=True, timeout=60
        )
    finally:
        os.close(secondary)
    shown = b""
    try:
        while chunk := os.read(main, 65536):
            shown += chunk
    except OSError:  # EIO: the other side is closed and all was read
        pass
    finally:
        os.close(main)
    return done, shown


def test_progress_bars_on_a_terminal(server: str, tmp_path: Path) -> None:
    source = jsonl(tmp_path / "in.jsonl", *(json.dumps({"x": 100 + i}) for i in range(3000)))
    done, shown = _on_a_terminal(["submit-many", "square", "--from", str(source), "--url", server])
    assert done.returncode == 0
    assert b"3000/3000" in shown, shown
    batch_id = done.stdout.strip()
    waited, shown = _on_a_terminal(["wait", "--batch", batch_id, "--url", server])
    assert waited.returncode == 0 and b"3000/3000" in shown, shown
    written, shown = _on_a_terminal(
        ["results", "--batch", batch_id, "-o", str(tmp_path / "out.jsonl"), "--url", server]
    )
    assert written.returncode == 0 and b"3000/3000" in shown, shown
