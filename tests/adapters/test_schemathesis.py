"""schemathesis, with every check, against ``/openapi.json`` of a real ``errands serve``.

The service (``catalogue_service.py``) has every kind of argument and result
(ints, floats, strings, lists, nested attrs and dataclass values, enums,
optionals, bytes taken as multipart files, a PIL image, bytes and image
results, a task that fails).  schemathesis runs as a command from its own
venv (``ERRANDS_SCHEMATHESIS``: its ``schemathesis`` executable, made by
``make test``), deterministic and bounded: a few examples per operation and a
short ``--max-wait`` on the server, so no request is held long.

What the document says in words is told to schemathesis in
``schemathesis.toml`` (``get``'s documented 500 and 410) and
``schemathesis_hooks.py`` (real images, idempotency keys of their own).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.adapters.test_cli import serving

HERE = Path(__file__).resolve().parent
SCHEMATHESIS = os.environ.get("ERRANDS_SCHEMATHESIS")
TARGET = f"{HERE / 'catalogue_service.py'}:svc"

pytestmark = [
    pytest.mark.realtime,
    pytest.mark.slow,
    pytest.mark.skipif(
        not SCHEMATHESIS,
        reason="set ERRANDS_SCHEMATHESIS (make test does) to a schemathesis executable",
    ),
]


def run_schemathesis(base: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert SCHEMATHESIS is not None
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": str(HERE),
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [
            SCHEMATHESIS,
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "--generation-deterministic",  # and so no example database
            "--max-examples",
            "5",
            "--request-timeout",
            "5",
            "--no-color",
            *extra,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_schemathesis_finds_no_failures(tmp_path: Path) -> None:
    args = [TARGET, "--backend", "memory://", "--max-wait", "0.5"]
    with serving(args, tmp_path) as (_, base):
        start = time.monotonic()
        result = run_schemathesis(base, tmp_path)
        took = time.monotonic() - start
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
    assert " passed" in summary and "failure" not in summary, summary
    print(f"schemathesis took {took:.1f} s\n{summary}")
