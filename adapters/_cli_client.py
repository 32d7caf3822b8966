"""The client commands of ``errands``: submit, status, get, cancel, retry, ls, wait,
and the batch commands (``submit-many``, ``wait --batch``, ``results``: ``_cli_batches``).

They talk to a running server (``errands serve``, or any errands server)
through :class:`~errands.adapters.SyncHTTPClient`; ``--url`` and ``--token``
(or the environment's ``ERRANDS_URL`` and ``ERRANDS_TOKEN``) say which.
Task ids are global, so every command but ``submit`` takes an id alone.

Their exit codes are a contract scripts can rely on (:data:`EXIT_CODES`, also
shown by ``errands --help``)::

    0    success (wait: every task succeeded; get: the result was written)
    1    a task failed or was cancelled (wait, get, submit --wait, results)
    2    bad usage or invalid arguments (each bad field named on stderr;
         submit-many: some lines were refused, the others accepted)
    3    no such task or batch (unknown, expired or malformed id)
    4    not ready (get or retry of an unfinished task; results --no-wait
         with tasks not final), or cannot cancel
    5    the server cannot be reached, or answered with an error
    124  wait --timeout (or submit --wait --timeout) expired

``wait`` exits with the highest code that applies to its tasks.  Messages go
to stderr as ``errands: <message>``, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import errands
from errands import (
    BatchNotFound,
    CannotCancel,
    EngineClosed,
    EngineUnavailable,
    InvalidArguments,
    RemoteError,
    TaskCancelled,
    TaskFailed,
    TaskInfo,
    TaskNotFound,
    TaskNotReady,
    TaskStatus,
)

from ._cli_text import parse_arguments, status_text, table, write_result
from ._protocol import info_to_json, parse_status, status_names
from .client import DEFAULT_URL, HTTPTask, SyncHTTPClient

__all__ = ["COMMANDS", "EXIT_CODES", "add_commands", "run"]

OK = 0
TASK_FAILED = 1
USAGE = 2
NOT_FOUND = 3
NOT_READY = 4
REMOTE = 5
TIMED_OUT = 124

EXIT_CODES = """\
exit codes:
  0    success (wait: every task succeeded; get: the result was written)
  1    a task failed or was cancelled (wait, get, submit --wait, results);
       serve and worker: any other failure
  2    bad usage or invalid arguments (each bad field named on stderr;
       submit-many: some lines were refused, the others were accepted)
  3    no such task or batch (unknown, expired or malformed id)
  4    not ready (get or retry of an unfinished task; results --no-wait
       with tasks not final), or cannot cancel
  5    the server cannot be reached, or answered with an error
  124  wait --timeout (or submit --wait --timeout) expired
