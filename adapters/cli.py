"""The ``errands`` command line.

``errands serve`` serves a service's tasks over HTTP and ``errands worker``
runs them from a shared backend; ``errands submit``, ``status``, ``get``,
``cancel``, ``retry``, ``ls`` and ``wait`` talk to a server from the shell
(:mod:`errands.adapters._cli_client`).

Exit codes, a contract for scripts (also in ``errands --help``)::

    0    success (wait: every task succeeded; get: the result was written)
    1    a task failed or was cancelled (wait, get, submit --wait);
         serve and worker: any other failure
    2    bad usage or invalid arguments (each bad field named on stderr)
    3    no such task (unknown, expired or malformed id)
    4    not ready (get or retry of an unfinished task), or cannot cancel
    5    the server cannot be reached, or answered with an error
    124  wait --timeout (or submit --wait --timeout) expired

Messages go to stderr as ``errands: <message>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

import errands

from . import _cli_client
from ._serving import LOG_FORMAT, serve_hypercorn, serve_uvicorn
from ._target import TargetError, load_service
from .asgi import DEFAULT_MAX_BODY

__all__ = ["main"]

log = logging.getLogger("errands.cli")

DEFAULT_BACKEND = "diskcache://./.errands"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="errands",
        description="errands task queue: serve tasks, run workers, and use a server",
        epilog=_cli_client.EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve a service's tasks over HTTP")
    serve.add_argument("target", metavar="MODULE:ATTR", help="e.g. app.py:svc or pkg.mod:Svc")
    serve.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help=f"backend URL (default {DEFAULT_BACKEND}: durable, in ./.errands)",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.add_argument(
        "--bentoml-compat",
        action="store_true",
        help="report statuses as BentoML's clients expect (completed, failed, canceled)",
    )
    serve.add_argument("--server", choices=("hypercorn", "uvicorn"), default="hypercorn")
    serve.add_argument("--max-body-size", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES")
    serve.add_argument(
        "--max-pending",
        type=int,
        default=None,
        metavar="N",
        help="answer submits with 429 while N tasks wait (default: no limit)",
    )
    serve.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="the longest a ?wait= long poll or POST /tasks/wait is held (default 60)",
    )
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight requests may take",
    )

    _engine_flags(serve)

    worker = sub.add_parser("worker", help="run tasks from a shared backend, without HTTP")
    worker.add_argument("target", metavar="MODULE:ATTR")
    worker.add_argument("--backend", required=True, help="a shared backend URL")
    _engine_flags(worker)
    # Older spelling of --task-slots, kept working.
    worker.add_argument("--workers", type=int, dest="task_slots", help=argparse.SUPPRESS)

    _cli_client.add_commands(sub)
    return parser


def _engine_flags(parser: argparse.ArgumentParser) -> None:
    """The engine options, shared by serve and worker (defaults: EngineOptions)."""
    d = errands.EngineOptions()
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--task-slots",
        type=int,
        metavar="N",
        help=f"tasks this process runs at once, all endpoints together (default {d.workers}; "
        "not server processes: see --workers)",
    )
    group.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help=f"how long a finished task is kept (default {d.ttl:g})",
    )
    group.add_argument(
        "--lease",
        type=float,
        metavar="SECONDS",
        help=f"a claim's life without renewal; a dead worker's task is re-run after it "
        f"(default {d.lease:g})",
    )
    group.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help=f"at shutdown, how long running tasks may finish before they are handed back "
        f"(default {d.grace:g})",
    )
    group.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help=f"runs allowed for a task whose worker keeps dying (default {d.max_attempts})",
    )


def _engine_options(args: argparse.Namespace) -> errands.EngineOptions:
    """The engine options the flags give (ValueError names a bad one)."""
    given = {
        "workers": args.task_slots,
        "ttl": args.ttl,
        "lease": args.lease,
        "grace": args.grace,
        "max_attempts": args.max_attempts,
    }
    try:
        return errands.EngineOptions(**{k: v for k, v in given.items() if v is not None})
    except (TypeError, ValueError) as exc:
        # The message starts with the option's name: say the flag instead.
        message = str(exc)
        for option, flag in _FLAGS.items():
            if message.startswith(option + " "):
                message = flag + message[len(option) :]
                break
        raise _UsageError(message) from None


_FLAGS = {
    "workers": "--task-slots",
    "ttl": "--ttl",
    "lease": "--lease",
    "grace": "--grace",
    "max_attempts": "--max-attempts",
}


class _UsageError(Exception):
    """A bad flag value (exit 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command in _cli_client.COMMANDS:
        return _cli_client.run(args)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        if args.command == "serve":
            return _serve(args)
        return _worker(args)
    except TargetError as exc:
        print(f"errands: {exc}", file=sys.stderr)
        return 2
    except errands.BackendError as exc:
        print(f"errands: {exc}", file=sys.stderr)
        return 2
    except _UsageError as exc:
        print(f"errands: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("errands: --workers must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= args.max_wait < float("inf"):
        print("errands: --max-wait must be a number of seconds >= 0", file=sys.stderr)
        return 2
    if args.workers > 1 and args.backend.startswith("memory:"):
        print(
            "errands: --workers > 1 needs a shared backend (each process would have its own "
            "memory, and tasks submitted to one would be invisible to the others); use e.g. "
            f"--backend {DEFAULT_BACKEND}",
            file=sys.stderr,
        )
        return 2
    options = _engine_options(args)
    load_service(args.target)  # fail early, in this process, with a clear message
    os.environ["ERRANDS_SERVE"] = json.dumps(
        {
            "engine": {
                "workers": options.workers,
                "ttl": options.ttl,
                "lease": options.lease,
                "grace": options.grace,
                "max_attempts": options.max_attempts,
            },
            "target": args.target,
            "backend": args.backend,
            "bentoml_compat": args.bentoml_compat,
            "max_body_size": args.max_body_size,
            "max_pending": args.max_pending,
            "max_wait": args.max_wait,
        }
    )
    application = "errands.adapters._served:app"
    log.info(
        "serving %s on http://%s:%d with %s (backend %s)",
        args.target,
        args.host,
        args.port,
        args.server,
        args.backend,
    )
    if args.server == "uvicorn":
        return serve_uvicorn(args, application)
    return serve_hypercorn(args, application)


def _worker(args: argparse.Namespace) -> int:
    options = _engine_options(args)
    service = load_service(args.target)
    if args.backend.startswith("memory:"):
        print("errands: a worker needs a shared backend, not memory://", file=sys.stderr)
        return 2

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with errands.open_engine(service, backend=args.backend, options=options):
                log.info(
                    "worker for %s on %s; SIGINT or SIGTERM to stop", args.target, args.backend
                )
                async for signum in signals:
                    log.info("received %s: draining", signal.Signals(signum).name)
                    break

    try:
        trio.run(run)
    except Exception:
        # An engine bug ended the engine (it logged why): exit non-zero so
        # that a supervisor restarts the worker.
        log.critical("the worker's engine died; exiting")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
