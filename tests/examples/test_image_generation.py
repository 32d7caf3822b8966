"""examples/image_generation.py: a real PNG, as a script and through an engine."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
import trio

import errands
from errands import TaskStatus

if TYPE_CHECKING:
    from .conftest import RunExample

pytestmark = pytest.mark.realtime

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DecodedPNG:
    """What the tests need from a PNG: its header fields and its raw scanlines."""

    def __init__(self, data: bytes) -> None:
        assert data[:8] == PNG_SIGNATURE
        chunks: list[tuple[bytes, bytes]] = []
        pos = 8
        while pos < len(data):
            (length,) = struct.unpack_from(">I", data, pos)
            kind = data[pos + 4 : pos + 8]
            body = data[pos + 8 : pos + 8 + length]
            (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
            assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
            chunks.append((kind, body))
            pos += 12 + length
        assert pos == len(data)
        assert chunks[0][0] == b"IHDR"
        assert chunks[-1] == (b"IEND", b"")
        self.kinds = [kind for kind, _ in chunks]
        (
            self.width,
            self.height,
            self.bit_depth,
            self.colour_type,
            self.compression,
            self.filter_method,
            self.interlace,
        ) = struct.unpack(">IIBBBBB", chunks[0][1])
        self.raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))

    def rows(self) -> list[bytes]:
        """The scanlines without their filter bytes (which must all be 0: None)."""
        stride = 1 + self.width * 3
        assert len(self.raw) == stride * self.height
        lines = [self.raw[i : i + stride] for i in range(0, len(self.raw), stride)]
        assert all(line[0] == 0 for line in lines)
        return [line[1:] for line in lines]


def check_rgb_png(data: bytes, width: int, height: int) -> DecodedPNG:
    png = DecodedPNG(data)
    assert (png.width, png.height) == (width, height)
    assert (png.bit_depth, png.colour_type, png.interlace) == (8, 2, 0)
    assert len(png.rows()) == height
    return png


# ---------------------------------------------------------------- as a script


def test_script_writes_png_to_default_path(run_example: RunExample, tmp_path: Path) -> None:
    done = run_example("image_generation.py")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    written = tmp_path / "image.png"
    data = written.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    png = check_rgb_png(data, 256, 256)
    assert len(set(png.rows())) > 1  # a pattern, not one flat colour
    assert done.stdout.startswith("submitted 'a lighthouse at dusk, oil on canvas' as task ")
    assert "task success: progress=1.0 message='encoded 256x256 PNG'" in done.stdout
    assert done.stdout.splitlines()[-1] == f"wrote image.png ({len(data)} bytes)"


def test_script_takes_path_and_prompt(run_example: RunExample, tmp_path: Path) -> None:
    done = run_example("image_generation.py", "cat.png", "a cat")
    assert done.returncode == 0, done.stderr
    assert "submitted 'a cat' as task " in done.stdout
    data = (tmp_path / "cat.png").read_bytes()
    check_rgb_png(data, 256, 256)
    assert done.stdout.splitlines()[-1] == f"wrote cat.png ({len(data)} bytes)"
    assert not (tmp_path / "image.png").exists()


# ---------------------------------------------------------------- the PNG helper


def test_encode_png_round_trips_pixels(image_generation: ModuleType) -> None:
    pixels = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90])
    data = image_generation.encode_png(3, 2, pixels)
    png = check_rgb_png(data, 3, 2)
    assert png.kinds == [b"IHDR", b"IDAT", b"IEND"]
    assert (png.compression, png.filter_method) == (0, 0)
    assert png.rows() == [pixels[:9], pixels[9:]]


def test_encode_png_is_read_by_pillow(image_generation: ModuleType) -> None:
    # An independent decoder (Pillow is a test dependency, not the example's).
    image_module = pytest.importorskip("PIL.Image")
    pixels = bytes(range(4 * 3 * 3))
    data = image_generation.encode_png(4, 3, pixels)
    with image_module.open(io.BytesIO(data)) as image:
        assert (image.mode, image.size) == ("RGB", (4, 3))
        assert image.tobytes() == pixels


@pytest.mark.parametrize(
    ("width", "height", "length"),
    [(0, 1, 0), (1, 0, 0), (2, 2, 11), (2, 2, 13)],
)
def test_encode_png_rejects_bad_sizes(
    image_generation: ModuleType, width: int, height: int, length: int
) -> None:
    with pytest.raises(ValueError, match=r"expected \d+ bytes|must be positive"):
        image_generation.encode_png(width, height, bytes(length))


# ---------------------------------------------------------------- through an engine


async def test_service_renders_png_and_reports_progress(image_generation: ModuleType) -> None:
    with trio.fail_after(20):
        async with errands.open_engine(image_generation.ImageGenerationService) as client:
            endpoint = client.long_running_image_generation
            task = await endpoint.submit(prompt="a red fox")
            assert await task.wait(timeout=10) is TaskStatus.SUCCESS
            data = await task.get()
            assert isinstance(data, bytes)
            assert data.startswith(PNG_SIGNATURE)
            check_rgb_png(data, 256, 256)

            info = await task.get_info()
            assert info.status is TaskStatus.SUCCESS
            assert info.progress == 1.0
            assert info.message == "encoded 256x256 PNG"
            assert info.attempt == 1

            # The image is a function of the prompt alone.
            same = await endpoint.submit(prompt="a red fox")
            other = await endpoint.submit(prompt="a blue whale")
            assert await same.wait(timeout=10) is TaskStatus.SUCCESS
            assert await other.wait(timeout=10) is TaskStatus.SUCCESS
            assert await same.get() == data
            other_data = await other.get()
            check_rgb_png(other_data, 256, 256)
            assert other_data != data


async def test_blank_prompt_fails_at_once(image_generation: ModuleType) -> None:
    with trio.fail_after(20):
        async with errands.open_engine(image_generation.ImageGenerationService) as client:
            task = await client.long_running_image_generation.submit(prompt="   ")
            assert await task.wait(timeout=10) is TaskStatus.FAILURE
            with pytest.raises(errands.TaskFailed, match="must not be blank"):
                await task.get()
            info = await task.get_info()
            assert info.attempt == 1
            assert info.error is not None and info.error.type == "FinalError"
            with pytest.raises(errands.InvalidArguments, match=r"\$\.prompt"):
                await client.long_running_image_generation.submit(prompt=42)
