"""Batch handles of the HTTP clients: the in-process ``Batch`` API, over the network.

``client.<task>.submit_many(items)`` and ``client.get_batch(id)`` give an
:class:`HTTPBatch` (sync) or :class:`AsyncHTTPBatch` (trio or asyncio), with
the members of :class:`errands.Batch` and :class:`errands.AsyncBatch`:
``id``, ``name``, ``tasks``, ``indexes``, ``rejected``, ``counts()``,
``wait(timeout=None)``, ``results(order=...)`` and ``cancel()``.  Both run
the flows of ``_batch_flows``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from errands import BatchResult, TaskStatus

from . import _batch_flows

if TYPE_CHECKING:
    from .client import AsyncHTTPClient, AsyncHTTPTask, HTTPTask, SyncHTTPClient

__all__ = ["AsyncHTTPBatch", "HTTPBatch"]

Counts = dict[str, int]


def _none() -> Counts:
    """The counts of a batch with no task (the server has no such batch)."""
    return {**dict.fromkeys((s.value for s in TaskStatus), 0), "total": 0}


class AsyncHTTPBatch:
    """A handle on a batch of tasks of an HTTP server, for async code.

    Attributes:
        id: the batch id (``client.get_batch(id)`` finds it again).
        name: the task endpoint.
        tasks: the accepted tasks (:class:`AsyncHTTPTask`), in submission order.
        indexes: each task's item's index in the submission.
        rejected: the items refused at submit, by index, with the error each
            got, as the client raises them (``InvalidArguments`` with its
            fields...); empty for a batch found by id (the server keeps
            no refusals).
    """

    def __init__(
        self,
        client: AsyncHTTPClient,
        batch_id: str,
        name: str,
        members: list[tuple[int, AsyncHTTPTask]],
        rejected: Mapping[int, Exception] | None = None,
    ) -> None:
        self._client = client
        self.id = batch_id
        self.name = name
        self.indexes = [index for index, _ in members]
        self.tasks = [task for _, task in members]
        self.rejected = dict(rejected or {})

    async def counts(self) -> Counts:
        """How many tasks are in each status, plus ``total`` (and ``expired``
        for tasks no longer kept).  Raises BatchNotFound once all expired."""
        if not self.tasks:
            return _none()
        summary = await self._client._run(_batch_flows.page(self.id, limit=0))
        return summary.counts  # type: ignore[no-any-return]

    async def wait(
        self, timeout: float | None = None, *, progress: Callable[[Counts], None] | None = None
    ) -> Counts:
        """Until every task is final (long polls); the counts then.

        ``progress(counts)`` is called about once a second meanwhile.
        Raises TimeoutError after ``timeout`` seconds.
        """
        if not self.tasks:
            return _none()
        server = await self._client.server_info()
        flow = _batch_flows.wait(server, self.id, timeout, progress=progress)
        return await self._client._run(flow)  # type: ignore[no-any-return]

    async def results(self, *, order: str = "submission") -> AsyncIterator[BatchResult]:
        """Each task's outcome as it is final: in submission ``order``
        (``"submission"``) or as they finish (``"completed"``); one stream
        (``GET /batches/<id>/results``), not a request per task."""
        async for result in self._results(order=order, wait=True, raw=False):
            yield result

    async def result_lines(
        self, *, order: str = "submission", wait: bool = True
    ) -> AsyncIterator[str]:
        """The server's result lines (JSON text) as they come, for writing to
        a file; ``wait=False``: the tasks final now only."""
        async for line in self._results(order=order, wait=wait, raw=True):
            yield line

    async def _results(self, *, order: str, wait: bool, raw: bool) -> AsyncIterator[Any]:
        if order not in ("submission", "completed"):
            raise ValueError(f"order must be 'submission' or 'completed', not {order!r}")
        if not self.tasks:
            return
        server = await self._client.server_info()
        route, endpoint = self._client._routes(server, self.name)
        flow = _batch_flows.results(
            route, endpoint, self.id, order=order, wait=wait, total=len(self.tasks), raw=raw
        )
        async for item in self._client._iterate(flow):
            yield item

    async def cancel(self) -> Counts:
        """Cancel every task not final yet; the counts then.  A running sync
        task that is not cancellable runs on to its end."""
        if not self.tasks:
            return _none()
        return await self._client._run(_batch_flows.cancel(self.id))  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<AsyncHTTPBatch {self.name} {self.id} tasks={len(self.tasks)}>"


class HTTPBatch:
    """A handle on a batch of tasks of an HTTP server, for sync code.

    Same members as :class:`AsyncHTTPBatch` (and :class:`errands.Batch`),
    without ``await``; ``results()`` is a plain iterator.
    """

    def __init__(
        self,
        client: SyncHTTPClient,
        batch_id: str,
        name: str,
        members: list[tuple[int, HTTPTask]],
        rejected: Mapping[int, Exception] | None = None,
    ) -> None:
        self._client = client
        self.id = batch_id
        self.name = name
        self.indexes = [index for index, _ in members]
        self.tasks = [task for _, task in members]
        self.rejected = dict(rejected or {})

    def counts(self) -> Counts:
        """How many tasks are in each status, plus ``total``."""
        if not self.tasks:
            return _none()
        return self._client._run(_batch_flows.page(self.id, limit=0)).counts  # type: ignore[no-any-return]

    def wait(
        self, timeout: float | None = None, *, progress: Callable[[Counts], None] | None = None
    ) -> Counts:
        """Until every task is final (long polls); the counts then.
        ``progress(counts)`` about once a second meanwhile.  TimeoutError
        after ``timeout`` seconds."""
        if not self.tasks:
            return _none()
        server = self._client.server_info()
        flow = _batch_flows.wait(server, self.id, timeout, progress=progress)
        return self._client._run(flow)  # type: ignore[no-any-return]

    def results(self, *, order: str = "submission") -> Iterator[BatchResult]:
        """Each task's outcome as it is final, in submission ``order`` or as
        they finish (``"completed"``)."""
        return self._results(order=order, wait=True, raw=False)

    def result_lines(self, *, order: str = "submission", wait: bool = True) -> Iterator[str]:
        """The server's result lines (JSON text) as they come, for writing to
        a file; ``wait=False``: the tasks final now only."""
        return self._results(order=order, wait=wait, raw=True)

    def _results(self, *, order: str, wait: bool, raw: bool) -> Iterator[Any]:
        if order not in ("submission", "completed"):
            raise ValueError(f"order must be 'submission' or 'completed', not {order!r}")
        if not self.tasks:
            return iter(())
        server = self._client.server_info()
        route, endpoint = self._client._routes(server, self.name)
        flow = _batch_flows.results(
            route, endpoint, self.id, order=order, wait=wait, total=len(self.tasks), raw=raw
        )
        return self._client._iterate(flow)

    def cancel(self) -> Counts:
        """Cancel every task not final yet; the counts then."""
        if not self.tasks:
            return _none()
        return self._client._run(_batch_flows.cancel(self.id))  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<HTTPBatch {self.name} {self.id} tasks={len(self.tasks)}>"
