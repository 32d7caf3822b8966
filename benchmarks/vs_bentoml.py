"""errands over HTTP against a live BentoML server, in one run.

Run it::

    python benchmarks/vs_bentoml.py [--closed N] [--bulk B] [--threads T] [--repeat R]
                                    [--backend URL] [--bentoml PATH] [--no-bentoml]
    python benchmarks/vs_bentoml.py --quick       # seconds: a smoke run, figures meaningless

Three servers, each in its own process on 127.0.0.1 and a free port, all
started before the warm-up and stopped at the end by their PIDs:

* ``errands serve`` of a service with one sync no-op task, ``noop``, on the
  default server (hypercorn's trio worker, the engine in the server's loop);
* the same with ``--server uvicorn`` (the engine in its own trio thread);
* ``bentoml serve`` (BentoML from ``.venv-bentoml``, which ``make test``
  builds, or ``--bentoml PATH``) of a service with the same no-op as a
  ``@bentoml.task``.  Without it, only errands' figures are shown.

The errands servers use the memory backend by default (``--backend`` to
change it): this measures the HTTP path; ``benchmarks/disk.py`` measures the
durable one.  Each server runs in a folder of its own, so that
``--backend diskcache://./data`` gives each its own database (an absolute
path would make the two servers share one queue).  BentoML keeps its tasks
in SQLite, as it always does.  Every server runs in a session of its own,
as a deployed server does (``docs/decisions.md``).

Three workloads, the ones of issue 14, each a rate in tasks per second:

* **closed loop**: T client threads (default 16), each with its own client
  and connection, each repeating one task at a time until N tasks are done
  in all.  errands: ``SyncHTTPClient`` ``submit()`` -> ``wait()`` (long
  polls) -> ``get()``.  BentoML: ``httpx.Client`` submit, then its status
  polled every 5 ms until final, then its result.
* **bulk**: B tasks at once.  errands: ``submit_many`` of B items, then
  ``batch.results()`` (one streamed request that ends when every task is
  final).  BentoML: T threads submit B tasks between them, then poll each
  one's status every 5 ms until final, then read each result.
* **as completed**: the same B tasks, read the way most code does.
  errands: ``submit_many`` of B items, then ``get()`` of each task as
  ``errands.as_completed`` yields it (``POST /tasks/wait`` brings small
  results along).  BentoML: its bulk loop above (it has no many-task wait),
  measured once per round and shown for both.

Each measurement is warmed up once, then repeated R times in rounds (one of
each per round, so a noisy moment hits all of them); the tables show the
median and the min-max.  Ratios errands / BentoML are taken within each round,
then their median is shown, against the issue's targets.  The client threads
run in this process and share the machine's cores with the servers; the
errands servers' CPU per task (from ``/proc``) and the client's are printed
too: a client that needs more CPU per task than the server is the limit.  Benchmarks are
not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common
from _common import (
    NOISE_NOTE,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Columns,
    Series,
    ServeProcess,
    load,
    met,
    version,
)

import errands

perf_counter = time.perf_counter

#: Issue 14's targets, errands / BentoML.
TARGETS = {
    ("closed loop", "hypercorn"): 5.0,
    ("closed loop", "uvicorn"): 10.0,
    ("bulk", "hypercorn"): 20.0,
    ("bulk", "uvicorn"): 20.0,
    ("as completed", "hypercorn"): 20.0,
    ("as completed", "uvicorn"): 20.0,
}
WORKLOADS = ("closed loop", "bulk", "as completed")
ERRANDS_SERVERS = ("hypercorn", "uvicorn")
#: BentoML has no long polls: its status is polled this often.
POLL = 0.005
#: Seconds any one task may take before the run gives up.
TASK_TIMEOUT = 120.0
ROOT = Path(__file__).resolve().parents[1]

ERRANDS_SERVICE = textwrap.dedent(
    """
    import errands

    svc = errands.Service("bench")

    @svc.task
    def noop() -> int:
        return 0
    """
)

BENTOML_SERVICE = textwrap.dedent(
    """
    import bentoml

    @bentoml.service
    class Bench:
        @bentoml.task
        def noop(self) -> int:
            return 0
    """
)


class BentoServer:
    """``bentoml serve`` in its own process group (its workers go with it),
    on 127.0.0.1 and a free port; stopped by the PID of the process started."""

    def __init__(self, folder: Path, bentoml: Path) -> None:
        folder.mkdir()
        (folder / "service.py").write_text(BENTOML_SERVICE)
        self.url = f"http://127.0.0.1:{_common.free_port()}"
        self.log_path = folder / "server.log"
        env = {
            **os.environ,
            "BENTOML_HOME": str(folder / "home"),  # its task database and models, not ~/bentoml
            "BENTOML_DO_NOT_TRACK": "True",
        }
        argv = [str(bentoml), "serve", "service:Bench", "--host", "127.0.0.1"]
        argv += ["--port", self.url.rpartition(":")[2]]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                _common.guarded(argv),
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_common.SERVER_SESSION,  # its own process group, stopped with killpg
            )
        self.pid = self.process.pid

    def wait_ready(self) -> None:
        _common.wait_until_ready(self.process, self.url, str(self), self._tail)

    def _tail(self) -> str:
        try:
            return ":\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the group of the process started here, then SIGKILL."""
        if self.process.poll() is not None:
            return
        os.killpg(self.pid, signal.SIGTERM)
        try:
            # BentoML may take a while to stop its workers.
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()

    def __str__(self) -> str:
        return f"bentoml serve (PID {self.pid})"


