"""The client commands (errands submit, status, get, cancel, retry, ls, wait)
through real processes against a real ``errands serve``.

Each command's output and every exit code of the contract in
``errands --help``: 0 success, 1 task failed or cancelled, 2 bad usage or
arguments, 3 no such task, 4 not ready or cannot cancel, 5 server unreachable
or erring, 124 wait timed out.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import termios
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import errands
from errands.adapters import _cli_client, cli
from tests.adapters.test_cli import ERRANDS, free_port, serving

pytestmark = [pytest.mark.realtime]

SERVICE = textwrap.dedent(
    """
    import time
    import trio
    import errands

    svc = errands.Service("cli")

    @svc.task
    async def add(a: int, b: int) -> int:
        return a + b

    @svc.task
    def echo(n: int, name: str, tags: list[str], flag: bool, label: str) -> dict:
        return {"n": n, "name": name, "tags": tags, "flag": flag, "label": label}

    @svc.task
    def shout(text: str) -> str:
        return text.upper()

    @svc.task
    def blob(n: int) -> bytes:
        return bytes(range(n))

    @svc.task
    def measure(data: bytes, label: str) -> list:
        return [len(data), data[:4].decode("latin-1"), label]

    @svc.task
    async def nap(seconds: float) -> str:
        errands.current_task().report(0.5, message="half way")
        await trio.sleep(seconds)
        return "rested"

    @svc.task
    def stubborn(seconds: float) -> None:
        time.sleep(seconds)

    @svc.task
    def boom() -> None:
        raise ValueError("kaput")
    """
)

UNKNOWN = "x" * 22


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    where = tmp_path_factory.mktemp("cli_client")
    (where / "service.py").write_text(SERVICE)
    with serving(["service.py:svc", "--backend", "memory://"], where) as (_, base):
        yield base


def run(
    base: str | None, *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m errands ARGS`` with ``ERRANDS_URL`` set to ``base``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERRANDS_")}
    if base is not None:
        env["ERRANDS_URL"] = base
    done = subprocess.run(
        [*ERRANDS, *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def submit(base: str, *args: str) -> str:
    done = run(base, "submit", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_submit_prints_the_id_alone_then_status_get_and_wait(server: str) -> None:
    done = run(server, "submit", "add", "a=1", "b=2")
    assert done.returncode == 0 and done.stderr == ""
    task_id = done.stdout.strip()
    assert done.stdout == f"{task_id}\n" and len(task_id) >= 16
    waited = run(server, "wait", task_id)
    assert (waited.returncode, waited.stdout) == (0, f"{task_id} success\n")
    got = run(server, "get", task_id)
    assert (got.returncode, got.stdout) == (0, "3\n")
    status = run(server, "status", task_id)
    assert status.returncode == 0
    lines = dict(line.split(":", 1) for line in status.stdout.splitlines())
    assert lines["task"].strip() == task_id and lines["status"].strip() == "success"
    assert lines["name"].strip() == "add" and lines["attempt"].strip().startswith("1 of")
    full = json.loads(run(server, "status", task_id, "--json").stdout)
    assert full["task_id"] == task_id and full["status"] == "success"
    assert full["name"] == "add" and full["completed_at"] is not None
    as_json = run(server, "submit", "--json", "add", "a=2", "b=2")
    answer = json.loads(as_json.stdout)
    assert set(answer) == {"task_id", "status"}
    assert answer["status"] in ("pending", "in_progress", "success")
    # --url wins over the environment
    other = run(f"http://127.0.0.1:{free_port()}", "get", answer["task_id"], "--url", server)
    assert other.returncode == 0, other.stderr


def test_submit_options(server: str) -> None:
    first = submit(server, "add", "a=1", "b=2", "--idempotency-key", "order-17")
    assert submit(server, "add", "a=1", "b=2", "--idempotency-key", "order-17") == first
    later = submit(server, "add", "a=0", "b=0", "--delay", "30", "--priority", "5")
    assert json.loads(run(server, "status", later, "--json").stdout)["status"] == "pending"
    assert run(server, "cancel", later).stdout == "cancelled\n"


def test_values_are_json_where_they_parse_else_strings(server: str, tmp_path: Path) -> None:
    done = run(
        server,
        "submit",
        "echo",
        "n=3",
        "name=bob",
        'tags=["a", "b"]',
        "flag=true",
        'label="42"',
        "--wait",
    )
    assert done.returncode == 0, done.stderr
    expected = {"n": 3, "name": "bob", "tags": ["a", "b"], "flag": True, "label": "42"}
    assert json.loads(done.stdout) == expected
    assert done.stdout.startswith('{\n  "n": 3,')  # pretty-printed
    (tmp_path / "tags.json").write_text('["from", "file"]')
    (tmp_path / "label.txt").write_text("NaN")  # not JSON's: a string
    from_files = run(
        server,
        "submit",
        "echo",
        "n=0",
        "name=[unclosed",
        "tags=@tags.json",
        "flag=false",
        "label=@label.txt",
        "--wait",
        cwd=tmp_path,
    )
    assert from_files.returncode == 0, from_files.stderr
    assert json.loads(from_files.stdout) == {
        "n": 0,
        "name": "[unclosed",
        "tags": ["from", "file"],
        "flag": False,
        "label": "NaN",
    }
    text = run(server, "submit", "shout", "text=hi there", "--wait")
    assert (text.returncode, text.stdout) == (0, "HI THERE\n")
    # A string argument takes the text as it is, numbers and all (its schema says so).
    number = run(server, "submit", "shout", "text=123", "--wait")
    assert (number.returncode, number.stdout) == (0, "123\n"), number.stderr
    literal = run(server, "submit", "shout", "text=[1, 2]", "--wait")
    assert (literal.returncode, literal.stdout) == (0, "[1, 2]\n"), literal.stderr


def test_file_arguments_upload_at_path(server: str, tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"\x89PNG" + bytes(996))
    done = run(server, "submit", "measure", "data=@data.bin", "label=png", "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [1000, "\x89PNG", "png"]
    literal = run(server, "submit", "measure", "data=abc", "label=text", "--wait")
    assert json.loads(literal.stdout) == [3, "abc", "text"]
    missing = run(server, "submit", "measure", "data=@nope.bin", "label=x", cwd=tmp_path)
    assert missing.returncode == 2 and "data: no such file: nope.bin" in missing.stderr


def test_binary_results_go_to_files_or_pipes_not_terminals(server: str, tmp_path: Path) -> None:
    task_id = submit(server, "blob", "n=256")
    assert run(server, "wait", task_id).returncode == 0
    written = run(server, "get", task_id, "-o", "out.bin", cwd=tmp_path)
    assert (written.returncode, written.stdout) == (0, "")
    assert (tmp_path / "out.bin").read_bytes() == bytes(range(256))
    raw = subprocess.run(
        [*ERRANDS, "get", task_id, "-o", "-", "--url", server], capture_output=True, timeout=60
    )
    assert (raw.returncode, raw.stdout) == (0, bytes(range(256)))
    # on a terminal, refused without -o
    main, secondary = pty.openpty()
    try:
        on_tty = subprocess.run(
            [*ERRANDS, "get", task_id, "--url", server],
            stdout=secondary,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(secondary)
        os.close(main)
    assert on_tty.returncode == 2
    assert on_tty.stderr.startswith("errands: the result is 256 bytes of binary data")
    assert "-o FILE" in on_tty.stderr
    waited = run(server, "submit", "blob", "n=3", "--wait", "-o", "three.bin", cwd=tmp_path)
    assert waited.returncode == 0 and (tmp_path / "three.bin").read_bytes() == b"\x00\x01\x02"


def test_cancel_and_retry(server: str) -> None:
    task_id = submit(server, "nap", "seconds=30")
    not_ready = run(server, "get", task_id)
    assert not_ready.returncode == 4 and "is not finished" in not_ready.stderr
    too_early = run(server, "retry", task_id)
    assert too_early.returncode == 4 and "is not finished" in too_early.stderr
    cancelled = run(server, "cancel", task_id)
    assert (cancelled.returncode, cancelled.stdout) == (0, "cancelled\n")
    gone = run(server, "get", task_id)
    assert gone.returncode == 1 and gone.stderr == f"errands: task {task_id} was cancelled\n"
    retried = run(server, "retry", task_id)
    assert retried.returncode == 0
    new_id = retried.stdout.strip()
    assert new_id != task_id
    assert json.loads(run(server, "status", new_id, "--json").stdout)["retry_of"] == task_id
    assert run(server, "cancel", new_id).returncode == 0
    again = json.loads(run(server, "retry", new_id, "--json").stdout)
    assert set(again) == {"task_id", "status"}
    assert run(server, "cancel", again["task_id"]).returncode == 0


def test_cannot_cancel_a_running_sync_task_exits_4(server: str) -> None:
    task_id = submit(server, "stubborn", "seconds=2")
    deadline = time.monotonic() + 20
    while json.loads(run(server, "status", task_id, "--json").stdout)["status"] != "in_progress":
        assert time.monotonic() < deadline
    refused = run(server, "cancel", task_id)
    assert refused.returncode == 4
    assert refused.stderr.startswith(f"errands: cannot cancel task {task_id}")
    assert refused.stderr.count("cannot cancel") == 1
    assert run(server, "wait", task_id).returncode == 0
    too_late = run(server, "cancel", task_id)
    assert too_late.returncode == 4 and "already finished" in too_late.stderr


def test_wait_on_several_tasks(server: str) -> None:
    good = [submit(server, "add", f"a={i}", "b=1") for i in range(3)]
    bad = submit(server, "boom")
    done = run(server, "wait", *good, bad, good[0])  # a repeated id is waited on once
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert sorted(lines) == sorted([*(f"{g} success" for g in good), f"{bad} failure"])
    assert f"errands: task {bad} failed: ValueError: kaput" in done.stderr
    # no progress bar when stderr is not a terminal
    assert "task/s" not in done.stderr and "%|" not in done.stderr
    fine = run(server, "wait", "-", stdin="\n".join(good) + "\n")
    assert fine.returncode == 0 and len(fine.stdout.splitlines()) == 3
    unknown = run(server, "wait", good[0], UNKNOWN)
    assert unknown.returncode == 3
    assert f"{UNKNOWN} not_found" in unknown.stdout.splitlines()


def test_wait_shows_a_progress_bar_on_a_terminal(server: str) -> None:
    ids = [submit(server, "nap", f"seconds=0.{i}") for i in range(1, 4)]
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 60, 0, 0))
    try:
        done = subprocess.run(
            [*ERRANDS, "wait", *ids, "--url", server],
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            timeout=60,
        )
    finally:
        os.close(secondary)
    shown = b""
    try:
        while chunk := os.read(main, 65536):
            shown += chunk
    except OSError:  # EIO: the terminal's other side is closed and all was read
        pass
    finally:
        os.close(main)
    assert done.returncode == 0
    assert sorted(done.stdout.splitlines()) == sorted(f"{i} success" for i in ids)
    assert b"3/3" in shown and b"task/s" in shown, shown


def test_timeouts_exit_124(server: str) -> None:
    slow = submit(server, "nap", "seconds=30")
    quick = submit(server, "add", "a=1", "b=1")
    started = time.monotonic()
    done = run(server, "wait", quick, slow, "--timeout", "0.5")
    assert done.returncode == 124
    assert time.monotonic() - started < 15
    lines = done.stdout.splitlines()
    assert f"{quick} success" in lines and f"{slow} in_progress" in lines
    assert "timed out after 0.5 s: 1 of 2 not finished" in done.stderr
    waited = run(server, "submit", "nap", "seconds=30", "--wait", "--timeout", "0.3")
    assert waited.returncode == 124 and "still" in waited.stderr
    assert run(server, "cancel", slow).returncode == 0


def test_failed_tasks_exit_1(server: str) -> None:
    waited = run(server, "submit", "boom", "--wait")
    assert waited.returncode == 1 and waited.stdout == ""
    assert waited.stderr.endswith("failed: ValueError: kaput\n")
    as_json = run(server, "submit", "boom", "--wait", "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["status"] == "failure"
    task_id = json.loads(as_json.stdout)["task_id"]
    got = run(server, "get", task_id)
    assert (
        got.returncode == 1 and got.stderr == f"errands: task {task_id} failed: ValueError: kaput\n"
    )
    status = run(server, "status", task_id)  # a query: it succeeded
    assert status.returncode == 0 and "error:    ValueError: kaput" in status.stdout


def test_bad_usage_and_invalid_arguments_exit_2(server: str) -> None:
    invalid = run(server, "submit", "add", "a=two", "c=1")
    assert invalid.returncode == 2 and invalid.stdout == ""
    lines = invalid.stderr.splitlines()
    assert lines[0] == "errands: invalid arguments for task 'add':"
    assert {line.split(":")[1].strip() for line in lines[1:]} == {"$.a", "$.b", "$.c"}
    for args, message in (
        (["submit", "nope"], "no task endpoint 'nope'"),
        (["submit", "add", "a"], "expected KEY=VALUE, got 'a'"),
        (["submit", "add", "a=1", "a=2"], "argument 'a' given twice"),
        (["submit", "add", "a=1", "--timeout", "3"], "go with --wait"),
        (["submit", "add", "--delay", "-1"], "expected seconds >= 0"),
        (["ls", "--name", "nope"], "no task endpoint 'nope'"),
        (["ls", "--status", "done"], "invalid choice"),
        (["ls", "--limit", "0"], "--limit must be"),
        (["wait"], "required"),
        (["status"], "required"),
    ):
        done = run(server, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)


def test_unknown_ids_exit_3(server: str) -> None:
    for command in ("status", "get", "cancel", "retry", "wait"):
        done = run(server, command, UNKNOWN)
        assert done.returncode == 3, (command, done.stderr)
        if command != "wait":
            assert (
                done.stderr
                == f"errands: no task with id {UNKNOWN!r} (unknown, expired or malformed)\n"
            )


def test_unreachable_server_exits_5() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["submit", "add", "a=1", "b=2"], ["status", UNKNOWN], ["ls"], ["wait", UNKNOWN]):
        done = run(url, *args)
        assert done.returncode == 5, (args, done.stderr)
        assert done.stderr.startswith("errands: cannot reach") and url in done.stderr


def test_ls_shows_a_table_or_json(server: str) -> None:
    task_id = submit(server, "shout", "text=list me")
    run(server, "wait", task_id)
    table = run(server, "ls", "--name", "shout", "--limit", "5")
    assert table.returncode == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "CREATED", "PROGRESS"]
    assert rows[0].split()[:3] == [task_id, "shout", "success"]
    listed = json.loads(
        run(server, "ls", "--status", "success", "--limit", "1000", "--json").stdout
    )
    assert task_id in {t["task_id"] for t in listed}
    assert {t["status"] for t in listed} == {"success"}
    empty = run(server, "ls", "--name", "stubborn", "--status", "pending")
    assert empty.stdout.split() == ["ID", "NAME", "STATUS", "CREATED", "PROGRESS"]


def test_help_documents_the_exit_codes() -> None:
    done = run(None, "--help")
    assert done.returncode == 0
    for command in ("serve", "worker", "submit", "status", "get", "cancel", "retry", "ls", "wait"):
        assert command in done.stdout
    for line in _cli_client.EXIT_CODES.splitlines()[1:]:
        assert line in done.stdout
    # the module docstrings hold the same table
    from errands.adapters import cli

    assert cli.__doc__ is not None
    for code in ("0", "1", "2", "3", "4", "5", "124"):
        assert f"\n    {code} " in cli.__doc__
    sub = run(None, "wait", "--help")
    assert "124" in sub.stdout and "--timeout" in sub.stdout


def test_url_and_token_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from errands.adapters.cli import _parser

    monkeypatch.delenv("ERRANDS_URL", raising=False)
    monkeypatch.delenv("ERRANDS_TOKEN", raising=False)
    plain = _parser().parse_args(["status", "abc"])
    assert (plain.url, plain.token) == ("http://127.0.0.1:3000", None)
    monkeypatch.setenv("ERRANDS_URL", "http://queue.example:8000")
    monkeypatch.setenv("ERRANDS_TOKEN", "s3cret")
    for command in (["status", "abc"], ["submit", "add"], ["ls"], ["wait", "abc"]):
        args = _parser().parse_args(command)
        assert (args.url, args.token) == ("http://queue.example:8000", "s3cret")
    given = _parser().parse_args(["get", "abc", "--url", "http://h:1", "--token", "t"])
    assert (given.url, given.token) == ("http://h:1", "t")


class _Counting(httpx.HTTPTransport):
    """httpx's own transport, noting each request's method and path."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        return super().handle_request(request)


@pytest.mark.parametrize("flags", [[], ["--json", "-o", "out.bin"]])
def test_submit_wait_reads_the_result_once(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str]
) -> None:
    """``submit --wait`` writes the result its wait brought, without a second download."""
    monkeypatch.chdir(tmp_path)
    args = cli._parser().parse_args(["submit", "blob", "n=3", "--wait", "--url", server, *flags])
    counting = _Counting()
    with errands.SyncHTTPClient(server, transport=counting) as client:
        client.server_info()
        counting.seen.clear()
        assert _cli_client._command("submit")(client, args) == 0
    gets = [path for _, path in counting.seen if path.endswith("/get")]
    assert len(gets) == 1, counting.seen  # (any endpoint's route: task ids are global)
    if flags:
        assert (tmp_path / "out.bin").read_bytes() == b"\x00\x01\x02"
