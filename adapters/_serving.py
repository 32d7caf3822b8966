"""How ``errands serve`` runs a server: hypercorn's trio worker or uvicorn, in
one process or N, and a drain on SIGINT/SIGTERM in every case.

A drain here means: the server stops accepting, the app's held requests (long
polls, ``POST /tasks/wait``, event streams) answer at once
(:meth:`~errands.adapters.asgi.ErrandsApp.drain`), requests in flight finish
within the graceful timeout, then the lifespan ends and the engine hands
unfinished tasks back.  With ``--workers N`` the N worker processes share one
listening socket that the parent opened, as ``hypercorn.run`` and uvicorn's
own supervisor do; they are started here rather than by those supervisors
because theirs cannot tell the app to drain.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import trio

from . import _hypercorn_send
from ._logs import LOG_FORMAT, log_format, setup_logging

__all__ = ["LOG_FORMAT", "serve_hypercorn", "serve_uvicorn"]

log = logging.getLogger("errands.cli")
#: The environment variable that tells a server process its number (0..N-1).
PROCESS_VARIABLE = "ERRANDS_PROCESS"


def serve_hypercorn(args: argparse.Namespace, application: str) -> int:
    """Serve ``application`` (a ``module:attr`` path) with hypercorn's trio worker."""
    from hypercorn.config import Config

    config = Config()
    config.application_path = application
    config.bind = [f"{args.host}:{args.port}"]
    config.worker_class = "trio"
    config.graceful_timeout = args.graceful_timeout
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our handler, once
    try:
        metrics = _metrics_sockets(args)
    except OSError as exc:
        print(f"errands: --metrics-port: {exc}", file=sys.stderr)
        return 2
    if args.workers == 1:
        if metrics[0] is not None:
            # hypercorn binds its own from config.bind (the check above said it can).
            metrics[0].close()
            config.bind.append(_address(args.host, args.metrics_port))
        return _hypercorn_here(config)
    sockets = config.create_sockets()
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    try:
        return _supervise(
            [
                context.Process(
                    target=_hypercorn_process, args=(config, sockets, stop, index, metrics[index])
                )
                for index in range(args.workers)
            ],
            stop.set,
        )
    finally:
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets, *metrics]:
            if sock is not None:
                sock.close()


