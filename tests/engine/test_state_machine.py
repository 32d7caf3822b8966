"""Property tests: the status table, a store model, and random engine workloads."""

from __future__ import annotations

import itertools

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import errands
from errands import InvalidTransition, StoredTask, TaskStatus
from errands._model import TaskRecord, new_task_id
from errands._status import FINAL_STATUSES, TRANSITIONS, check_transition
from errands.backends import MemoryBackend
from tests.conftest import trio_wall

statuses = st.sampled_from(list(TaskStatus))


@given(old=statuses, new=statuses)
def test_check_transition_matches_the_table(old: TaskStatus, new: TaskStatus) -> None:
    allowed = (old, new) in TRANSITIONS or old is new is TaskStatus.IN_PROGRESS
    if allowed:
        check_transition(old, new)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(old, new)


def test_final_statuses_are_final() -> None:
    assert {s for s in TaskStatus if s.is_final} == FINAL_STATUSES
    assert not [t for t in TRANSITIONS if t[0] in FINAL_STATUSES]
    assert [s.value for s in TaskStatus] == [
        "pending",
        "in_progress",
        "success",
        "failure",
        "cancelled",
    ]


class StoreModel(RuleBasedStateMachine):
    """The memory store against a dict model: every CAS answers as the model says."""

    def __init__(self) -> None:
        super().__init__()
        self.backend = MemoryBackend()
        self.model: dict[str, tuple[TaskStatus, int]] = {}
        self.records: dict[str, TaskRecord] = {}
        self.tokens = itertools.count(1)

    def run(self, afn, *args):  # type: ignore[no-untyped-def]
        return trio.run(afn, *args)

    @rule()
    def create(self) -> None:
        rec = TaskRecord(
            id=new_task_id(), name="t", args={}, status=TaskStatus.PENDING, created_at=1.0
        )
        assert self.run(self.backend.store.create, StoredTask.from_record(rec))
        self.model[rec.id] = (TaskStatus.PENDING, 0)
        self.records[rec.id] = rec

    @precondition(lambda self: self.model)
    @rule(data=st.data(), expect=statuses, new=statuses, fenced=st.booleans())
    def transition(
        self, data: st.DataObject, expect: TaskStatus, new: TaskStatus, fenced: bool
    ) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.model)))
        status, token = self.model[task_id]
        use_token = data.draw(st.sampled_from([token, token + 1])) if fenced else None
        new_token = next(self.tokens) if new is TaskStatus.IN_PROGRESS else token
        rec = attrs.evolve(self.records[task_id], status=new, token=new_token)

        async def go() -> bool:
            return await self.backend.store.transition(
                StoredTask.from_record(rec), expect=expect, token=use_token
            )

        legal = (expect, new) in TRANSITIONS or expect is new is TaskStatus.IN_PROGRESS
        if not legal:
            with pytest.raises(InvalidTransition):
                self.run(go)
            return
        ok = self.run(go)
        should = status is expect and (use_token is None or use_token == token)
        assert ok == should
        if ok:
            self.model[task_id] = (new, new_token)
            self.records[task_id] = rec

    @invariant()
    def store_matches_model(self) -> None:
        async def check() -> None:
            for task_id, (status, token) in self.model.items():
                got = await self.backend.store.get(task_id)
                assert got is not None and (got.status, got.token) == (status, token)

        trio.run(check)


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


job_spec = st.fixed_dictionaries(
    {
        "duration": st.integers(0, 20),
        "fails": st.booleans(),
        "cancel_at": st.none() | st.integers(0, 30),
        "priority": st.integers(0, 2),
        "endpoint": st.sampled_from(["free", "limited"]),
    }
)


@settings(max_examples=40, deadline=None)
@given(jobs=st.lists(job_spec, min_size=1, max_size=12), workers=st.integers(1, 4))
def test_random_workloads_end_consistently(jobs: list[dict[str, object]], workers: int) -> None:
    svc = errands.Service("random")
    started: list[str] = []
    live = {"all": 0, "limited": 0, "peak_all": 0, "peak_limited": 0}

    async def body(key: str, duration: int, fails: bool, endpoint: str) -> int:
        started.append(key)
        live["all"] += 1
        live[endpoint] = live.get(endpoint, 0) + 1
        live["peak_all"] = max(live["peak_all"], live["all"])
        live["peak_limited"] = max(live["peak_limited"], live["limited"])
        try:
            await trio.sleep(duration)
        finally:
            live["all"] -= 1
            live[endpoint] -= 1
        if fails:
            raise ValueError(f"{key} failed")
        return duration

    @svc.task
    async def free(key: str, duration: int, fails: bool) -> int:
        return await body(key, duration, fails, "free")

    @svc.task(concurrency=1)
    async def limited(key: str, duration: int, fails: bool) -> int:
        return await body(key, duration, fails, "limited")

    async def main() -> None:
        async with errands.open_engine(svc, workers=workers, clock=trio_wall) as client:
            handles = []
            cancelled: dict[str, TaskStatus] = {}  # what cancel() answered
            async with trio.open_nursery() as nursery:
                for i, job in enumerate(jobs):
                    endpoint = client[str(job["endpoint"])].options(priority=int(job["priority"]))  # type: ignore[call-overload]
                    task = await endpoint.submit(
                        key=f"k{i}", duration=job["duration"], fails=job["fails"]
                    )
                    handles.append((task, job))
                    if job["cancel_at"] is not None:

                        async def cancel_later(task=task, at=job["cancel_at"]) -> None:  # type: ignore[no-untyped-def]
                            await trio.sleep(at)
                            try:
                                cancelled[task.id] = await task.cancel()
                            except errands.CannotCancel:
                                pass

                        nursery.start_soon(cancel_later)
            for task, job in handles:
                status = await task.wait()
                assert status.is_final
                # cancel() answers the true state: whatever it said is how the task ended.
                assert cancelled.get(task.id, status) is status
                key = f"k{handles.index((task, job))}"
                if status is TaskStatus.SUCCESS:
                    assert await task.get() == job["duration"]
                elif status is TaskStatus.FAILURE:
                    with pytest.raises(errands.TaskFailed, match=f"{key} failed"):
                        await task.get()
                else:
                    assert cancelled[task.id] is TaskStatus.CANCELLED
                    with pytest.raises(errands.TaskCancelled):
                        await task.get()
                info = await task.get_info()
                assert info.attempt == started.count(key) <= 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert live["peak_all"] <= workers
    assert live["peak_limited"] <= 1
