"""The methods of a ``Media`` value, each a small function over Pillow. Every operation and its
arguments is documented in docs/mediascript.md; the table :data:`OPS` is the only way a script
reaches Pillow.

Arguments arrive already bound by name (see ``interpreter.bind``); the helpers here check
their types. Numbers that stand for pixels are rounded to the nearest whole pixel; a numeric
string is accepted where a number is expected (named MRL parameters without a default are
strings).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps

from dservices.mediagen.errors import LimitExceededError, ScriptRuntimeError
from dservices.mediagen.media import FORMATS, Media, MediaContext, Output, decode, encode

REQUIRED = object()
Args = dict[str, Any]

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
ROTATE_FILTERS = ("nearest", "bilinear", "bicubic")
FITS = ("contain", "cover", "fill", "pad")
MODES = {"1": "1", "l": "L", "la": "LA", "rgb": "RGB", "rgba": "RGBA", "grayscale": "L"}
MAX_TEXT_CHARS = 1000
MAX_FONT_SIZE = 1000


@dataclass(frozen=True)
class Op:
    """One method: its parameters (name, default or REQUIRED) and its implementation."""

    params: tuple[tuple[str, Any], ...]
    run: Callable[[MediaContext, Media, Args], Any]


def _number(op: str, name: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ScriptRuntimeError(f"{op}(): {name} must be a number, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, float | int) or not math.isfinite(value):
        raise ScriptRuntimeError(f"{op}(): {name} must be a finite number")
    return float(value)


def _pixels(op: str, name: str, value: Any, minimum: int = 0) -> int:
    number = round(_number(op, name, value))
    if number < minimum:
        raise ScriptRuntimeError(f"{op}(): {name} must be at least {minimum}")
    return number


def _choice(op: str, name: str, value: Any, choices: tuple[str, ...] | dict[str, Any]) -> str:
    text = value.lower() if isinstance(value, str) else ""
    if text not in choices:
        raise ScriptRuntimeError(f"{op}(): {name} must be one of {', '.join(choices)}")
    return text


def _color(op: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ScriptRuntimeError(f'{op}(): {name} must be a colour string such as "#ff8800"')
    try:
        ImageColor.getrgb(value)
    except ValueError:
        raise ScriptRuntimeError(f"{op}(): unknown colour {value!r}") from None
    return value


def _bool(op: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ScriptRuntimeError(f"{op}(): {name} must be true or false")
    return value


def _load(ctx: MediaContext, media: Media, a: Args) -> Media:
    if not isinstance(a["name"], str) or not a["name"]:
        raise ScriptRuntimeError("load(): name must be a URL or a name relative to the script")
    media.image = decode(ctx.fetch(a["name"]), ctx)
    return media


def _resize(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("resize")
    method = FILTERS[_choice("resize", "filter", a["filter"], FILTERS)]
    fit = _choice("resize", "fit", a["fit"], FITS)
    width = None if a["width"] is None else _pixels("resize", "width", a["width"], 1)
    height = None if a["height"] is None else _pixels("resize", "height", a["height"], 1)
    if width is None and height is None:
        raise ScriptRuntimeError("resize(): give width, height or both")
    if width is None or height is None:
        # One side given: the other keeps the aspect ratio.
        if width is None:
            assert height is not None
            width = max(1, round(image.width * height / image.height))
        else:
            height = max(1, round(image.height * width / image.width))
        fit = "fill"
    ctx.charge(width, height)
    if fit == "fill":
        media.image = image.resize((width, height), method)
    elif fit == "contain":
        media.image = ImageOps.contain(image, (width, height), method)
    elif fit == "cover":
        media.image = ImageOps.fit(image, (width, height), method)
    else:
        color = _color("resize", "background", a["background"])
        media.image = ImageOps.pad(image, (width, height), method, color=color)
    return media


def _crop(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("crop")
    x, y = _pixels("crop", "x", a["x"]), _pixels("crop", "y", a["y"])
    width = _pixels("crop", "width", a["width"], 1)
    height = _pixels("crop", "height", a["height"], 1)
    if x + width > image.width or y + height > image.height:
        raise ScriptRuntimeError(
            f"crop(): the box ({x}, {y}, {width} x {height}) is not inside the "
            f"{image.width} x {image.height} image"
        )
    ctx.charge(width, height)
    media.image = image.crop((x, y, x + width, y + height))
    return media


def _rotate(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("rotate")
    angle = _number("rotate", "angle", a["angle"])
    method = FILTERS[_choice("rotate", "filter", a["filter"], ROTATE_FILTERS)]
    expand = _bool("rotate", "expand", a["expand"])
    background = a["background"]
    if background == "transparent":
        image = image.convert("RGBA" if image.mode != "LA" else "LA")
        fill: Any = (0, 0, 0, 0) if image.mode == "RGBA" else (0, 0)
    else:
        fill = ImageColor.getcolor(_color("rotate", "background", background), image.mode)
    radians = math.radians(angle)
    cos, sin = abs(math.cos(radians)), abs(math.sin(radians))
    if expand:
        ctx.charge(
            math.ceil(image.width * cos + image.height * sin) + 1,
            math.ceil(image.width * sin + image.height * cos) + 1,
        )
    else:
        ctx.charge(image.width, image.height)
    # MediaScript turns clockwise for a positive angle; Pillow counter-clockwise.
    media.image = image.rotate(-angle, resample=method, expand=expand, fillcolor=fill)
    return media


def _flip(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("flip")
    ctx.charge(image.width, image.height)
    media.image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return media


def _flop(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("flop")
    ctx.charge(image.width, image.height)
    media.image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return media


def _convert(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("convert")
    mode = MODES[_choice("convert", "mode", a["mode"], MODES)]
    ctx.charge(image.width, image.height)
    media.image = image.convert(mode)
    return media


@functools.lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font (Aileron Regular, shipped inside Pillow) at ``size``."""
    return ImageFont.load_default(size=size)


