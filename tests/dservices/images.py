"""Test images, made with Pillow, and the pixel comparisons the MediaGen tests use."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageChops, ImageStat

#: Largest mean absolute difference per channel (0-255) allowed between two decodings of
#: JPEGs encoded from the same pixels: JPEG is lossy, the encoder settings match.
JPEG_TOLERANCE = 1.5


def source(width: int = 120, height: int = 80) -> Image.Image:
    """An RGB test card: gradients and stripes, so that every operation changes pixels."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 255) // width, (y * 255) // height, 255 if (x // 8 + y // 8) % 2 else 40)
            for y in range(height)
            for x in range(width)
        ]
    )
    return image


def logo() -> Image.Image:
    """A small RGBA image with partial transparency, for composite."""
    image = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    image.putdata(
        [(255, (x * 6) % 256, 0, 255 if x < 20 else 128) for y in range(30) for x in range(40)]
    )
    return image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """``image`` saved to bytes in ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    """Bytes -> a loaded image."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_same_pixels(actual: Image.Image, expected: Image.Image) -> None:
    """Exact equality: size, mode and every pixel."""
    assert actual.size == expected.size, (actual.size, expected.size)
    assert actual.mode == expected.mode, (actual.mode, expected.mode)
    assert actual.tobytes() == expected.tobytes()


def assert_close_pixels(actual: Image.Image, expected: Image.Image, tolerance: float) -> None:
    """Same size and mode; mean absolute difference per channel at most ``tolerance``."""
    assert actual.size == expected.size, (actual.size, expected.size)
    assert actual.mode == expected.mode, (actual.mode, expected.mode)
    difference = ImageStat.Stat(ImageChops.difference(actual, expected)).mean
    assert max(difference) <= tolerance, difference


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels, about 100 KB on disk.

    Compressed row block by row block, so the test never holds the 112 MB of raw rows (and
    never the 900 megapixels a decoder would allocate).
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block = row * 1000
    chunks = [compressor.compress(block) for _ in range(height // 1000)]
    chunks.append(compressor.compress(row * (height % 1000)))
    chunks.append(compressor.flush())
    idat = b"".join(chunks)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
