"""Batch inference: embed a JSON Lines file of texts through a batching model.

Run it with ``python examples/batch_embeddings.py`` (or pass ``--inputs
FILE.jsonl`` with one ``{"text": ...}`` object per line, and ``--out``).

The "model" stands for a GPU forward pass: every call costs a fixed 20 ms
however many texts it gets, plus a little per text.  Declared
``batchable=True``, the engine merges waiting tasks into calls of up to
``max_batch_size`` texts, so a file of a thousand texts takes a few dozen
calls instead of a thousand.  Each line is still its own task, with its own
id, status and result.

The texts go in with one ``submit_many`` (written in chunks, not one write
per line), and the results come back in input order, written to a JSON Lines
file as they are ready.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import errands

#: Seconds every call of the model costs, and each text in it.
CALL_COST = 0.020
TEXT_COST = 0.0002


@errands.service
class Embedder:
    """One model, loaded once per engine start, called one batch at a time."""

    calls = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        self.dimensions = 4  # a real model would load its weights here

    @errands.task(batchable=True, max_batch_size=64, max_latency_ms=10)
    def embed(self, texts: list[str]) -> list[list[float]]:
        """One forward pass over a batch of texts: one vector per text."""
        with Embedder.lock:
            Embedder.calls += 1
        time.sleep(CALL_COST + TEXT_COST * len(texts))
        return [self._vector(text) for text in texts]

    def _vector(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        return [round(b / 255, 4) for b in digest[: self.dimensions]]


def write_sample(path: Path, n: int) -> None:
    """A JSON Lines file of ``n`` texts to embed."""
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"text": f"sample sentence number {i}"}) + "\n")


def read_items(path: Path) -> Iterator[dict[str, list[str]]]:
    """One task's arguments per line, read lazily (the file is never loaded whole)."""
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield {"texts": [json.loads(line)["text"]]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--inputs", type=Path, help="JSON Lines of {'text': ...} (default: a sample)"
    )
    parser.add_argument("--out", type=Path, help="where to write the embeddings (JSON Lines)")
    parser.add_argument("--n", type=int, default=1000, help="lines in the sample (default 1000)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="errands-embeddings-"))
    inputs = args.inputs or workdir / "inputs.jsonl"
    if args.inputs is None:
        write_sample(inputs, args.n)
    out = args.out or workdir / "embeddings.jsonl"

    with errands.start(Embedder) as client:
        start = time.perf_counter()
        batch = client.embed.submit_many(read_items(inputs))
        print(f"submitted {len(batch.tasks)} texts as batch {batch.id}")
        for index, error in batch.rejected.items():
            print(f"line {index + 1} rejected: {error}")
        written = 0
        with out.open("w") as results:
            for result in batch.results():  # in input order, each as soon as it is ready
                line = {"index": result.index, "status": result.status}
                if result.status == "success":
                    line["embedding"] = result.result[0]
                else:
                    line["error"] = str(result.error)
                results.write(json.dumps(line) + "\n")
                written += 1
        elapsed = time.perf_counter() - start
        counts = batch.counts()
    print(f"wrote {written} embeddings to {out}")
    print(f"statuses: success={counts['success']} failure={counts['failure']}")
    print(
        f"the model ran {Embedder.calls} calls for {written} texts "
        f"(mean batch {written / max(Embedder.calls, 1):.1f}) in {elapsed:.2f} s; "
        f"one call per text would take at least {written * CALL_COST:.1f} s"
    )


if __name__ == "__main__":
    main()
