"""What the benchmark scripts share: figures across rounds, running, printing.

The scripts run as ``python benchmarks/NAME.py``, which puts this folder on
``sys.path``, so they ``import _common``.  Conventions they all follow: a
header with versions, cores and load; a warm-up; R rounds, one of each
measurement per round; the median and the min-max of each figure; ratios
taken within a round, then their median; nothing asserts a speed.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import inspect
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

import errands

__all__ = [
    "CLOCK_TICKS",
    "NOISE_NOTE",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "Columns",
    "Latency",
    "RedisServer",
    "Series",
    "ServeProcess",
    "check_success",
    "free_port",
    "guarded",
    "load",
    "met",
    "percentile",
    "process_cpu_seconds",
    "process_memory_kib",
    "run",
    "stop_process",
    "version",
    "versions",
    "wait_until_ready",
]

NOISE_NOTE = "(figures are noisy on a shared machine; the ratios are what count)"
#: Seconds a benchmark's server may take to start answering, and to stop after SIGTERM.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
#: Popen options for every server a benchmark starts: its own session, as a
#: server started from its own terminal or by a service manager has.  Linux
#: with ``sched_autogroup`` shares the CPU fairly between sessions, then
#: between the threads inside each: a server left in the session of a
#: benchmark that runs 16 client threads would get a sixteenth of the core
#: it competes for, and a reference started in its own session (BentoML's,
#: which needs a process group) would not.  Stopped by PID all the same.
SERVER_SESSION: dict[str, Any] = {"start_new_session": True}

#: Run as ``python -c GUARD PARENT_PID PROGRAM ARGS...``: asks Linux to send
#: SIGTERM to this process when the thread that started it ends
#: (``PR_SET_PDEATHSIG``, which ``exec`` keeps), then becomes PROGRAM.  A
#: benchmark killed outright (SIGKILL, a test's timeout) would otherwise
#: leave its servers running: they are in sessions of their own.  A fresh
#: interpreter does it, not ``preexec_fn``, which is unsafe in a parent
#: with threads.
_GUARD = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit("the benchmark that started this server is gone")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def guarded(argv: Sequence[str]) -> list[str]:
    """``argv`` to start a server that ends when the thread starting it
    ends, as the benchmark's main thread does (Linux; elsewhere ``argv``
    unchanged: stop the servers by hand after a benchmark killed outright)."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-c", _GUARD, str(os.getpid()), *argv]


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far, or None (no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_memory_kib(pid: int, field: str) -> int | None:
    """A memory figure of process ``pid`` from ``/proc/PID/status``, in KiB
    (``VmRSS``: resident now; ``VmHWM``: the peak resident so far), or None."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name == field:
                    return int(value.split()[0])
    except OSError:
        pass
    return None


def free_port() -> int:
    """A port of 127.0.0.1 free a moment ago (another program could take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class RedisServer:
    """A redis-server of our own on 127.0.0.1 (no persistence), stopped by its
    PID.  Exits the script when there is no ``redis-server`` on PATH.

    It imports redis-py, which this folder's redis.py shadows while the
    folder is first on ``sys.path``: a script that starts one moves the
    folder to the end of its path first."""

    def __init__(self, folder: Path) -> None:
        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server not found on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            guarded([binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                     "--appendonly", "no", "--dir", str(folder)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **SERVER_SESSION,
        )  # fmt: skip
        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.client.ping():
                    break
            except redis.exceptions.ConnectionError:
                pass
            if time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.02)

    def commands(self) -> int:
        """Commands Redis has run so far (but INFO)."""
        info = self.client.info("commandstats")
        return sum(int(v["calls"]) for k, v in info.items() if k != "cmdstat_info")

    def stop(self) -> None:
        self.client.close()
        stop_process(self.process, "redis-server")


def wait_until_ready(
    process: subprocess.Popen[Any], url: str, name: str, detail: Callable[[], str] = str
) -> None:
    """Until ``url``/readyz answers 200; RuntimeError (with ``detail()``) if
    the server process exits or ``START_TIMEOUT`` passes first."""
    import httpx  # not at the top: scripts that never serve run with this folder first on sys.path

    deadline = time.perf_counter() + START_TIMEOUT
    with httpx.Client(base_url=url, timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}{detail()}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{name} did not answer within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)


def stop_process(process: subprocess.Popen[Any], name: str) -> int:
    """SIGTERM by PID, then SIGKILL if it has not stopped within ``STOP_TIMEOUT``;
    returns its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"{name} ignored SIGTERM; killing it", file=sys.stderr)
            process.kill()
            process.wait()
    return process.returncode


class ServeProcess:
    """``errands serve`` in its own process, on 127.0.0.1 and a free port,
    serving ``source`` (written to ``folder/module``) with its log in
    ``folder/server.log``.

    ``options`` are more ``errands serve`` flags; ``env`` is the server's
    environment (default: this process's).  The server runs in ``folder``:
    a relative backend path (``diskcache://./data``) is its own.
    """

    def __init__(
        self,
        folder: Path,
        *,
        source: str,
        module: str,
        backend: str,
        options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        service = folder / module
        service.write_text(source)
        # ``errands serve`` takes a port, not a socket: a port free a moment
        # ago (another program could take it first; then the start fails).
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = folder / "server.log"
        argv = [
            sys.executable,
            "-m",
            "errands",
            "serve",
            f"{service}:svc",
            "--backend",
            backend,
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rpartition(":")[2],
            *options,
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                guarded(argv),
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                **SERVER_SESSION,
            )
        self.pid = self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self) -> None:
        wait_until_ready(self.process, self.url, str(self), lambda: f":\n{self.log_tail()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far, or None (no ``/proc``)."""
        return process_cpu_seconds(self.pid)

    def stop(self) -> int:
        """SIGTERM by PID, then SIGKILL if it has not stopped within
        ``STOP_TIMEOUT``; reports a non-zero exit on stderr and returns the code."""
        code = stop_process(self.process, str(self))
        if code != 0:
            print(f"{self} exited with {code}:\n{self.log_tail()}", file=sys.stderr)
        return code

    def __str__(self) -> str:
        return f"errands serve (PID {self.pid})"


class Series:
    """Values of one figure across the repeats."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def span(self, fmt: str) -> str:
        if len(self.values) < 2:
            return ""
        return f"[{format(min(self.values), fmt)}-{format(max(self.values), fmt)}]"


class Latency:
    """The p50 and p99 of one latency figure across the repeats, in microseconds."""

    def __init__(self) -> None:
        self.p50 = Series()
        self.p99 = Series()

    def add(self, seconds: Sequence[float]) -> None:
        """Add one round's samples (in seconds)."""
        self.p50.add(percentile(seconds, 50) * 1e6)
        self.p99.add(percentile(seconds, 99) * 1e6)


@attrs.frozen
class Columns:
    """Column widths of one printed table: the label, each value, each [min-max]."""

    label: int
    value: int
    span: int = 13

    def rate(self, label: str, series: Series, note: str = "") -> str:
        """A row of a rate (thousands separated, no decimals), with an optional note."""
        value = f"{series.median:>{self.value},.0f}"
        span = series.span(",.0f")
        return f"  {label:<{self.label}}{value}  {span:<{self.span}} {note}".rstrip()

    def ratio(self, label: str, series: Series, note: str = "") -> str:
        """A row of a ratio (two decimals), with an optional note after the span."""
        return (
            f"  {label:<{self.label}}{series.median:>{self.value}.2f}  "
            f"{series.span('.2f'):<{self.span}} {note}"
        ).rstrip()

    def figure(self, label: str, series: Series, unit: str) -> str:
        """A row of a small figure (two decimals) in ``unit``."""
        return (
            f"  {label:<{self.label}}{series.median:>{self.value}.2f}  "
            f"{series.span('.2f'):<{self.span}} {unit}"
        ).rstrip()

    def latency_header(self) -> str:
        return f"  {'':<{self.label}}{'p50':>{self.value}}  {'':<{self.span}}{'p99':>{self.value}}"

    def latency(self, label: str, latency: Latency) -> str:
        """A row of a latency: p50 and p99, each with its span."""
        p50, p99 = latency.p50, latency.p99
        return (
            f"  {label:<{self.label}}{p50.median:>{self.value},.0f}  "
            f"{p50.span(',.0f'):<{self.span}}{p99.median:>{self.value},.0f}  {p99.span(',.0f')}"
        ).rstrip()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def check_success(statuses: Sequence[errands.TaskStatus]) -> None:
    """Raise unless every task succeeded: a benchmark of failing tasks measures nothing."""
    bad = [s for s in statuses if s is not errands.TaskStatus.SUCCESS]
    if bad:
        raise RuntimeError(f"{len(bad)} tasks did not succeed (first: {bad[0].value})")


def met(value: float, target: float) -> str:
    return "met" if value >= target else "NOT met"


def run(func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` after a garbage collection; under ``trio.run`` when it is async."""
    gc.collect()
    if inspect.iscoroutinefunction(func):
        return trio.run(func, *args)
    return func(*args)


def version(name: str) -> str:
    """The installed version of distribution ``name``, or ``?``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def versions(extra: Iterable[str] = ()) -> str:
    """The header's platform line: Python, trio, errands, ``extra``, cores, system."""
    errands_version = version("errands")
    if errands_version == "?":
        errands_version = getattr(errands, "__version__", "?")
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    parts = [
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"trio {trio.__version__}",
        f"errands {errands_version}",
        *extra,
        f"{cores} cores ({usable} usable)",
        f"{platform.system()} {platform.machine()}",
    ]
    return ", ".join(parts)


def load() -> str:
    """The load averages (1, 5, 15 minutes), or ``n/a``."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def huey_app(huey: Any, sqlite: str | None = None) -> Any:
    """huey's reference queue: ``MemoryHuey``, or ``SqliteHuey`` at ``sqlite``
    with an fsync per commit (synchronous=FULL, as errands' default)."""
    if sqlite is None:
        return huey.MemoryHuey("bench", store_none=True)
    return huey.SqliteHuey("bench", filename=sqlite, fsync=True, store_none=True)


def huey_enqueue_latency(huey: Any, n: int, sqlite: str) -> list[float]:
    """Seconds of N ``SqliteHuey`` enqueues at ``sqlite``, one at a time, of
    a no-op task (no consumer: the enqueue alone)."""
    app = huey_app(huey, sqlite)
    task = app.task()(_huey_noop)
    latencies = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            task()
            latencies.append(time.perf_counter() - start)
    finally:
        app.storage.close()
    return latencies


def _huey_noop() -> None:
    pass


@contextlib.contextmanager
def huey_consumer(app: Any, workers: int) -> Iterator[Any]:
    """huey's consumer for ``app`` with ``workers`` threads, running; stopped
    on exit, and the signal handlers it installs put back.  Its idle poll is
    short (huey's default backs off to 10 s), so that workers idle before a
    burst do not sleep through its start."""
    consumer = app.create_consumer(
        workers=workers,
        worker_type="thread",
        periodic=False,
        initial_delay=0.001,
        max_delay=0.05,
        check_worker_health=False,
    )
    names = ("SIGINT", "SIGTERM", "SIGHUP")  # what Consumer.start() takes over
    saved = {s: signal.getsignal(s) for s in (getattr(signal, n, None) for n in names) if s}
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop(graceful=True)
        for signum, handler in saved.items():
            signal.signal(signum, handler)
