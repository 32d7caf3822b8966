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