def _threads(count: int, work: Callable[[int], None]) -> float:
    """Run ``work(i)`` in ``count`` threads started together; seconds until all end."""
    errors: list[BaseException] = []
    start = threading.Barrier(count + 1)

    def target(index: int) -> None:
        start.wait()
        try:
            work(index)
        except BaseException as exc:  # reported below, in this thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    began = perf_counter()
    for thread in threads:
        thread.join()
    elapsed = perf_counter() - began
    if errors:
        raise errors[0]
    return elapsed


def _threads_closing(clients: Sequence[Any], work: Callable[[int], None]) -> float:
    """:func:`_threads` with one thread per client; the clients are closed after."""
    try:
        return _threads(len(clients), work)
    finally:
        for client in clients:
            client.close()


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# ---------------------------------------------------------------- errands


def errands_closed(url: str, tasks: int, threads: int) -> float:
    shares = _shares(tasks, threads)
    clients = [errands.SyncHTTPClient(url) for _ in range(threads)]
    for client in clients:
        client.server_info()  # the schema is read once per client, before timing

    def work(index: int) -> None:
        endpoint = clients[index].noop
        for _ in range(shares[index]):
            task = endpoint.submit()
            task.wait(timeout=TASK_TIMEOUT)
            if task.get() != 0:
                raise RuntimeError("a task did not return its result")

    return tasks / _threads_closing(clients, work)


def errands_bulk(url: str, tasks: int, threads: int) -> float:
    with errands.SyncHTTPClient(url) as client:
        client.server_info()
        began = perf_counter()
        batch = client.noop.submit_many([{}] * tasks)
        results = list(batch.results())
        elapsed = perf_counter() - began
    bad = [r for r in results if r.status != "success"]
    if len(results) != tasks or bad:
        raise RuntimeError(f"{len(bad)} of {len(results)} tasks did not succeed")
    return tasks / elapsed


def errands_as_completed(url: str, tasks: int, threads: int) -> float:
    """``submit_many``, then ``get()`` of each task as ``as_completed`` yields it."""
    with errands.SyncHTTPClient(url) as client:
        client.server_info()
        began = perf_counter()
        batch = client.noop.submit_many([{}] * tasks)
        results = [t.get() for t in errands.as_completed(batch.tasks, timeout=TASK_TIMEOUT)]
        elapsed = perf_counter() - began
    if results != [0] * tasks:
        raise RuntimeError("a task did not return its result")
    return tasks / elapsed


# ---------------------------------------------------------------- BentoML


def _bento_submit(http: Any) -> str:
    response = http.post("/noop/submit", json={})
    response.raise_for_status()
    task_id: str = response.json()["task_id"]
    return task_id


def _bento_final(http: Any, task_id: str) -> bool:
    response = http.get("/noop/status", params={"task_id": task_id})
    response.raise_for_status()
    return response.json()["status"] not in ("pending", "in_progress")


def _bento_get(http: Any, task_id: str) -> None:
    response = http.get("/noop/get", params={"task_id": task_id})
    response.raise_for_status()
    if response.json() != 0:
        raise RuntimeError("a BentoML task did not return its result")


def bento_closed(url: str, tasks: int, threads: int) -> float:
    import httpx

    shares = _shares(tasks, threads)
    clients = [httpx.Client(base_url=url, timeout=TASK_TIMEOUT) for _ in range(threads)]

    def work(index: int) -> None:
        http = clients[index]
        for _ in range(shares[index]):
            task_id = _bento_submit(http)
            while not _bento_final(http, task_id):
                time.sleep(POLL)
            _bento_get(http, task_id)

    return tasks / _threads_closing(clients, work)


