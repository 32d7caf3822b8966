"""The servers the benchmarks start run as deployed servers do: in their own
session, so that Linux's per-session CPU sharing (``sched_autogroup``) puts
them on the footing of the reference servers, not under the benchmark's
client threads.  A smoke test: nothing here is timed."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SERVICE = """
import errands

svc = errands.Service("bench")

@svc.task
def noop() -> int:
    return 0
"""


def _load(name: str) -> ModuleType:
    """A benchmark module by its path: the folder is not put first on
    ``sys.path``, where its http.py and redis.py would shadow real packages."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.realtime
def test_errands_serve_runs_in_its_own_session(tmp_path: Path) -> None:
    common = _load("_common")
    server = common.ServeProcess(
        tmp_path, source=SERVICE, module="bench_service.py", backend="memory://"
    )
    try:
        server.wait_ready()
        assert os.getsid(server.pid) == server.pid != os.getsid(0)
        # In its own folder: a relative backend path is this server's own.
        if Path("/proc/self/cwd").exists():  # Linux
            assert Path(os.readlink(f"/proc/{server.pid}/cwd")) == tmp_path.resolve()
    finally:
        assert server.stop() == 0, server.log_tail()


@pytest.mark.realtime
def test_http_benchmark_server_runs_in_its_own_session() -> None:
    http = _load("http")
    server = http.Server("hypercorn", "errands")
    try:
        server.wait_ready()
        assert os.getsid(server.pid) == server.pid != os.getsid(0)
    finally:
        server.stop()


#: A benchmark in miniature: starts one ``errands serve`` the way the
#: benchmarks do, prints its PID, then waits to be killed.
_PARENT = """
import sys, time
from pathlib import Path
sys.path.append({benchmarks!r})
import _common
server = _common.ServeProcess(
    Path({folder!r}), source={source!r}, module="bench_service.py", backend="memory://"
)
server.wait_ready()
print(server.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaped counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.realtime
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_benchmark_killed_outright_leaves_no_server_running(tmp_path: Path) -> None:
    """A benchmark's servers run in sessions of their own; killed with
    SIGKILL (as a test's timeout does), the benchmark must not leave them
    running: each is told by the kernel when the benchmark is gone."""
    import signal
    import subprocess
    import time

    code = _PARENT.format(benchmarks=str(BENCHMARKS), folder=str(tmp_path), source=SERVICE)
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    server_pid = None
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert not _gone(server_pid)
        parent.kill()  # SIGKILL: no cleanup of its own runs
        parent.wait(15)
        deadline = time.monotonic() + 20  # a bound on a hang, not a timing
        while not _gone(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(server_pid), "the server outlived the benchmark that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(15)
        if parent.stdout is not None:
            parent.stdout.close()
        if server_pid is not None and not _gone(server_pid):
            os.kill(server_pid, signal.SIGKILL)  # ours: started by the parent above
