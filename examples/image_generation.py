"""Image generation: the class-based service of the docs.

The service class "loads a model" once per engine start and renders a real
PNG for each prompt: a pattern whose colours and waves derive from a hash of
the prompt, written with ``zlib`` and ``struct`` alone (no Pillow, no
download), reporting its progress as it goes.

Run it in-process::

    python examples/image_generation.py [PATH [PROMPT]]   # writes image.png by default

or serve it over HTTP::

    errands serve examples/image_generation.py:ImageGenerationService
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import errands

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """Encode 8-bit RGB pixels as a PNG file.

    Args:
        width: pixels per row.
        height: number of rows.
        rgb: ``width * height * 3`` bytes, row by row, top to bottom.

    Returns:
        The PNG file's bytes (colour type 2, bit depth 8, no interlacing).

    Raises:
        ValueError: a size is not positive, or ``rgb`` has the wrong length.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    stride = width * 3
    if len(rgb) != stride * height:
        raise ValueError(f"expected {stride * height} bytes of RGB for {width}x{height}")
    # Each scanline starts with its filter type; 0 (None) keeps this simple.
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


@errands.service
class ImageGenerationService:
    """Turns a prompt into a PNG image."""

    def __init__(self) -> None:
        # Stands in for loading model weights: it runs once when an engine
        # starts, not once per task.
        self.size = 256
        self.steps = 8
        self.wave = [round(127.5 + 127.5 * math.sin(2 * math.pi * i / 256)) for i in range(256)]

    @errands.task
    def long_running_image_generation(self, prompt: str) -> bytes:
        """Render an image for ``prompt``; returns PNG bytes.

        Raises:
            errands.FinalError: the prompt is blank (retrying would not help).
        """
        if not prompt.strip():
            raise errands.FinalError("the prompt must not be blank")
        me = errands.current_task()
        digest = hashlib.sha256(prompt.encode("utf-8")).digest()
        start = digest[0:3]
        # Each channel of the second colour differs by 64..191 (mod 256): contrast.
        end = bytes((s + 64 + d % 128) & 255 for s, d in zip(start, digest[3:6], strict=True))
        # 256 colours from the prompt's two colours; each pixel picks one.
        palette = [
            bytes(round(a + (b - a) * i / 255) for a, b in zip(start, end, strict=True))
            for i in range(256)
        ]
        fx, fy, phase = 1 + digest[6] % 5, 1 + digest[7] % 5, digest[8]
        size, wave = self.size, self.wave
        rows_per_step = size // self.steps
        pixels = bytearray()
        for step in range(self.steps):
            for y in range(step * rows_per_step, (step + 1) * rows_per_step):
                shift = wave[(y * fy + phase) & 255]
                pixels += b"".join(
                    palette[((x + y) // 2 + wave[(x * fx + shift) & 255]) >> 1] for x in range(size)
                )
            me.report((step + 1) / self.steps, f"rendered {(step + 1) * rows_per_step} rows")
        png = encode_png(size, size, bytes(pixels))
        me.report(message=f"encoded {size}x{size} PNG")
        return png


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    path = Path(args[0] if args else "image.png")
    prompt = args[1] if len(args) > 1 else "a lighthouse at dusk, oil on canvas"
    with errands.start(ImageGenerationService) as client:
        task = client.long_running_image_generation.submit(prompt=prompt)
        print(f"submitted {prompt!r} as task {task.id}")
        status = task.wait(timeout=30)
        info = task.get_info()
        print(f"task {status.value}: progress={info.progress} message={info.message!r}")
        png = task.get()
    path.write_bytes(png)
    print(f"wrote {path} ({len(png)} bytes)")


if __name__ == "__main__":
    main()
