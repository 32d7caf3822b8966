from __future__ import annotations

import trio

#: A fixed epoch plus trio's clock: stored timestamps follow MockClock in tests.
EPOCH = 1_800_000_000.0


def trio_wall() -> float:
    """A wall clock driven by ``trio.current_time()`` (so autojump moves it too)."""
    return EPOCH + trio.current_time()
