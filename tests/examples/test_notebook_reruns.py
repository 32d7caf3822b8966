"""Notebook habits in a real Jupyter kernel: cells run again, a second
``errands.start``, and submitting without an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .test_notebook import kernel_dir, nbformat, run_in_kernel  # noqa: F401 - fixture

CELLS = {
    "define-service": "import errands\nsvc = errands.Service('notebook')",
    "define-task": ("@svc.task\ndef greet(name: str) -> str:\n    return 'v1 ' + name"),
    "start": "client = errands.start(svc)\nprint(client.greet.submit(name='a').wait(timeout=30))",
    # The same cell, edited and run again while the engine runs.
    "define-task-again": ("@svc.task\ndef greet(name: str) -> str:\n    return 'v2 ' + name"),
    "start-again": "second = errands.start(svc)",
    "restart": (
        "second.close()\nclient.close()\nclient = errands.start(svc)\n"
        "task = client.greet.submit(name='b')\ntask.wait(timeout=30)\nprint(task.get())"
    ),
    "no-engine": (
        "try:\n    svc.greet.submit(name='c')\nexcept AttributeError as exc:\n    print(exc)"
    ),
    "close": "client.close()",
}


def _stream(outputs: list[dict[str, Any]], name: str) -> str:
    return "".join(o.get("text", "") for o in outputs if o.get("name") == name)


@pytest.mark.realtime
def test_cells_run_again_are_helped_not_refused(kernel_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "py"}
    for cell_id, source in CELLS.items():
        cell = nbformat.v4.new_code_cell(source)
        cell["id"] = cell_id
        nb.cells.append(cell)
    outputs = run_in_kernel(nb, kernel_dir, tmp_path)
    for cell_id, cell_outputs in outputs.items():
        for output in cell_outputs:
            assert output["output_type"] != "error", (cell_id, output)
    assert "success" in _stream(outputs["start"], "stdout")
    redefined = _stream(outputs["define-task-again"], "stderr")
    assert "redefined while an engine runs the old definition" in redefined
    second = _stream(outputs["start-again"], "stderr")
    assert "already running an engine for service 'notebook'" in second
    assert "own memory backend" in second and "client.close()" in second
    assert _stream(outputs["restart"], "stdout") == "v2 b\n"
    hint = _stream(outputs["no-engine"], "stdout")
    assert "client.greet.submit" in hint and "errands.start(svc)" in hint