"""

COMMANDS = frozenset(
    {"submit", "status", "get", "cancel", "retry", "ls", "wait", "submit-many", "results"}
)

#: Per-task word of ``wait`` for an id the server does not know (or no longer).
NOT_FOUND_WORD = "not_found"


class Stop(Exception):
    """Ends a command: ``message`` goes to stderr, ``code`` is the exit code."""

    def __init__(self, code: int, *messages: str) -> None:
        super().__init__(*messages)
        self.code = code
        self.messages = messages


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def add_commands(sub: Any) -> None:
    """Add the client commands to the ``errands`` subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("ERRANDS_URL") or DEFAULT_URL,
        help=f"the server (default: $ERRANDS_URL or {DEFAULT_URL})",
    )
    common.add_argument(
        "--token",
        default=os.environ.get("ERRANDS_TOKEN") or None,
        help="bearer token (default: $ERRANDS_TOKEN)",
    )

    def add(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(  # type: ignore[no-any-return]
            name,
            parents=[common],
            help=summary,
            description=summary,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    submit = add("submit", "submit a task; prints its id")
    submit.add_argument("name", metavar="NAME", help="the task endpoint")
    submit.add_argument(
        "arguments",
        nargs="*",
        metavar="KEY=VALUE",
        help="an argument: VALUE is JSON where it parses (n=3, tags='[\"a\"]', "
        "s='\"42\"'), else a string; KEY=@PATH sends a file (for file arguments) "
        "or the file's text (parsed the same way)",
    )
    submit.add_argument("--wait", action="store_true", help="wait, then print the result")
    submit.add_argument(
        "--timeout", type=_seconds, metavar="S", help="with --wait: give up after S seconds"
    )
    submit.add_argument("-o", "--output", metavar="FILE", help="with --wait: write the result here")
    submit.add_argument(
        "--priority", type=int, default=0, metavar="N", help="higher runs first (default 0)"
    )
    submit.add_argument("--delay", type=_seconds, metavar="S", help="run no sooner than S s")
    submit.add_argument("--idempotency-key", metavar="K", help="a repeat returns the first task")
    submit.add_argument("--json", action="store_true", help='print {"task_id", "status"}')

    status = add("status", "show a task's status")
    status.add_argument("task_id", metavar="ID")
    status.add_argument("--json", action="store_true", help="the full status as JSON")

    get = add("get", "write a task's result (JSON pretty-printed, text as is)")
    get.add_argument("task_id", metavar="ID")
    get.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the result to FILE (- for stdout, raw: needed for bytes on a terminal)",
    )

    cancel = add("cancel", "cancel a task; prints its new status")
    cancel.add_argument("task_id", metavar="ID")

    retry = add("retry", "run a finished task again; prints the new task's id")
    retry.add_argument("task_id", metavar="ID")
    retry.add_argument("--json", action="store_true", help='print {"task_id", "status"}')

    ls = add("ls", "list tasks, newest first")
    ls.add_argument("--status", choices=status_names())
    ls.add_argument("--name", metavar="NAME", help="only this task endpoint's tasks")
    ls.add_argument("--limit", type=int, default=20, metavar="N", help="at most N (default 20)")
    ls.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N")
    ls.add_argument("--json", action="store_true", help="a JSON list of statuses")

    wait = add(
        "wait",
        "wait for tasks to finish; prints 'ID status' as each does (--batch: the batch's "
        "counts once all are final)",
    )
    wait.add_argument("task_ids", nargs="*", metavar="ID", help="task ids (- reads stdin)")
    wait.add_argument("--batch", metavar="ID", help="wait for every task of this batch")
    wait.add_argument(
        "--timeout", type=_seconds, metavar="S", help="give up after S seconds (exit 124)"
    )

    from ._cli_batches import add_batch_commands

    add_batch_commands(add)


def run(args: argparse.Namespace) -> int:
    """Run one client command; returns its exit code (never raises)."""
    try:
        with SyncHTTPClient(args.url, token=args.token) as client:
            return _command(args.command)(client, args)
    except Stop as stop:
        _say(*stop.messages)
        return stop.code
    except (TaskFailed, TaskCancelled) as exc:
        _say(str(exc))
        return TASK_FAILED
    except InvalidArguments as exc:
        _say(f"invalid arguments for task {exc.task_name!r}:", *(str(e) for e in exc.errors))
        return USAGE
    except (TaskNotFound, BatchNotFound) as exc:
        _say(str(exc))
        return NOT_FOUND
    except CannotCancel as exc:
        _say(str(exc))
        return NOT_READY
    except TaskNotReady as exc:
        _say(str(exc))
        return NOT_READY
    except (RemoteError, EngineClosed, EngineUnavailable) as exc:
        _say(str(exc))
        return REMOTE
    except TimeoutError as exc:
        _say(str(exc))
        return TIMED_OUT
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`errands ls | head -1`): nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _say(*lines: str) -> None:
    for line in lines:
        print(f"errands: {line}", file=sys.stderr)


