"""A service with every kind of argument and result, for ``errands serve`` in tests.

Arguments: ints, floats, strings, lists, a nested attrs class holding a
dataclass, enums (str and int), optionals, bytes (a file part in multipart
submits), a PIL image; results: JSON, text, bytes, a PIL image, nothing, and
a task that always fails.  Every task is quick, so a fuzzer's tasks finish
while it runs.  Served as ``tests/adapters/catalogue_service.py:svc``.
"""

from __future__ import annotations

import dataclasses
import enum

import attrs
from PIL import Image

import errands


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Size(enum.IntEnum):
    SMALL = 1
    LARGE = 2


@dataclasses.dataclass(frozen=True)
class Owner:
    name: str
    email: str | None = None


@attrs.frozen
class Layout:
    width: int
    height: int
    owner: Owner
    unit: str = "px"


svc = errands.Service("catalogue")


@svc.task
async def render(
    layout: Layout,
    color: Color,
    size: Size,
    tags: list[str],
    weights: dict[str, float],
    note: str | None = None,
    ratio: float = 1.0,
    flag: bool = False,
) -> dict[str, int]:
    """Lay a thing out (every JSON argument kind; a JSON result)."""
    return {"area": layout.width * layout.height, "tags": len(tags), "weights": len(weights)}


@svc.task
async def add(a: int, b: float = 0.0) -> float:
    """Add two numbers."""
    return a + b


@svc.task
async def shout(text: str, times: int = 1) -> str:
    """Upper-case text (a text result)."""
    return text.upper() * max(1, min(times, 3))


@svc.task
async def reverse(data: bytes, chunks: list[bytes] | None = None) -> bytes:
    """Reverse bytes (file arguments in multipart; a bytes result)."""
    return (data + b"".join(chunks or []))[::-1]


@svc.task(route="/v1/images/thumbnail")
def thumbnail(image: Image.Image, side: int = 4) -> Image.Image:
    """Shrink an image (an image argument and an image result)."""
    side = 1 + abs(side) % 8
    return image.resize((side, side))


@svc.task
async def fail(message: str) -> int:
    """Always fails: its ``get`` answers 500 ``TaskFailed``."""
    raise errands.FinalError(message)


@svc.task
async def nothing() -> None:
    """No arguments, no result."""