def bento_bulk(url: str, tasks: int, threads: int) -> float:
    import httpx

    shares = _shares(tasks, threads)
    clients = [httpx.Client(base_url=url, timeout=TASK_TIMEOUT) for _ in range(threads)]
    ids: list[list[str]] = [[] for _ in range(threads)]
    submitted = threading.Barrier(threads)

    def work(index: int) -> None:
        http = clients[index]
        mine = ids[index]
        for _ in range(shares[index]):
            mine.append(_bento_submit(http))
        submitted.wait()  # all submitted first, as submit_many does
        waiting = list(mine)
        while waiting:
            waiting = [t for t in waiting if not _bento_final(http, t)]
            if waiting:
                time.sleep(POLL)
        for task_id in mine:
            _bento_get(http, task_id)

    return tasks / _threads_closing(clients, work)


# ---------------------------------------------------------------- running


MEASURES: dict[tuple[str, str], Callable[[str, int, int], float]] = {
    ("closed loop", "errands"): errands_closed,
    ("bulk", "errands"): errands_bulk,
    ("as completed", "errands"): errands_as_completed,
    ("closed loop", "bentoml"): bento_closed,
    ("bulk", "bentoml"): bento_bulk,
}
#: Measurements that are another's, taken once per round: BentoML has no
#: many-task wait, so its "as completed" is its bulk loop (what a user writes).
REUSED = {("as completed", "bentoml"): "bulk"}


