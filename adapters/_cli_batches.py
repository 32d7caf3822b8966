"""The batch commands of ``errands``: ``submit-many``, ``wait --batch``, ``results``.

They talk to a server through :class:`~errands.adapters.SyncHTTPClient`'s
batch handles, as the other client commands do (``_cli_client`` holds the
shared flags, the exit codes and their contract, and imports this module
when a batch command runs):

* ``submit-many NAME --from FILE.jsonl`` sends one task per non-blank line
  (a progress bar on a terminal), prints the batch id, and names each
  refused line on stderr (exit 2 when any was refused; the others are
  accepted all the same).  Item indexes count the non-blank lines, a line
  that is not JSON included, so a result's index names its line.
* ``wait --batch ID`` waits until every task of the batch is final and
  prints its counts (exit 0 when all succeeded, 1 otherwise).
* ``results --batch ID [-o FILE]`` writes the batch's results as JSON Lines,
  as the server sends them (exit 0 when all succeeded, 1 when some failed,
  were cancelled or expired, 4 with ``--no-wait`` when some are not final).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from errands import InvalidArguments

from ._cli_client import NOT_READY, OK, TASK_FAILED, USAGE, Stop
from ._protocol import STATUS_NAMES
from .client import SyncHTTPClient

__all__ = ["add_batch_commands", "results", "submit_many", "wait_batch"]

#: The order counts are printed in.
_COUNTED = ("success", "failure", "cancelled", "expired")


def add_batch_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """Add ``submit-many`` and ``results`` (``wait --batch`` is ``wait``'s flag)."""
    many = add("submit-many", "submit one task per line of a JSON Lines file; prints the batch id")
    many.add_argument("name", metavar="NAME", help="the task endpoint")
    many.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="FILE",
        help="JSON Lines: one object of arguments per line, blank lines skipped (- for stdin)",
    )
    many.add_argument(
        "--priority", type=int, default=0, metavar="N", help="higher runs first (default 0)"
    )
    many.add_argument("--delay", type=float, metavar="S", help="run no sooner than S s")
    many.add_argument(
        "--idempotency-key", metavar="K", help="sending the same file again gives the same tasks"
    )

    results = add("results", "write a batch's results as JSON Lines (one line per task)")
    results.add_argument("--batch", required=True, metavar="ID", help="the batch id")
    results.add_argument(
        "-o", "--output", metavar="FILE", help="write them to FILE (default, or -: stdout)"
    )
    results.add_argument(
        "--order",
        choices=("submission", "completed"),
        default="submission",
        help="in the order the items were submitted (default), or as they finish",
    )
    results.add_argument(
        "--no-wait",
        action="store_true",
        help="write the results of the tasks final now, and stop (exit 4 if some are not)",
    )


def _bar(total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="task",
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )


def _count_lines(path: Path) -> int:
    """Non-blank lines of ``path`` (the progress bar's total), read in binary."""
    count = 0
    with path.open("rb") as source:
        for raw in source:
            if raw.strip():
                count += 1
    return count


def _refusal(exc: Exception) -> str:
    if isinstance(exc, InvalidArguments):
        return "invalid arguments: " + "; ".join(str(e) for e in exc.errors)
    return str(exc)


def submit_many(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    """``errands submit-many NAME --from FILE``."""
    server = client.server_info()
    if args.name not in server.endpoints:
        known = ", ".join(sorted(server.endpoints)) or "none"
        raise Stop(USAGE, f"no task endpoint {args.name!r} on the server (endpoints: {known})")
    if args.delay is not None and not args.delay >= 0:
        raise Stop(USAGE, f"--delay must be seconds >= 0, got {args.delay}")
    total = None
    if args.source == "-":
        source: IO[bytes] = sys.stdin.buffer
    else:
        path = Path(args.source)
        if not path.is_file():
            raise Stop(USAGE, f"--from: no such file: {path}")
        total = _count_lines(path)
        source = path.open("rb")
    line_of = array("Q")  # item index -> its line number in the file
    not_json: dict[int, str] = {}  # item index -> why its line is not JSON

    def items() -> Iterator[Any]:
        for number, raw in enumerate(source, 1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except ValueError as exc:
                # Sent as null (refused by the server too): indexes stay line order.
                not_json[len(line_of)] = f"not valid JSON: {exc}"
                value = None
            line_of.append(number)
            yield value

    endpoint = client[args.name].options(
        priority=args.priority, delay=args.delay, idempotency_key=args.idempotency_key
    )
    try:
        with _bar(total) as bar:
            batch = endpoint.submit_many(items(), progress=lambda sent: bar.update(sent - bar.n))
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    print(batch.id, flush=True)
    refused = sorted(batch.rejected.items())
    for index, exc in refused:
        message = not_json.get(index) or _refusal(exc)
        print(f"errands: line {line_of[index]} (item {index}): {message}", file=sys.stderr)
    if refused:
        print(
            f"errands: {len(refused)} of {len(line_of)} items refused; the other "
            f"{len(batch.tasks)} were accepted in batch {batch.id}",
            file=sys.stderr,
        )
        return USAGE
    return OK


def _status(name: Any) -> str:
    status = STATUS_NAMES.get(name) if isinstance(name, str) else None
    return status.value if status is not None else str(name)


def wait_batch(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    """``errands wait --batch ID``: prints ``ID success=N failure=N ... total=N``."""
    if args.task_ids:
        raise Stop(USAGE, "give task ids or --batch, not both")
    batch = client.get_batch(args.batch)  # BatchNotFound before any wait
    with _bar(None) as bar:

        def progress(counts: dict[str, int]) -> None:
            bar.total = counts["total"]
            bar.update(sum(counts.get(k, 0) for k in _COUNTED) - bar.n)

        counts = batch.wait(timeout=args.timeout, progress=progress if not bar.disable else None)
    shown = [f"{k}={counts[k]}" for k in _COUNTED if k in counts]
    print(f"{batch.id} {' '.join(shown)} total={counts['total']}", flush=True)
    return OK if counts.get("success", 0) == counts["total"] else TASK_FAILED


def results(client: SyncHTTPClient, args: argparse.Namespace) -> int:
    """``errands results --batch ID [-o FILE]``."""
    batch = client.get_batch(args.batch)
    statuses: Counter[str] = Counter()
    with contextlib.ExitStack() as files:
        out: IO[str] = sys.stdout
        if args.output not in (None, "-"):
            try:
                out = files.enter_context(Path(args.output).open("w", encoding="utf-8"))
            except OSError as exc:
                raise Stop(USAGE, f"cannot write {args.output}: {exc.strerror or exc}") from None
        try:
            with _bar(len(batch)) as bar:
                for line in batch.result_lines(order=args.order, wait=not args.no_wait):
                    out.write(line + "\n")
                    statuses[_status(json.loads(line).get("status"))] += 1
                    bar.update(1)
            out.flush()
        except OSError as exc:
            where = args.output or "stdout"
            raise Stop(USAGE, f"cannot write {where}: {exc.strerror or exc}") from None
    written = sum(statuses.values())
    if statuses["success"] == len(batch):
        return OK
    if written < len(batch):
        print(
            f"errands: {len(batch) - written} of {len(batch)} tasks of batch {batch.id} "
            "are not final yet",
            file=sys.stderr,
        )
        return NOT_READY
    return TASK_FAILED
