"""Helpers for the tests of ``examples/``: run one as a script, or import it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

RunExample = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_example(tmp_path: Path) -> RunExample:
    """Run ``examples/<name>`` as a real script, in ``tmp_path``, and return the result.

    ``-W error`` makes any warning the example triggers fail it, as in the test suite.
    """

    def run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def _import(name: str) -> Iterator[ModuleType]:
    path = EXAMPLES / f"{name}.py"
    module_name = f"_errands_example_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[module_name]


@pytest.fixture(scope="module")
def image_generation() -> Iterator[ModuleType]:
    """``examples/image_generation.py``, imported from its file (it is not a package)."""
    yield from _import("image_generation")
