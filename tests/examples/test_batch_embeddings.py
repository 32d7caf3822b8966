"""examples/batch_embeddings.py embeds a JSON Lines file in batches, in input order."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .conftest import RunExample

pytestmark = pytest.mark.realtime


def _vector(text: str) -> list[float]:
    return [round(b / 255, 4) for b in hashlib.sha256(text.encode()).digest()[:4]]


def test_a_file_is_embedded_in_few_calls_and_in_order(
    run_example: RunExample, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs.jsonl"
    texts = [f"line {i}" for i in range(300)]
    lines = [json.dumps({"text": t}) for t in texts]
    lines.insert(7, json.dumps({"text": 5}))  # not a string: refused at submit, alone
    inputs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    done = run_example("batch_embeddings.py", "--inputs", str(inputs), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    printed = done.stdout.splitlines()
    assert re.fullmatch(r"submitted 300 texts as batch [A-Za-z0-9_-]{22}", printed[0])
    assert printed[1].startswith("line 8 rejected: ")
    assert "$.texts[0]" in printed[1]
    assert "statuses: success=300 failure=0" in printed
    calls = re.search(r"the model ran (\d+) calls for 300 texts", done.stdout)
    assert calls is not None, done.stdout
    assert int(calls.group(1)) <= 300 // 8  # batched: far fewer calls than texts
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in results] == [i for i in range(301) if i != 7]
    expected = [_vector(t) for t in texts]
    assert [r["embedding"] for r in results] == expected