def find_bentoml(given: str | None) -> Path | None:
    """The ``bentoml`` command: ``--bentoml``, next to ``ERRANDS_BENTOML_PYTHON``
    (``make test`` sets it), or the repository's ``.venv-bentoml``."""
    candidates = [given] if given else []
    python = os.environ.get("ERRANDS_BENTOML_PYTHON")
    if python:
        candidates.append(str(Path(python).with_name("bentoml")))
    candidates.append(str(ROOT / ".venv-bentoml" / "bin" / "bentoml"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _standard_http_first() -> None:
    """Put this folder last on ``sys.path``: ``python benchmarks/vs_bentoml.py``
    puts it first, where benchmarks/http.py would shadow the standard
    library's ``http`` (which httpx imports)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here] + [here]


def main(argv: Sequence[str] | None = None) -> int:
    _standard_http_first()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--closed", type=int, default=1_600, help="closed-loop tasks (1600)")
    parser.add_argument("--bulk", type=int, default=640, help="bulk tasks (default 640)")
    parser.add_argument("--threads", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians shown (default 3)")
    parser.add_argument("--backend", default="memory://", help="errands' backend (memory://)")
    parser.add_argument("--bentoml", help="the bentoml command (default: .venv-bentoml)")
    parser.add_argument("--no-bentoml", action="store_true", help="errands' figures only")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 64 tasks each, 1 round, 8 threads"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.closed, args.bulk, args.repeat, args.threads = 64, 64, 1, 8
    if min(args.closed, args.bulk, args.threads, args.repeat) < 1:
        parser.error("counts must be positive")
    bentoml = None if args.no_bentoml else find_bentoml(args.bentoml)
    bentoml_version = "?"
    if bentoml is not None:
        bentoml_version = _bentoml_version(bentoml)

    print("errands over HTTP against a live BentoML server (closed loop and bulk)")
    extra = [f"hypercorn {version('hypercorn')}", f"uvicorn {version('uvicorn')} ({_parser()})"]
    extra.append(f"httpx {version('httpx')}")
    if bentoml is not None:
        extra.append(f"BentoML {bentoml_version}")
    print(_common.versions(extra))
    print(
        f"closed loop: {args.closed} tasks on {args.threads} client threads; bulk: "
        f"{args.bulk} tasks; {args.repeat} round(s); errands backend {args.backend}; "
        f"a sync no-op task; load average at start: {load()}"
    )
    print("each server in its own process on 127.0.0.1; the client threads in this one")
    print(NOISE_NOTE)
    if bentoml is None:
        why = "--no-bentoml" if args.no_bentoml else "no .venv-bentoml (make test builds it)"
        print(f"BentoML: not measured ({why}); errands' figures only")
    print()

    wall = perf_counter()
    rates = {
        (w, s): Series()
        for w in WORKLOADS
        for s in (*ERRANDS_SERVERS, *(("bentoml",) if bentoml else ()))
    }
    ratios = {(w, s): Series() for w in WORKLOADS for s in ERRANDS_SERVERS}
    cpu = {(w, s): Series() for w in WORKLOADS for s in ERRANDS_SERVERS}
    client = {key: Series() for key in rates}
    with tempfile.TemporaryDirectory(prefix="errands-vs-bentoml-") as tmp:
        folder = Path(tmp)
        servers: dict[str, ServeProcess | BentoServer] = {}
        try:
            for name in ERRANDS_SERVERS:
                where = folder / name
                where.mkdir()
                servers[name] = ServeProcess(
                    where,
                    source=ERRANDS_SERVICE,
                    module="bench_service.py",
                    backend=args.backend,
                    options=["--server", name],
                )
            if bentoml is not None:
                servers["bentoml"] = BentoServer(folder / "bentoml", bentoml)
            deadline = perf_counter() + START_TIMEOUT * 4  # BentoML starts slowly
            for server in servers.values():
                server.wait_ready()
                if perf_counter() > deadline:
                    raise RuntimeError("the servers did not start in time")
            for workload in WORKLOADS:  # warm-up
                for name, server in servers.items():
                    kind = "bentoml" if name == "bentoml" else "errands"
                    if (workload, kind) not in REUSED:
                        MEASURES[workload, kind](server.url, min(64, args.bulk), args.threads)
            for _ in range(args.repeat):
                one_round(servers, args, rates, ratios, cpu, client)
        finally:
            for server in servers.values():
                _stop(server)

    table = Columns(label=45, value=9)
    labels = {
        "hypercorn": "errands, hypercorn (trio worker)",
        "uvicorn": "errands, --server uvicorn",
        "bentoml": f"BentoML {bentoml_version}",
    }
    print(f"tasks per second (median of {args.repeat} [min-max])")
    for workload in WORKLOADS:
        for name in labels:
            if (workload, name) in rates:
                print(table.rate(f"{workload:<13}{labels[name]}", rates[workload, name]))
    print()
    if bentoml is not None:
        print("ratios errands / BentoML (median of per-round ratios [min-max])")
        for workload in WORKLOADS:
            for name in ERRANDS_SERVERS:
                series = ratios[workload, name]
                target = TARGETS[workload, name]
                note = f"target >= {target:g}: {met(series.median, target)}"
                print(table.ratio(f"ratio {workload}, {name}", series, note))
        print()
    if any(s.values for s in cpu.values()):
        print("errands server CPU, microseconds per task (median [min-max])")
        for workload in WORKLOADS:
            for name in ERRANDS_SERVERS:
                print(table.rate(f"{workload:<13}{labels[name]}", cpu[workload, name]))
        print()
    print("client CPU (this process, every thread), microseconds per task (median [min-max])")
    for workload in WORKLOADS:
        for name in labels:
            if (workload, name) in client:
                print(table.rate(f"{workload:<13}{labels[name]}", client[workload, name]))
    print()
    print(f"took {perf_counter() - wall:.1f} s; load average at end: {load()}")
    return 0


def one_round(
    servers: dict[str, ServeProcess | BentoServer],
    args: argparse.Namespace,
    rates: dict[tuple[str, str], Series],
    ratios: dict[tuple[str, str], Series],
    cpu: dict[tuple[str, str], Series],
    client: dict[tuple[str, str], Series],
) -> None:
    taken: dict[tuple[str, str], tuple[float, float]] = {}  # this round's rate, client µs
    for workload in WORKLOADS:
        count = args.closed if workload == "closed loop" else args.bulk
        got: dict[str, float] = {}
        for name, server in servers.items():
            kind = "bentoml" if name == "bentoml" else "errands"
            same = REUSED.get((workload, kind))
            if same is not None:
                got[name], spent = taken[same, name]
                client[workload, name].add(spent)
                rates[workload, name].add(got[name])
                continue
            _common.run(lambda: None)  # a garbage collection first, as every benchmark
            before = server.cpu_seconds() if isinstance(server, ServeProcess) else None
            mine = time.process_time()
            got[name] = MEASURES[workload, kind](server.url, count, args.threads)
            spent = (time.process_time() - mine) / count * 1e6
            taken[workload, name] = got[name], spent
            client[workload, name].add(spent)
            rates[workload, name].add(got[name])
            if isinstance(server, ServeProcess) and before is not None:
                after = server.cpu_seconds()
                if after is not None:
                    cpu[workload, name].add((after - before) / count * 1e6)
        if "bentoml" in got:
            for name in ERRANDS_SERVERS:
                ratios[workload, name].add(got[name] / got["bentoml"])


def _parser() -> str:
    """uvicorn's HTTP parser: httptools (C) when installed, else h11 (Python)."""
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def _stop(server: ServeProcess | BentoServer) -> None:
    if isinstance(server, BentoServer):
        server.stop()
        return
    code = _common.stop_process(server.process, str(server))
    if code not in (0, -signal.SIGTERM):  # uvicorn re-raises the SIGTERM it drained on
        print(f"{server} exited with {code}:\n{server.log_tail()}", file=sys.stderr)


def _bentoml_version(bentoml: Path) -> str:
    python = bentoml.with_name("python")
    try:
        done = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('bentoml'))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return done.stdout.strip() or "?"


if __name__ == "__main__":
    sys.exit(main())