def _annotate(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("annotate")
    text = a["text"]
    if not isinstance(text, str):
        raise ScriptRuntimeError("annotate(): text must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise ScriptRuntimeError(f"annotate(): text is longer than {MAX_TEXT_CHARS} characters")
    size = _pixels("annotate", "size", a["size"], 1)
    if size > MAX_FONT_SIZE:
        raise ScriptRuntimeError(f"annotate(): size must be at most {MAX_FONT_SIZE}")
    x, y = round(_number("annotate", "x", a["x"])), round(_number("annotate", "y", a["y"]))
    color = _color("annotate", "color", a["color"])
    ctx.charge(image.width, image.height)
    image = image.copy()
    ImageDraw.Draw(image).text((x, y), text, fill=color, font=font(size))
    media.image = image
    return media


def _composite(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("composite")
    other = a["media"]
    if not isinstance(other, Media):
        raise ScriptRuntimeError("composite(): media must be a Media")
    top = other.require("composite").convert("RGBA")
    x, y = _pixels("composite", "x", a["x"]), _pixels("composite", "y", a["y"])
    opacity = _number("composite", "opacity", a["opacity"])
    if not 0.0 <= opacity <= 1.0:
        raise ScriptRuntimeError("composite(): opacity must be between 0 and 1")
    ctx.charge(image.width, image.height)
    if opacity < 1.0:
        table = [round(v * opacity) for v in range(256)]
        top.putalpha(top.getchannel("A").point(table))
    base = image.convert("RGBA")
    base.alpha_composite(top, dest=(x, y))
    media.image = base if image.mode == "RGBA" else base.convert(image.mode)
    return media


def _copy(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("copy")
    ctx.charge(image.width, image.height)
    return Media(image.copy())


def _save(ctx: MediaContext, media: Media, a: Args) -> Media:
    image = media.require("save")
    kind = _choice("save", "type", a["type"], FORMATS)
    quality = _pixels("save", "quality", a["quality"], 1)
    if quality > 100:
        raise ScriptRuntimeError("save(): quality must be between 1 and 100")
    lossless = _bool("save", "lossless", a["lossless"])
    data, content_type = encode(image, kind, quality, lossless)
    if len(data) > ctx.limits.max_output_bytes:
        raise LimitExceededError(
            f"the saved image is {len(data)} bytes, over the limit of "
            f"{ctx.limits.max_output_bytes}",
            limit="max_output_bytes",
            value=ctx.limits.max_output_bytes,
        )
    ctx.output = Output(data, content_type)
    return media


def create(ctx: MediaContext, a: Args) -> Media:
    """``new Media()`` (empty) or ``new Media(width, height, color, mode)`` (a canvas)."""
    if a["width"] is None and a["height"] is None:
        return Media()
    width = _pixels("Media", "width", a["width"], 1)
    height = _pixels("Media", "height", a["height"], 1)
    mode = MODES[_choice("Media", "mode", a["mode"], MODES)]
    color = _color("Media", "color", a["color"])
    ctx.charge(width, height)
    return Media(Image.new(mode, (width, height), color))


CREATE_PARAMS: tuple[tuple[str, Any], ...] = (
    ("width", None),
    ("height", None),
    ("color", "#ffffff"),
    ("mode", "RGB"),
)

_BACKGROUND = "#ffffff"
OPS: dict[str, Op] = {
    "load": Op((("name", REQUIRED),), _load),
    "resize": Op(
        (
            ("width", None),
            ("height", None),
            ("fit", "contain"),
            ("filter", "lanczos"),
            ("background", _BACKGROUND),
        ),
        _resize,
    ),
    "crop": Op(
        (("x", REQUIRED), ("y", REQUIRED), ("width", REQUIRED), ("height", REQUIRED)), _crop
    ),
    "rotate": Op(
        (("angle", REQUIRED), ("background", _BACKGROUND), ("expand", True), ("filter", "bicubic")),
        _rotate,
    ),
    "flip": Op((), _flip),
    "flop": Op((), _flop),
    "convert": Op((("mode", REQUIRED),), _convert),
    "annotate": Op(
        (("text", REQUIRED), ("x", 0.0), ("y", 0.0), ("size", 16.0), ("color", "#000000")),
        _annotate,
    ),
    "composite": Op((("media", REQUIRED), ("x", 0.0), ("y", 0.0), ("opacity", 1.0)), _composite),
    "copy": Op((), _copy),
    "save": Op((("type", "jpeg"), ("quality", 85.0), ("lossless", False)), _save),
}
OPS["overlay"] = OPS["composite"]

#: Read-only properties of a Media value.
PROPERTIES: dict[str, Callable[[Image.Image], Any]] = {
    "width": lambda image: float(image.width),
    "height": lambda image: float(image.height),
    "mode": lambda image: image.mode,
}
