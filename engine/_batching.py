"""Adaptive batching: waiting tasks of a batchable task share one call.

An engine has one :class:`Batcher` per ``@errands.task(batchable=True)``
name.  When a concurrency slot of that task is free, the batcher claims
waiting tasks of the name, best first, and picks a batch from them: the
first task, then each later one whose arguments besides the list equal the
first's, while the items fit ``max_batch_size``.  A batch that is not full
waits up to ``max_latency_ms`` after its first task was claimed for more;
a full one starts at once.  The runner then starts every member (each
fenced by its own claim), calls the function once with all their items and
settles each member with its own slice (``Runner.run_batch``).

One batch uses one slot.  Claimed tasks that did not fit (too many items,
other arguments) are *held* for the next batch, so they keep their place;
at most ``max_batch_size`` such claims are held.  Held claims sit in
``Runner.held``, where the lease keeper renews them, and are released when
the engine stops.  A held task that is cancelled meanwhile is left out
when its batch starts (its fenced start fails).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import attrs
import trio

from ._core import Core
from ._define import TaskDefinition
from ._errors import BackendError
from ._model import Claim, TaskRecord
from ._runner import Runner
from ._status import TaskStatus

__all__ = ["Batcher", "Slots"]

log = logging.getLogger("errands.engine")


class Slots(Protocol):
    """The engine's concurrency slots, as a batcher uses them."""

    def take(self, name: str) -> bool:
        """Reserve a slot for ``name`` if one is free."""

    def give(self, name: str) -> None:
        """Free a slot of ``name``."""

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run ``fn(*args)`` in the engine's runners nursery."""


@attrs.define(eq=False)
class Member:
    """A claimed task waiting for its batch."""

    claim: Claim
    claimed_at: float  # trio time
    record: TaskRecord | None = None


def _items(record: TaskRecord, param: str) -> int:
    value = record.args.get(param)
    return len(value) if isinstance(value, list) else 1


def _key(record: TaskRecord, param: str) -> str:
    """The arguments besides the list, as text equal arguments share."""
    rest = {k: v for k, v in record.args.items() if k != param}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"))


