"""Task ids: 132 random bits each, never repeated, not even across a fork."""

from __future__ import annotations

import os

import pytest

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
