"""examples/notebook.ipynb runs top to bottom in a real Jupyter kernel."""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES

with warnings.catch_warnings():
    # jupyter_core 5.1.2 up to 5.8 warns when ``jupyter_core.paths`` is first
    # imported unless JUPYTER_PLATFORM_DIRS is set; the versions installed now
    # do not.  Only that one warning, only during these imports, is ignored:
    # anything else jupyter says still fails the run (filterwarnings = error).
    warnings.filterwarnings(
        "ignore",
        message="Jupyter is migrating its paths to use standard platformdirs",
        category=DeprecationWarning,
    )
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    kernelspec = pytest.importorskip("jupyter_client.kernelspec")
    manager = pytest.importorskip("jupyter_client.manager")

NOTEBOOK = EXAMPLES / "notebook.ipynb"
TASK_ID = r"[A-Za-z0-9_-]{22}"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private ``python3`` kernelspec that runs *this* interpreter.

    Why not the installed kernelspecs: which ``python3`` spec wins depends on
    the machine (``JUPYTER_PATH``, the user's ``~/.local/share/jupyter``, the
    venv's ``share/jupyter``), and a user-level spec may point at another
    Python without errands.  Installing one into the venv
    (``ipykernel install --sys-prefix``) would make the tests write outside
    their temporary directory, and setting ``JUPYTER_PATH`` leaks into every
    other test of the session.  A spec in a temporary directory, with
    ``sys.executable`` spelled out and handed to a kernel manager of our own,
    depends on nothing but the interpreter running pytest.
    """
    spec_dir = tmp_path_factory.mktemp("kernels") / "python3"
    spec_dir.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "errands tests (venv python)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return spec_dir.parent


def run_in_kernel(nb: Any, kernel_dir: Path, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """Run ``nb`` top to bottom in a fresh kernel of ``kernel_dir``'s spec, in
    ``workdir``; its outputs by cell id (the kernel is shut down after)."""
    km = manager.AsyncKernelManager(
        kernel_name="python3",
        kernel_spec_manager=kernelspec.KernelSpecManager(kernel_dirs=[str(kernel_dir)]),
    )
    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    # A kernel manager passed in is not shut down by default: ask for it.
    client.execute(cleanup_kc=True)
    assert not km.has_kernel
    return _outputs_by_id(nb)


def _text(output: dict[str, Any], mime: str) -> str:
    value = output.get("data", {}).get(mime, "")
    return "".join(value) if isinstance(value, list) else str(value)


def _outputs_by_id(nb: Any) -> dict[str, list[dict[str, Any]]]:
    return {cell["id"]: cell.get("outputs", []) for cell in nb.cells}


def test_notebook_is_stored_clean_and_valid() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["kernelspec"]["language"] == "python"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [], f"cell {cell.id} is stored with outputs"
        assert cell.execution_count is None, f"cell {cell.id} is stored with a count"
    assert nb.cells[0].cell_type == "markdown"


@pytest.fixture(scope="module")
def executed(
    kernel_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """The notebook's outputs after a run in a fresh kernel, by cell id."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    yield run_in_kernel(nb, kernel_dir, tmp_path_factory.mktemp("notebook"))


@pytest.mark.realtime
def test_notebook_runs_in_a_real_kernel(executed: dict[str, list[dict[str, Any]]]) -> None:
    for cell_id, outputs in executed.items():
        for output in outputs:
            assert output["output_type"] != "error", (cell_id, output)
            assert output.get("name") != "stderr", (cell_id, output)

    (started,) = executed["start-engine"]
    assert "SyncClient" in _text(started, "text/plain")
    assert "greet" in _text(started, "text/plain")

    (submitted,) = executed["submit"]
    match = re.fullmatch(rf"submitted ({TASK_ID})\n", submitted["text"])
    assert match is not None, submitted
    task_id = match.group(1)

    # The handle as a cell's value is shown through Task._repr_html_.
    (shown,) = executed["show-task"]
    html = _text(shown, "text/html")
    assert task_id in html
    assert "greet" in html
    # Whichever status the task had when the cell ran, by its wire name.
    assert re.search(r">(pending|in_progress|success)<", html), html
    assert f"<Task greet {task_id}>" in _text(shown, "text/plain")

    (waited,) = executed["wait"]
    assert "'success'" in _text(waited, "text/plain")

    (result,) = executed["get-result"]
    assert result["text"] == "Hello, notebook! Hello, notebook! Hello, notebook!\n1.0\n"

    assert executed["close"] == []