class Batcher:
    """Forms the batches of one batchable task (see the module docstring)."""

    def __init__(
        self, core: Core, runner: Runner, definition: TaskDefinition, slots: Slots
    ) -> None:
        self.core = core
        self.runner = runner
        self.name = definition.name
        param = definition.batch_param
        assert param is not None
        self.param = param
        self.size = definition.options.max_batch_size
        self.latency = definition.options.max_latency_ms / 1000.0
        self.slots = slots
        self._held: list[Member] = []
        self._wake = trio.Event()
        #: Whether ready work may be waiting in the queue.
        self._maybe_work = True
        self._generation = 0

    def wake(self) -> None:
        """Work of this name may be ready (a submit, a release, another engine)."""
        self._maybe_work = True
        self._generation += 1
        self._wake.set()

    def slot_freed(self) -> None:
        self._wake.set()

    async def form_round(self) -> None:
        """Form one batch and start it, or wait for work and a free slot."""
        self._wake = trio.Event()
        if (self._maybe_work or self._held) and self.slots.take(self.name):
            batch: list[Member] = []
            try:
                batch = await self._gather()
            finally:
                if batch:
                    members = [(m.claim, m.record) for m in batch]
                    self.slots.spawn(self._run, members)
                else:
                    self.slots.give(self.name)
            if batch:
                return
        await self._wait(math.inf)

    async def _wait(self, deadline: float) -> None:
        """Wait for a wake-up, the trio time ``deadline``, or the next delayed
        task of this name to be due (then there is work)."""
        due_at = math.inf
        if not self._maybe_work:
            due = await self.core.queue.next_due([self.name])
            if due is not None:
                due_at = trio.current_time() + max(due - self.core.now(), 0.001)
        with trio.move_on_at(min(deadline, due_at)):
            await self._wake.wait()
        if not self._wake.is_set() and trio.current_time() >= due_at:
            self._maybe_work = True  # a delayed task is due

    async def _run(self, members: list[tuple[Claim, TaskRecord]]) -> None:
        try:
            await self.runner.run_batch(members)
        finally:
            self.slots.give(self.name)

    async def _gather(self) -> list[Member]:
        """Claim and pick the next batch; [] when nothing is ready."""
        while True:
            self._wake = trio.Event()
            await self._read_records()
            batch, items = self._pick()
            room = min(self.size - items, 2 * self.size - len(self._held))
            if room > 0 and self._maybe_work and await self._claim(room):
                continue
            if not batch:
                return []
            deadline = batch[0].claimed_at + self.latency
            if items >= self.size or trio.current_time() >= deadline:
                chosen = {id(m) for m in batch}
                self._held = [m for m in self._held if id(m) not in chosen]
                return batch
            await self._wait(deadline)

    async def _claim(self, room: int) -> bool:
        """Claim up to ``room`` more tasks; whether any came."""
        core = self.core
        generation = self._generation
        now = core.now()
        claims = await core.queue.claim(
            owner=core.owner,
            quotas={self.name: room},
            limit=room,
            now=now,
            lease_until=now + core.options.lease,
        )
        if len(claims) < room and generation == self._generation:
            self._maybe_work = False
        at = trio.current_time()
        for claim in claims:
            self.runner.held[claim.task_id] = claim
            self._held.append(Member(claim=claim, claimed_at=at))
        return bool(claims)

    async def _read_records(self) -> None:
        """Read the records of held claims not read yet; drop stale ones."""
        unread = [m for m in self._held if m.record is None]
        if not unread:
            return
        found = await self.core.store.get_many([m.claim.task_id for m in unread])
        for member in unread:
            stored = found.get(member.claim.task_id)
            try:
                record = stored.record if stored is not None else None
            except BackendError:
                await self._fail_unreadable(member)
                continue
            if record is None or record.status is not TaskStatus.PENDING:
                # Cancelled while it waited, or gone: a stale entry.
                await self._drop(member)
                continue
            member.record = record

    async def _fail_unreadable(self, member: Member) -> None:
        """A held task whose stored record does not decode fails alone: the
        runner's start writes it off (``UnreadableRecord``), as for any
        claimed task, instead of the batcher retrying it for ever."""
        claim = member.claim
        self._held.remove(member)
        if self.runner.held.get(claim.task_id) == claim:
            del self.runner.held[claim.task_id]
        run = await self.runner.start(claim)
        if run is not None:  # rewritten meanwhile and readable: back to the queue
            self.runner.running.pop(claim.task_id, None)
            await self.runner.hand_back(claim, run.record, counts=False)

    async def _drop(self, member: Member) -> None:
        claim = member.claim
        self._held.remove(member)
        if self.runner.held.get(claim.task_id) == claim:
            del self.runner.held[claim.task_id]
        await self.core.queue.ack(claim.task_id, claim.token)

    def _pick(self) -> tuple[list[Member], int]:
        """The next batch among the held tasks, in claim order, and its items."""
        batch: list[Member] = []
        items = 0
        key = None
        for member in self._held:
            record = member.record
            if record is None:
                continue
            size = _items(record, self.param)
            if key is None:
                key = _key(record, self.param)
            elif _key(record, self.param) != key:
                continue
            if batch and items + size > self.size:
                continue
            batch.append(member)
            items += size
        return batch, items

    async def release_held(self) -> None:
        """The engine stops: give back the claims of tasks no batch started."""
        held, self._held = self._held, []
        for member in held:
            claim = member.claim
            self.runner.held.pop(claim.task_id, None)
            record = member.record
            rank = None if record is None else self.core.rank(record.priority, record.not_before)
            try:
                await self.core.queue.release(claim.task_id, claim.token, rank=rank)
            except BackendError as exc:
                # Its lease runs out and recovery re-queues it.
                log.warning("task %s: claim not released at shutdown: %s", claim.task_id, exc)
