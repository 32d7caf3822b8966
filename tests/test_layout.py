"""The shape of the package: import direction, public names, and the wheel."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import errands
from errands import backends

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_ENGINE = {"hypercorn", "httpx", "diskcache", "redis", "uvicorn", "starlette", "anyio"}


def imported_modules(folder: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_engine_imports_no_backend_adapter_or_network_library() -> None:
    for path, names in imported_modules("engine").items():
        for name in names:
            top = name.split(".")[0]
            assert top not in FORBIDDEN_IN_ENGINE, f"{path} imports {name}"
            assert not name.startswith(("errands.backends", "errands.adapters")), (
                f"{path} imports {name}"
            )


def test_backends_import_no_adapter() -> None:
    for path, names in imported_modules("backends").items():
        assert not any(n.startswith("errands.adapters") for n in names), path


def test_public_names_are_sorted_and_real() -> None:
    assert errands.__all__ == sorted(errands.__all__)
    for name in errands.__all__:
        assert getattr(errands, name) is not None
    assert backends.__all__ == sorted(backends.__all__)


def test_backend_urls_resolve_without_static_imports() -> None:
    from errands._registry import resolve_backend

    assert type(resolve_backend(None)).__name__ == "MemoryBackend"
    assert type(resolve_backend("memory://")).__name__ == "MemoryBackend"
    with pytest.raises(errands.BackendError, match="no scheme"):
        resolve_backend("just-a-path")
    with pytest.raises(errands.BackendError, match="takes no path"):
        resolve_backend("memory://somewhere")
    with pytest.raises(TypeError):
        resolve_backend(42)


@pytest.mark.slow
def test_the_wheel_installs_and_imports_in_a_fresh_venv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    [wheel] = wheels.glob("errands-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "errands/py.typed" in names
    assert "errands/backends/memory.py" in names
    assert "errands/adapters/__init__.py" in names
    for page in ("dashboard.html", "dashboard.js", "dashboard.css"):  # package data
        assert f"errands/adapters/{page}" in names
    assert not [n for n in names if n.split("/")[0] in ("engine", "backends", "adapters")]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, env=env, cwd=tmp_path
    )
    check = (
        "import errands, errands.backends, errands.adapters, errands.backends.memory, pathlib;"
        "import trio;"
        "svc = errands.Service('w');"
        "svc.task(lambda: 1, name='one');"
        "c = errands.start(svc); t = c.one.submit(); print(t.wait(timeout=10).value, t.get());"
        "c.close();"
        "print(pathlib.Path(errands.__file__).parent.name, 'site-packages' in errands.__file__)"
    )
    out = subprocess.run(
        [str(python), "-c", check],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.stdout.split() == ["success", "1", "errands", "True"]
