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

import attrs
import trio

import errands
from errands._registry import resolve_backend

from . import _cli_client
from ._logs import FORMATS, setup_logging
from ._metrics_serve import serve_metrics
from ._options import HTTP_DEFAULTS, HTTPOptions
from ._security import LOOPBACK_HOSTS, is_loopback, read_token
from ._serving import serve_hypercorn, serve_uvicorn
from ._target import TargetError, load_service

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
    _http_flags(serve)
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight requests may take",
    )

    _engine_flags(serve)
    _log_flag(serve)
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="also serve /metrics (and /livez, /readyz, nothing else) on port P; with "
        "--workers N, process i on port P+i, one scrape target each",
    )

    worker = sub.add_parser("worker", help="run tasks from a shared backend, without HTTP")
    worker.add_argument("target", metavar="MODULE:ATTR")
    worker.add_argument("--backend", required=True, help="a shared backend URL")
    _engine_flags(worker)
    _log_flag(worker)
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="serve this worker's /metrics (and /livez, /readyz) on port P",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address of --metrics-port (default 127.0.0.1)",
    )
    # Older spelling of --task-slots, kept working.
    worker.add_argument("--workers", type=int, dest="task_slots", help=argparse.SUPPRESS)

    _cli_client.add_commands(sub)
    return parser


def _log_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="how much the server logs (default info; debug shows every state change)",
    )
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, with task_id and "
        "task_name as fields",
    )


def _http_flags(serve: argparse.ArgumentParser) -> None:
    """Auth, host names and the HTTP caps of ``errands serve`` (defaults: HTTPOptions)."""
    d = HTTP_DEFAULTS
    safety = serve.add_argument_group("security")
    safety.add_argument(
        "--token-file",
        metavar="PATH",
        help="require 'Authorization: Bearer <token>' on every route but /livez and /readyz; "
        "the token is the file's first line (or set ERRANDS_TOKEN)",
    )
    safety.add_argument(
        "--no-auth",
        action="store_true",
        help="serve a non-loopback address without a token (only behind your own auth)",
    )
    safety.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a Host name to answer to (repeat; '*' for any; default: the loopback names "
        "when bound to loopback, any otherwise)",
    )
    safety.add_argument(
        "--hide-errors",
        action="store_true",
        help="send a failed task's error type only, not its message",
    )
    safety.add_argument(
        "--expose-tracebacks",
        action="store_true",
        help="send a failed task's traceback in its status (off by default: it shows code)",
    )
    caps = serve.add_argument_group("limits")
    caps.add_argument("--max-body-size", type=int, default=d.max_body_size, metavar="BYTES")
    caps.add_argument(
        "--max-pending",
        type=int,
        default=d.max_pending,
        metavar="N",
        help=f"answer submits and retries with 429 while N tasks wait (default {d.max_pending})",
    )
    caps.add_argument(
        "--max-wait",
        type=float,
        default=d.max_wait,
        metavar="SECONDS",
        help=f"the longest a ?wait= long poll or POST /tasks/wait is held (default {d.max_wait:g})",
    )
    caps.add_argument(
        "--max-held",
        type=int,
        default=d.max_held,
        metavar="N",
        help=f"requests held open at once: long polls, event streams, /tasks/wait "
        f"(default {d.max_held}; past it, 503 with Retry-After)",
    )
    caps.add_argument(
        "--max-wait-ids",
        type=int,
        default=d.max_wait_ids,
        metavar="N",
        help=f"task ids in one POST /tasks/wait (default {d.max_wait_ids})",
    )
    caps.add_argument(
        "--max-parts",
        type=int,
        default=d.max_parts,
        metavar="N",
        help=f"parts in one multipart submit (default {d.max_parts})",
    )
    caps.add_argument(
        "--read-timeout",
        type=float,
        default=d.read_timeout,
        metavar="SECONDS",
        help=f"the longest a request body may take to arrive (default {d.read_timeout:g}; "
        "408 past it)",
    )
    serve.add_argument(
        "--no-dashboard",
        action="store_true",
        help="do not serve the live dashboard at /dashboard",
    )


