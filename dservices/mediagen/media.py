"""Images as MediaScript sees them: the :class:`Media` value, the per-run
:class:`MediaContext` (limits, fetching, the saved output) and the decode/encode steps.

Decoding is the dangerous part: the size is read from the header (``Image.open`` decodes
nothing) and checked against ``max_image_pixels`` before any pixel is decoded, so a
decompression bomb is refused while it is still a few kilobytes.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageOps

from dservices.mediagen.errors import LimitExceededError, ScriptRuntimeError, UnsupportedMediaError

#: ``save(type @ ...)`` names -> (Pillow format, Content-Type).
FORMATS: dict[str, tuple[str, str]] = {
    "jpeg": ("JPEG", "image/jpeg"),
    "jpg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
    "gif": ("GIF", "image/gif"),
    "tiff": ("TIFF", "image/tiff"),
    "tif": ("TIFF", "image/tiff"),
}
#: Modes kept as loaded; every other mode is converted on load (see :func:`normalize_mode`).
KEPT_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA"})


@dataclass(frozen=True)
class MediaLimits:
    """The limits media operations enforce (documented in docs/mediagen.md)."""

    max_image_pixels: int
    max_total_pixels: int
    max_output_bytes: int


@dataclass(frozen=True)
class Output:
    """What ``save`` produced: the encoded bytes and their Content-Type."""

    data: bytes
    content_type: str


class Media:
    """A script's ``new Media()``: holds one Pillow image (or none before ``load``)."""

    __slots__ = ("image",)

    def __init__(self, image: Image.Image | None = None) -> None:
        self.image = image

    def require(self, op: str) -> Image.Image:
        """The image, or a script error naming ``op`` when nothing is loaded yet."""
        if self.image is None:
            raise ScriptRuntimeError(f"{op}(): the media is empty; load() an image first")
        return self.image


class MediaContext:
    """Everything media operations may touch during one run, and nothing else."""

    def __init__(
        self,
        limits: MediaLimits,
        fetch: Callable[[str], bytes],
        check_deadline: Callable[[], None],
    ) -> None:
        self.limits = limits
        self.fetch = fetch
        self.check_deadline = check_deadline
        self.output: Output | None = None
        self.pixels_used = 0

    def charge(self, width: int, height: int) -> None:
        """Accounts for an image about to be made; refuses sizes past the limits."""
        pixels = width * height
        if pixels > self.limits.max_image_pixels:
            raise LimitExceededError(
                f"an image of {width} x {height} pixels exceeds the limit of "
                f"{self.limits.max_image_pixels} pixels",
                limit="max_image_pixels",
                value=self.limits.max_image_pixels,
            )
        self.pixels_used += pixels
        if self.pixels_used > self.limits.max_total_pixels:
            raise LimitExceededError(
                f"the script processed more than {self.limits.max_total_pixels} pixels in total",
                limit="max_total_pixels",
                value=self.limits.max_total_pixels,
            )


def normalize_mode(image: Image.Image) -> Image.Image:
    """Palette images become RGBA (with transparency) or RGB; CMYK, YCbCr, LAB, HSV become
    RGB; 16/32-bit and float images become L. Modes 1, L, LA, RGB, RGBA stay."""
    if image.mode in KEPT_MODES:
        return image
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if image.mode.startswith(("I", "F")):
        return image.convert("L")
    return image.convert("RGB")


def decode(data: bytes, context: MediaContext) -> Image.Image:
    """Bytes -> an image: header checked against the pixel limit first, then decoded, then
    turned upright by its EXIF orientation and given a supported mode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard (Image.MAX_IMAGE_PIXELS, set by the worker) fired on the header.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _bomb(context, pixels=int(found.group(1)) if found else 0) from None
    except Exception:
        raise UnsupportedMediaError("the fetched data is not an image MediaGen can read") from None
    width, height = image.size
    if width * height > context.limits.max_image_pixels:
        raise _bomb(context, width, height)
    context.charge(width, height)
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
    except MemoryError:
        raise _bomb(context, width, height) from None
    except Exception:
        raise UnsupportedMediaError("the image data is corrupt or truncated") from None
    return normalize_mode(upright)


def _bomb(
    context: MediaContext, width: int = 0, height: int = 0, pixels: int = 0
) -> LimitExceededError:
    size = f" ({width} x {height})" if width else f" ({pixels} px)" if pixels else ""
    return LimitExceededError(
        f"the image{size} exceeds the limit of {context.limits.max_image_pixels} pixels; "
        "it was refused before decoding",
        limit="max_image_pixels",
        value=context.limits.max_image_pixels,
    )


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """An image without alpha, transparent areas laid on ``background`` (for JPEG)."""
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        base = Image.new("RGB", rgba.size, background)
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    if image.mode == "1":
        return image.convert("L")
    return image


def encode(image: Image.Image, kind: str, quality: int, lossless: bool) -> tuple[bytes, str]:
    """Encodes for ``save``: (bytes, Content-Type). ``kind`` is a key of :data:`FORMATS`."""
    pil_format, content_type = FORMATS[kind]
    buffer = io.BytesIO()
    if pil_format == "JPEG":
        flatten(image).save(buffer, "JPEG", quality=quality)
    elif pil_format == "WEBP":
        image.save(buffer, "WEBP", quality=quality, lossless=lossless)
    elif pil_format == "TIFF":
        image.save(buffer, "TIFF", compression="tiff_lzw")
    else:
        image.save(buffer, pil_format)
    return buffer.getvalue(), content_type
