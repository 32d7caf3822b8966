"""examples/quickstart.py runs as a plain script and shows what it claims."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .conftest import RunExample

pytestmark = pytest.mark.realtime

TASK_ID = r"[A-Za-z0-9_-]{22}"


def test_quickstart_runs_and_prints_each_step(run_example: RunExample) -> None:
    done = run_example("quickstart.py")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    lines = out.splitlines()

    assert re.search(rf"^submitted add\(a=1, b=2\) as task {TASK_ID}$", out, re.M)
    assert "add finished: success" in lines
    assert "add result: 3" in lines

    assert "slow_square result: 49" in lines
    assert "slow_square info: status=success attempt=1 progress=1.0 message='done'" in lines
    ran = re.search(r"^slow_square ran for (\d+\.\d+) s$", out, re.M)
    assert ran is not None and float(ran.group(1)) >= 0.09  # four sleeps of 0.025 s

    # Every bad field is named, each with its own reason.
    assert "rejected add(a='1', b=2.5, c=3): 3 bad fields" in lines
    assert "  $.a: expected an integer, got string" in lines
    assert "  $.b: expected an integer, got number" in lines
    assert "  $.c: unknown argument" in lines

    second = re.search(rf"^second slow_square ({TASK_ID}) is pending$", out, re.M)
    assert second is not None, out
    assert "cancel second slow_square: cancelled" in lines
    assert "get() after cancel: TaskCancelled" in lines
    assert "first slow_square result: 9" in lines

    retried = re.search(rf"^retried as task ({TASK_ID}) \(retry_of=({TASK_ID})\)$", out, re.M)
    assert retried is not None, out
    assert retried.group(2) == second.group(1)
    assert retried.group(1) != second.group(1)
    assert "retry result: 16" in lines

    assert lines[-1] == "engine stopped"