def _http_options(args: argparse.Namespace) -> HTTPOptions:
    """The HTTP options the flags give (a bad one is a usage error naming its flag)."""
    hosts = args.allowed_host
    if hosts is None:
        hosts = list(LOOPBACK_HOSTS) if is_loopback(args.host) else ["*"]
    try:
        return HTTPOptions(
            bentoml_compat=args.bentoml_compat,
            max_body_size=args.max_body_size,
            max_pending=args.max_pending,
            max_wait=args.max_wait,
            max_held=args.max_held,
            max_wait_ids=args.max_wait_ids,
            max_parts=args.max_parts,
            hide_errors=args.hide_errors,
            expose_tracebacks=args.expose_tracebacks,
            allowed_hosts=hosts,
            read_timeout=args.read_timeout,
            dashboard=not args.no_dashboard,
        )
    except (TypeError, ValueError) as exc:
        message = str(exc)
        option = message.split(" ", 1)[0]
        raise _UsageError("--" + option.replace("_", "-") + message[len(option) :]) from None


def _token(args: argparse.Namespace) -> str | None:
    """The token from --token-file or ERRANDS_TOKEN (never printed)."""
    if args.token_file:
        try:
            return read_token(args.token_file)
        except (OSError, ValueError) as exc:
            raise _UsageError(f"--token-file: {exc}") from None
    return os.environ.get("ERRANDS_TOKEN") or None


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
    group.add_argument(
        "--priority-aging",
        type=float,
        metavar="SECONDS",
        help="seconds of waiting worth one point of priority, so low-priority tasks are "
        f"never starved; 0 for strict priority (default {d.priority_aging:g})",
    )


def _engine_options(args: argparse.Namespace) -> errands.EngineOptions:
    """The engine options the flags give (ValueError names a bad one)."""
    given = {
        "workers": args.task_slots,
        "ttl": args.ttl,
        "lease": args.lease,
        "grace": args.grace,
        "max_attempts": args.max_attempts,
        "priority_aging": args.priority_aging,
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
    "priority_aging": "--priority-aging",
}


class _UsageError(Exception):
    """A bad flag value (exit 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command in _cli_client.COMMANDS:
        return _cli_client.run(args)
    setup_logging(args.log_level, args.log_format)  # server processes read it from the environment
    if args.metrics_port is not None:
        processes = getattr(args, "workers", 1)  # (a worker's --workers is --task-slots)
        ports = range(args.metrics_port, args.metrics_port + max(processes, 1))
        if ports.start <= 0 or ports.stop > 65536 or getattr(args, "port", None) in ports:
            print(
                f"errands: --metrics-port {args.metrics_port}: the ports {ports.start}.."
                f"{ports.stop - 1} (one per process) must be free ports, not --port",
                file=sys.stderr,
            )
            return 2
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
    http = _http_options(args)
    token = _token(args)
    if token is None and not args.no_auth and not is_loopback(args.host):
        print(
            f"errands: refusing to serve {args.host} without a token: anyone who reaches it "
            "could read every task and run any. Set a token with --token-file PATH (or the "
            "ERRANDS_TOKEN environment variable), or pass --no-auth if something else in "
            "front of errands checks who may call it.",
            file=sys.stderr,
        )
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
    _check_backend(args.backend)
    os.environ["ERRANDS_SERVE"] = json.dumps(
        {
            "engine": {
                "workers": options.workers,
                "ttl": options.ttl,
                "lease": options.lease,
                "grace": options.grace,
                "max_attempts": options.max_attempts,
                "priority_aging": options.priority_aging,
            },
            "target": args.target,
            "backend": args.backend,
            "http": attrs.asdict(http),
            # The token itself never goes into the environment here: each
            # process reads the file (or inherits ERRANDS_TOKEN).
            "token_file": args.token_file,
            "processes": args.workers,
            "metrics_port": args.metrics_port,
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


def _check_backend(url: str) -> None:
    """A bad backend URL is a usage error, said before anything starts (not a
    traceback from the server's startup).  Checked after the service is
    imported, which may add a scheme; building a backend object opens nothing."""
    try:
        resolve_backend(url)
    except errands.BackendError as exc:
        raise _UsageError(f"--backend: {exc}") from None


def _worker(args: argparse.Namespace) -> int:
    options = _engine_options(args)
    service = load_service(args.target)
    _check_backend(args.backend)
    if args.backend.startswith("memory:"):
        print("errands: a worker needs a shared backend, not memory://", file=sys.stderr)
        return 2

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with (
                errands.open_engine(service, backend=args.backend, options=options) as client,
                trio.open_nursery() as nursery,
            ):
                if args.metrics_port is not None:
                    await nursery.start(
                        serve_metrics, client.engine, args.metrics_host, args.metrics_port
                    )
                log.info(
                    "worker for %s on %s; SIGINT or SIGTERM to stop", args.target, args.backend
                )
                async for signum in signals:
                    log.info("received %s: draining", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()  # the metrics server; the engine drains

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
