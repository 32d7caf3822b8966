"""Task ids: the millisecond they were made, then 90 random bits; never
repeated, not even across a fork; sorted as they were made, to the
millisecond (a durable backend's indexes then take new ids on their last
pages: docs/decisions.md)."""

from __future__ import annotations

import os
import time

import pytest

from errands import _model
from errands._model import is_task_id, new_task_id


def test_ids_are_well_formed_and_distinct() -> None:
    ids = [new_task_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(is_task_id(i) and not i.startswith("-") for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    new_task_id()  # the parent holds a buffer of random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(new_task_id() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    parent = {new_task_id() for _ in range(10)}
    assert len(child) == 10 and not child & parent


def test_ids_sort_as_they_were_made_to_the_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_764_600_000_000_000_000]  # ns
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    made = []
    for step in [0, 1, 999_998, 1, 60_000_000_000, 86_400_000_000_000, 10**15]:
        now[0] += step
        made.append(new_task_id())
        made.append(new_task_id())  # the same millisecond: the same prefix
    assert all(is_task_id(i) and not i.startswith("-") for i in made)
    firsts = made[0::2]
    assert [a[:7] for a in firsts] == [b[:7] for b in made[1::2]]
    assert firsts[0][:7] == firsts[1][:7] == firsts[2][:7]  # under a millisecond apart
    assert sorted(firsts[2:]) == firsts[2:] and len({a[:7] for a in firsts[2:]}) == 5
    # 90 random bits after the prefix: ids of one millisecond differ there.
    assert made[0][7:] != made[1][7:] and made[0] != made[1]


def test_the_time_prefix_is_the_millisecond_in_order_preserving_characters() -> None:
    assert "".join(sorted(_model._ORDERED)) == _model._ORDERED
    assert set(_model._ORDERED) == set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    ms = 1_764_600_000_123
    prefix = _model._time_prefix(ms)
    value = 0
    for char in prefix:
        value = value * 64 + _model._ORDERED.index(char)
    assert value == ms and len(prefix) == 7
    assert _model._time_prefix(ms + 1) > prefix and _model._time_prefix(2**42 - 1) > prefix
    # The first character is "-" only for times before 1970 + 2**36 ms (1972).
    assert not _model._time_prefix(int(time.time() * 1000)).startswith("-")