def serve_uvicorn(args: argparse.Namespace, application: str) -> int:
    """Serve ``application`` with uvicorn (the engine in its own trio thread)."""
    try:
        import uvicorn
    except ImportError:
        print("errands: --server uvicorn needs: pip install 'errands[uvicorn]'", file=sys.stderr)
        return 2
    # In JSON, uvicorn's own lines go through errands' handler (as one JSON
    # object per line too) instead of uvicorn's text formatter.
    logging_config: Any = {} if log_format() == "text" else {"log_config": None}
    config = uvicorn.Config(
        application,
        host=args.host,
        port=args.port,
        lifespan="on",
        # As under hypercorn: no line per request (it cost more server CPU
        # than errands' own routing; a proxy in front keeps access logs).
        access_log=False,
        timeout_graceful_shutdown=int(args.graceful_timeout),
        **logging_config,
    )
    try:
        metrics = _metrics_sockets(args)
    except OSError as exc:
        print(f"errands: --metrics-port: {exc}", file=sys.stderr)
        return 2
    if args.workers == 1:
        server = _draining_uvicorn(config, worker=False)
        if metrics[0] is None:
            server.run()
        else:
            server.run(sockets=[config.bind_socket(), metrics[0]])
        return 0 if server.started and not _engine_died() else 1
    sock = config.bind_socket()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_uvicorn_process, args=(config, sock, index, metrics[index]))
        for index in range(args.workers)
    ]

    def stop() -> None:
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    try:
        return _supervise(processes, stop)
    finally:
        for one in [sock, *metrics]:
            if one is not None:
                one.close()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _metrics_sockets(args: argparse.Namespace) -> list[socket.socket | None]:
    """With ``--metrics-port P``, a socket bound to P+i for each process i
    (bound here, so a port in use fails at once, in this process)."""
    if args.metrics_port is None:
        if args.workers > 1:
            log.info(
                "/metrics on the shared port answers from one process at a time (labelled "
                "process=...); --metrics-port P gives each process its own port to scrape"
            )
        return [None] * args.workers
    sockets: list[socket.socket | None] = []
    for index in range(args.workers):
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        address = _address(args.host, args.metrics_port + index)
        try:
            sock.bind((args.host, args.metrics_port + index))
        except OSError as exc:
            sock.close()
            for other in sockets:
                assert other is not None
                other.close()
            raise OSError(f"cannot listen on {address}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        sock.set_inheritable(True)
        sockets.append(sock)
    for index in range(args.workers):
        address = _address(args.host, args.metrics_port + index)
        log.info("process %d: metrics on http://%s/metrics", index, address)
    return sockets


def _supervise(processes: Sequence[BaseProcess], stop: Callable[[], None]) -> int:
    """Start the worker processes, turn SIGINT/SIGTERM into one ``stop()``,
    and wait for them all; one that fails stops the others.  Returns 0, or 1
    when a worker failed."""
    # Started with SIGINT ignored, which they inherit: a Ctrl-C in a terminal
    # reaches the whole process group, and only this parent should act on it.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for process in processes:
            process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    stopped = False

    def stop_once(signum: int | None = None, _: object = None) -> None:
        nonlocal stopped
        if signum is not None:
            log.info("received %s: draining", signal.Signals(signum).name)
        if not stopped:
            stopped = True
            stop()

    signal.signal(signal.SIGINT, stop_once)
    signal.signal(signal.SIGTERM, stop_once)
    code = 0
    remaining = list(processes)
    while remaining:
        ended = multiprocessing.connection.wait([p.sentinel for p in remaining])
        for process in [p for p in remaining if p.sentinel in ended]:
            process.join()
            remaining.remove(process)
            # uvicorn re-raises the stop signal as it exits: not a failure.
            by_stop = stopped and process.exitcode == -signal.SIGTERM
            if process.exitcode and not by_stop:
                code = 1
                stop_once()
    return code


# ---------------------------------------------------------------- hypercorn


def _hypercorn_here(config: Any) -> int:
    """One process: hypercorn's trio worker, the engine in the same loop."""
    import gc

    import hypercorn.trio

    from ._served import app

    # A server makes many short-lived objects per request; collecting the
    # young generation less often measured 10% more submits/s under hypercorn.
    gc.set_threshold(50_000, 50, 100)
    _hypercorn_send.install()  # head and body of an answer in one send

    async def until_signalled() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: draining", signal.Signals(signum).name)
                # Held long polls and event streams answer now: hypercorn waits
                # for in-flight requests before it ends the lifespan.
                app.drain()
                return

    async def serve() -> None:
        await hypercorn.trio.serve(app, config, shutdown_trigger=until_signalled)  # type: ignore[arg-type]

    trio.run(serve)
    return 1 if _engine_died() else 0


def _engine_died() -> bool:
    from ._served import engine_died

    return engine_died()


def _hypercorn_process(
    config: Any, sockets: Any, stop: Any, index: int, metrics: socket.socket | None
) -> None:
    """Process ``index`` of ``--workers N``: stops (and drains) when ``stop``,
    a multiprocessing event, is set; ``metrics``: its own metrics socket."""
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import check_multiprocess_shutdown_event, wrap_app

    os.environ[PROCESS_VARIABLE] = str(index)  # read by _served, for the metrics
    setup_logging()
    _hypercorn_send.install()  # head and body of an answer in one send
    from ._served import app

    if metrics is not None:
        sockets.insecure_sockets.append(metrics)
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)

    async def until_stopped() -> None:
        await check_multiprocess_shutdown_event(stop, trio.sleep)
        app.drain()

    wrapped = wrap_app(app, config.wsgi_max_body_size, mode="asgi")  # type: ignore[arg-type]
    trio.run(
        partial(worker_serve, wrapped, config, sockets=sockets, shutdown_trigger=until_stopped)
    )
    if _engine_died():
        sys.exit(1)


# ---------------------------------------------------------------- uvicorn


def _draining_uvicorn(config: Any, *, worker: bool) -> Any:
    """A ``uvicorn.Server`` whose stop signal also drains the app's held
    requests (uvicorn waits for open requests before it ends the lifespan).
    A ``worker`` of several leaves SIGINT to the parent."""
    import uvicorn

    from ._served import app

    class DrainingServer(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def serve(self, sockets: Any = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if worker and sig == signal.SIGINT:
                return  # the parent got it too, and sends SIGTERM
            super().handle_exit(sig, frame)
            if self.loop is not None:
                log.info("received %s: draining", signal.Signals(sig).name)
                self.loop.call_soon_threadsafe(app.drain)  # on the loop, as drain() asks

    return DrainingServer(config)


def _uvicorn_process(config: Any, sock: Any, index: int, metrics: socket.socket | None) -> None:
    """Process ``index`` of ``--server uvicorn --workers N``; stops (and
    drains) on SIGTERM from the parent; ``metrics``: its own metrics socket."""
    os.environ[PROCESS_VARIABLE] = str(index)  # read by _served, for the metrics
    config.configure_logging()
    setup_logging()
    sockets = [sock] if metrics is None else [sock, metrics]
    _draining_uvicorn(config, worker=True).run(sockets=sockets)
    if _engine_died():
        sys.exit(1)
