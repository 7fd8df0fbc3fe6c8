"""MediaGen end to end: MRLs through the sandbox's gateway, node and miners to the mediagen
DService, with scripts and images served by a loopback server in the test.

Every operation is compared with the same operation done directly in Pillow: pixel for pixel
for lossless formats, within ``JPEG_TOLERANCE`` (mean absolute difference per channel) for
JPEG and lossy WebP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from PIL import Image, ImageDraw, ImageFont, ImageOps

from tests.dservices.conftest import FileServer
from tests.dservices.images import (
    JPEG_TOLERANCE,
    assert_close_pixels,
    assert_same_pixels,
    decode,
    encode,
    logo,
    png_bomb,
    source,
)
from tests.helpers.sandbox import RunningSandbox

PAPER_SCRIPT = """var image = new Media();
image.load(name @ "car.tif");
image.rotate(angle @ 33);
image.save(type @ "jpeg");
"""

THUMB_SCRIPT = """function main(source, width = 128) {
    var image = new Media();
    image.load(name @ source);
    image.resize(width @ width);
    image.annotate(text @ "w=" + width, x @ 2, y @ 2, size @ 10, color @ "#ffff00");
    image.save(type @ "png");
}
"""

QUICK_SCRIPT = 'var m = new Media(width @ 2, height @ 2); m.save(type @ "png");'
LANCZOS = Image.Resampling.LANCZOS
BICUBIC = Image.Resampling.BICUBIC
WHITE = (255, 255, 255)


@dataclass
class Mgen:
    """Sends MRLs to mediagen through the gateway with a session token."""

    http: aiohttp.ClientSession
    base: str
    token: str

    async def call(
        self, params: dict[str, str], body: bytes | None = None
    ) -> tuple[int, str, bytes]:
        url = f"{self.base}/v1/dservices/mediagen/mgen/io?{urlencode(params)}"
        method = "POST" if body is not None else "GET"
        async with self.http.request(
            method, url, data=body, headers={"Authorization": f"Bearer {self.token}"}
        ) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.read()

    async def error(self, params: dict[str, str], body: bytes | None = None) -> tuple[int, Any]:
        status, content_type, data = await self.call(params, body)
        assert content_type.startswith("application/json"), (status, data[:200])
        assert b"Traceback" not in data
        return status, json.loads(data)["error"]

    async def assert_serving(self) -> None:
        status, content_type, _ = await self.call({"script_text": QUICK_SCRIPT})
        assert (status, content_type) == (200, "image/png")


@pytest.fixture
async def mgen(sandbox: RunningSandbox) -> AsyncIterator[Mgen]:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{sandbox.url}/v1/sessions",
            json={"account_id": sandbox.info["account_id"], "api_key": sandbox.info["api_key"]},
        ) as response:
            assert response.status == 200, await response.text()
            token = (await response.json())["token"]
        yield Mgen(http, sandbox.url, token)


async def test_the_white_papers_example(mgen: Mgen, files: FileServer) -> None:
    files.add("car.tif", encode(source(), "TIFF"), "image/tiff")
    script = files.add("car.ms", PAPER_SCRIPT, "text/plain")
    status, content_type, data = await mgen.call({"script": script})
    assert (status, content_type) == (200, "image/jpeg"), data[:300]
    rotated = source().rotate(-33, resample=BICUBIC, expand=True, fillcolor=WHITE)
    expected = decode(encode(rotated, "JPEG", quality=85))
    assert_close_pixels(decode(data), expected, JPEG_TOLERANCE)


async def test_positional_args_and_named_parameters_give_identical_bytes(
    mgen: Mgen, files: FileServer
) -> None:
    image = files.add("tomato.png", encode(source(), "PNG"), "image/png")
    script = files.add("ptag.ms", THUMB_SCRIPT)
    positional = await mgen.call({"script": script, "args": f'"{image}",64'})
    named = await mgen.call({"script": script, "source": image, "width": "64"})
    assert positional[0] == named[0] == 200
    assert positional[2] == named[2]
    assert decode(named[2]).size == (64, 43)
    default = await mgen.call({"script": script, "source": image})
    assert decode(default[2]).size == (128, 85)  # width defaults to 128


def _annotated(image: Image.Image) -> Image.Image:
    out = image.copy()
    font = ImageFont.load_default(size=20)
    ImageDraw.Draw(out).text((5, 6), "CGN 15", fill="#ff0000", font=font)
    return out


def _composited(
    image: Image.Image, top: Image.Image, x: int, y: int, opacity: float
) -> Image.Image:
    base = image.convert("RGBA")
    overlay = top.copy()
    overlay.putalpha(overlay.getchannel("A").point([round(v * opacity) for v in range(256)]))
    base.alpha_composite(overlay, dest=(x, y))
    return base.convert(image.mode)


def _oriented_png() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    return encode(source(), "PNG", exif=exif)


Expect = Callable[[Image.Image, Image.Image], Image.Image]

#: (id, script lines using ``m`` (loaded from the source) and ``logo``, expected result).
OPERATIONS: list[tuple[str, str, Expect]] = [
    ("load", "", lambda s, _: s),
    ("resize-width", "m.resize(width @ 64);", lambda s, _: s.resize((64, 43), LANCZOS)),
    ("resize-height", "m.resize(height @ 40);", lambda s, _: s.resize((60, 40), LANCZOS)),
    (
        "resize-contain",
        "m.resize(width @ 50, height @ 50);",
        lambda s, _: ImageOps.contain(s, (50, 50), LANCZOS),
    ),
    (
        "resize-cover",
        'm.resize(width @ 50, height @ 50, fit @ "cover");',
        lambda s, _: ImageOps.fit(s, (50, 50), LANCZOS),
    ),
    (
        "resize-fill",
        'm.resize(width @ 50, height @ 30, fit @ "fill");',
        lambda s, _: s.resize((50, 30), LANCZOS),
    ),
    (
        "resize-pad",
        'm.resize(width @ 50, height @ 50, fit @ "pad", background @ "#00ff00");',
        lambda s, _: ImageOps.pad(s, (50, 50), LANCZOS, color="#00ff00"),
    ),
    (
        "resize-nearest",
        'm.resize(30, 20, "fill", "nearest");',
        lambda s, _: s.resize((30, 20), Image.Resampling.NEAREST),
    ),
    (
        "crop",
        "m.crop(x @ 10, y @ 5, width @ 40, height @ 30);",
        lambda s, _: s.crop((10, 5, 50, 35)),
    ),
    (
        "rotate",
        "m.rotate(angle @ 33);",
        lambda s, _: s.rotate(-33, resample=BICUBIC, expand=True, fillcolor=WHITE),
    ),
    (
        "rotate-background",
        'm.rotate(angle @ -90, background @ "#ff0000", expand @ false);',
        lambda s, _: s.rotate(90, resample=BICUBIC, expand=False, fillcolor=(255, 0, 0)),
    ),
    (
        "rotate-transparent",
        'm.rotate(angle @ 45, background @ "transparent");',
        lambda s, _: s.convert("RGBA").rotate(
            -45, resample=BICUBIC, expand=True, fillcolor=(0, 0, 0, 0)
        ),
    ),
    ("flip", "m.flip();", lambda s, _: s.transpose(Image.Transpose.FLIP_TOP_BOTTOM)),
    ("flop", "m.flop();", lambda s, _: s.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    ("convert-l", 'm.convert(mode @ "L");', lambda s, _: s.convert("L")),
    ("convert-1", 'm.convert(mode @ "1");', lambda s, _: s.convert("1")),
    ("convert-rgba", 'm.convert(mode @ "RGBA");', lambda s, _: s.convert("RGBA")),
    (
        "annotate",
        'm.annotate(text @ "CGN 15", x @ 5, y @ 6, size @ 20, color @ "#ff0000");',
        lambda s, _: _annotated(s),
    ),
    (
        "composite",
        "var l = new Media(); l.load(name @ logo);"
        " m.composite(media @ l, x @ 10, y @ 12, opacity @ 0.5);",
        lambda s, lg: _composited(s, lg, 10, 12, 0.5),
    ),
    (
        "overlay",
        "var l = new Media(); l.load(logo); m.overlay(l, 90, 60);",
        lambda s, lg: _composited(s, lg, 90, 60, 1.0),
    ),
    (
        "copy",
        "var c = m.copy(); m.flip(); m = c;",
        lambda s, _: s,
    ),
    (
        "canvas",
        'm = new Media(width @ 30, height @ 20, color @ "#123456");',
        lambda s, _: Image.new("RGB", (30, 20), "#123456"),
    ),
    (
        "chained",
        "m.resize(width @ 60).rotate(angle @ 90).flop();",
        lambda s, _: (
            s.resize((60, 40), LANCZOS)
            .rotate(-90, resample=BICUBIC, expand=True, fillcolor=WHITE)
            .transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        ),
    ),
]


def _script(lines: str, save: str = 'type @ "png"') -> str:
    return (
        "function main(source, logo) {\n"
        "    var m = new Media();\n"
        "    m.load(name @ source);\n"
        f"    {lines}\n"
        f"    m.save({save});\n"
        "}\n"
    )


@pytest.fixture
def served(files: FileServer) -> dict[str, str]:
    """The named parameters pointing at the test images."""
    return {
        "source": files.add("source.png", encode(source(), "PNG"), "image/png"),
        "logo": files.add("logo.png", encode(logo(), "PNG"), "image/png"),
    }


@pytest.mark.parametrize(
    ("lines", "expected"), [(o[1], o[2]) for o in OPERATIONS], ids=[o[0] for o in OPERATIONS]
)
async def test_each_operation_matches_pillow(
    mgen: Mgen, files: FileServer, served: dict[str, str], lines: str, expected: Expect
) -> None:
    script = files.add("op.ms", _script(lines))
    status, content_type, data = await mgen.call({"script": script, **served})
    assert (status, content_type) == (200, "image/png"), data[:300]
    assert_same_pixels(decode(data), expected(source(), logo()))


async def test_load_applies_exif_orientation(mgen: Mgen, files: FileServer) -> None:
    image = files.add("oriented.png", _oriented_png(), "image/png")
    script = files.add("op.ms", _script(""))
    status, _, data = await mgen.call({"script": script, "source": image, "logo": ""})
    assert status == 200, data[:300]
    assert_same_pixels(decode(data), source().transpose(Image.Transpose.ROTATE_270))


#: (save arguments, Content-Type, expected decoded result, exact?)
SAVES: list[tuple[str, str, Callable[[Image.Image], Image.Image], bool]] = [
    ('type @ "tiff"', "image/tiff", lambda s: s, True),
    ('type @ "webp", lossless @ true', "image/webp", lambda s: s, True),
    ('type @ "gif"', "image/gif", lambda s: decode(encode(s, "GIF")), True),
    (
        'type @ "jpeg", quality @ 90',
        "image/jpeg",
        lambda s: decode(encode(s, "JPEG", quality=90)),
        False,
    ),
    (
        'type @ "webp", quality @ 80',
        "image/webp",
        lambda s: decode(encode(s, "WEBP", quality=80)),
        False,
    ),
]


@pytest.mark.parametrize(
    ("save", "content_type", "expected", "exact"),
    SAVES,
    ids=["tiff", "webp-lossless", "gif", "jpeg", "webp"],
)
async def test_save_formats(
    mgen: Mgen,
    files: FileServer,
    served: dict[str, str],
    save: str,
    content_type: str,
    expected: Callable[[Image.Image], Image.Image],
    exact: bool,
) -> None:
    script = files.add("save.ms", _script("", save))
    status, answered_type, data = await mgen.call({"script": script, **served})
    assert (status, answered_type) == (200, content_type), data[:300]
    want = expected(source())
    got = decode(data)
    if exact:
        assert_same_pixels(got.convert("RGB"), want.convert("RGB"))
    else:
        assert_close_pixels(got, want, JPEG_TOLERANCE)


async def test_inline_scripts(mgen: Mgen, files: FileServer) -> None:
    files.add("car.tif", encode(source(), "TIFF"), "image/tiff")
    body = PAPER_SCRIPT.replace('"jpeg"', '"png"').encode()
    status, _, data = await mgen.call({"base": files.url("scripts.ms")}, body)
    assert status == 200, data[:300]
    rotated = source().rotate(-33, resample=BICUBIC, expand=True, fillcolor=WHITE)
    assert_same_pixels(decode(data), rotated)
    as_param = await mgen.call({"script_text": body.decode(), "base": files.url("")})
    assert as_param[2] == data
    # Without a base, the relative name cannot be resolved: a 400 saying so.
    status, error = await mgen.error({}, body)
    assert (status, error["code"]) == (400, "bad_request")
    assert "base=" in error["message"]


async def test_result_written_to_an_output_url(
    mgen: Mgen, files: FileServer, served: dict[str, str]
) -> None:
    script = files.add("flip.ms", _script("m.flip();"))
    status, content_type, data = await mgen.call(
        {"script": script, "output": files.url("result.png"), **served}
    )
    assert (status, content_type.split(";")[0]) == (200, "application/json"), data[:300]
    receipt = json.loads(data)
    body, put_type = files.puts["result.png"]
    assert put_type == "image/png"
    assert receipt == {
        "output": files.url("result.png"),
        "status": 201,
        "content_type": "image/png",
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    assert_same_pixels(decode(body), source().transpose(Image.Transpose.FLIP_TOP_BOTTOM))


async def test_unsafe_inputs_are_clear_4xx_and_mediagen_keeps_serving(
    mgen: Mgen, files: FileServer, served: dict[str, str]
) -> None:
    thumb = files.add("thumb.ms", THUMB_SCRIPT)
    bomb = files.add("bomb.png", png_bomb(), "image/png")
    broken = files.add("broken.ms", "var image = new Media();\nimage.rotate(angle 33);\n")
    huge = files.add("huge.ms", "//" + "x" * 70_000)
    cases: list[tuple[str, dict[str, str], bytes | None, int, str, str]] = [
        (
            "file source",
            {"script": thumb, "source": "file:///etc/passwd"},
            None,
            400,
            "unsupported_scheme",
            "'file'",
        ),
        (
            "ftp script",
            {"script": "ftp://127.0.0.1/a.ms"},
            None,
            400,
            "unsupported_scheme",
            "only http and https",
        ),
        ("endless loop", {"script_text": "while (true) {}"}, None, 422, "limit_exceeded", "steps"),
        ("bomb", {"script": thumb, "source": bomb}, None, 413, "limit_exceeded", "900000000 px"),
        ("syntax error", {"script": broken}, None, 400, "script_syntax_error", "line 2, column 20"),
        (
            "fetched script too large",
            {"script": huge},
            None,
            413,
            "limit_exceeded",
            "larger than 65536 bytes",
        ),
        (
            "inline script too large",
            {},
            b"x" * 70_000,
            413,
            "limit_exceeded",
            "larger than 65536 bytes",
        ),
        (
            "unreachable source",
            {"script": thumb, "source": "http://127.0.0.1:1/a.png"},
            None,
            424,
            "fetch_failed",
            "connection refused",
        ),
        ("missing parameter", {"script": thumb}, None, 400, "bad_request", "'source'"),
        (
            "not an image",
            {"script": thumb, "source": thumb},
            None,
            415,
            "unsupported_media",
            "not an image",
        ),
    ]
    for name, params, body, status, code, text in cases:
        got_status, error = await mgen.error(params, body)
        assert (got_status, error["code"]) == (status, code), (name, error)
        assert text in error["message"], (name, error)
        await mgen.assert_serving()