def _print(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------- submit


def _submit(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    if not args.wait and (args.timeout is not None or args.output is not None):
        raise Stop(USAGE, "--timeout and --output go with --wait")
    server = client.server_info()
    endpoint = server.endpoints.get(args.name)
    if endpoint is None:
        known = ", ".join(sorted(server.endpoints)) or "none"
        raise Stop(USAGE, f"no task endpoint {args.name!r} on the server (endpoints: {known})")
    try:
        arguments = parse_arguments(args.arguments, endpoint.file_fields(), endpoint.text_fields())
    except ValueError as exc:
        raise Stop(USAGE, str(exc)) from None
    options = client[args.name].options(
        priority=args.priority, delay=args.delay, idempotency_key=args.idempotency_key
    )
    task = options.submit(**arguments)
    if not args.wait:
        _print(_id_json(task) if args.json else task.id)
        return OK
    # Waited on through a handle without the endpoint's name (see _write), so
    # the result the wait brings is the one written: one download, not two.
    plain = client.get_task(task.id)
    status = plain.wait(timeout=args.timeout)
    if args.json:
        _print(json.dumps({"task_id": task.id, "status": status.value}))
        if status is not TaskStatus.SUCCESS:
            return TASK_FAILED
        if args.output is not None:
            _write(plain, args.output)
        return OK
    _write(plain, args.output)
    return OK


def _id_json(task: HTTPTask) -> str:
    return json.dumps({"task_id": task.id, "status": task.get_status().value})


def _write(task: HTTPTask, output: str | None) -> None:
    # A handle without an endpoint name decodes by media type only, so an
    # image stays the server's PNG bytes instead of becoming a PIL image.
    problem = write_result(task.get(), output)
    if problem is not None:
        raise Stop(USAGE, problem)


# ------------------------------------------------------------ one task by id


def _status(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    info = client.get_task(args.task_id).get_info()
    _print(json.dumps(info_to_json(info), indent=2) if args.json else status_text(info))
    return OK


def _get(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    _write(client.get_task(args.task_id), args.output)
    return OK


def _cancel(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    status = client.get_task(args.task_id).cancel()
    _print(status.value)
    if status is not TaskStatus.CANCELLED:
        raise Stop(NOT_READY, f"task {args.task_id} is {status.value}, not cancelled")
    return OK


def _retry(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    task = client.get_task(args.task_id).retry()
    _print(_id_json(task) if args.json else task.id)
    return OK


# ------------------------------------------------------------- many tasks


def _ls(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000 or args.offset < 0:
        raise Stop(USAGE, "--limit must be 1..1000 and --offset at least 0")
    if args.name is not None and args.name not in client.server_info().endpoints:
        known = ", ".join(sorted(client.server_info().endpoints)) or "none"
        raise Stop(USAGE, f"no task endpoint {args.name!r} on the server (endpoints: {known})")
    status = parse_status(args.status) if args.status else None
    infos = client.list(name=args.name, status=status, limit=args.limit, offset=args.offset)
    _print(json.dumps([info_to_json(i) for i in infos], indent=2) if args.json else table(infos))
    return OK


def _ids(words: Sequence[str]) -> list[str]:
    """Task ids, in order, once each; ``-`` stands for the ids on stdin."""
    out: dict[str, None] = {}
    for word in words:
        for task_id in sys.stdin.read().split() if word == "-" else [word]:
            out[task_id] = None
    if not out:
        raise Stop(USAGE, "no task ids given")
    return list(out)


def _code(status: TaskStatus | None) -> int:
    if status is None:
        return NOT_FOUND
    if status is TaskStatus.SUCCESS:
        return OK
    return TASK_FAILED if status.is_final else TIMED_OUT


def _wait(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    if args.batch is not None:
        from ._cli_batches import wait_batch

        return wait_batch(client, args)
    if not args.task_ids:
        raise Stop(USAGE, "task ids (ID ..., or - for stdin) or --batch ID are required")
    from tqdm import tqdm

    tasks = [client.get_task(task_id) for task_id in _ids(args.task_ids)]
    bar = tqdm(
        total=len(tasks),
        unit="task",
        file=sys.stderr,
        disable=len(tasks) < 2 or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    code = OK
    pending = {t.id: t for t in tasks}

    def report(task: HTTPTask, info: TaskInfo | None) -> None:
        nonlocal code
        status = info.status if info is not None else None
        word = status.value if status is not None else NOT_FOUND_WORD
        tqdm.write(f"{task.id} {word}", file=sys.stdout)
        sys.stdout.flush()
        if info is not None and info.status is TaskStatus.FAILURE:
            tqdm.write(f"errands: task {task.id} failed: {info.error}", file=sys.stderr)
        code = max(code, _code(status))

    client._wait_results = False  # statuses only: no results carried along
    with bar:
        try:
            ended = errands.as_completed(tasks, timeout=args.timeout)
            for task in ended:
                pending.pop(task.id, None)
                report(task, ended.infos[task.id])  # as seen ending: no need to ask again
                bar.update(1)
        except TimeoutError:
            bar.close()
            _say(f"timed out after {args.timeout} s: {len(pending)} of {len(tasks)} not finished")
            for task in pending.values():
                report(task, _info_or_none(task))
    return code


def _info_or_none(task: HTTPTask) -> TaskInfo | None:
    try:
        return task.get_info()
    except TaskNotFound:
        return None


def _command(name: str) -> Callable[[SyncHTTPClient, argparse.Namespace], int]:
    if name in _COMMANDS:
        return _COMMANDS[name]
    from . import _cli_batches

    return {"submit-many": _cli_batches.submit_many, "results": _cli_batches.results}[name]


_COMMANDS = {
    "submit": _submit,
    "status": _status,
    "get": _get,
    "cancel": _cancel,
    "retry": _retry,
    "ls": _ls,
    "wait": _wait,
}
