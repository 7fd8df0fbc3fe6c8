"""A small web service on a third-party stack (Starlette under uvicorn), with no CGN code in
it: the DService of the differential proxy suite (tests/test_dservice_proxy_sandbox.py). It
answers the same whether called directly or through the CGN; the suite compares the two.

Run: ``uvicorn app:app --host 127.0.0.1 --port 8080`` in this directory.
"""

from __future__ import annotations

import base64
import gzip
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

_HERE = Path(__file__).resolve().parent
_FILE = _HERE / "range.bin"
_ALL = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


async def reflect(request: Request) -> Response:
    """What arrived, as bytes (latin-1 in JSON): method, raw path, query, headers, body."""
    body = await request.body()
    answer = {
        "method": request.method,
        "raw_path": _text(request.scope["raw_path"]),
        "query": _text(request.scope["query_string"]),
        "headers": [[_text(n), _text(v)] for n, v in request.scope["headers"]],
        "body_b64": base64.b64encode(body).decode(),
    }
    return JSONResponse(answer, headers={"X-Reflected": "1"})


async def parsed(request: Request) -> Response:
    """The body as the framework parses it: JSON, a form, or multipart with a file."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        return JSONResponse({"json": await request.json()})
    form = await request.form()
    out: dict[str, list[object]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            out.setdefault(key, []).append(value)
        else:
            data = await value.read()
            b64 = base64.b64encode(data).decode()
            out.setdefault(key, []).append({"filename": value.filename, "b64": b64})
    return JSONResponse({"form": out})


async def status(request: Request) -> Response:
    return Response(status_code=int(request.path_params["code"]))


async def etag(request: Request) -> Response:
    tag = '"v1-abc"'
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers={"ETag": tag, "Cache-Control": "max-age=60"})
    return Response(b"versioned content\n", headers={"ETag": tag, "Cache-Control": "max-age=60"})


async def redirect(request: Request) -> Response:
    to = request.query_params.get("to", "/reflect/landed")
    response = RedirectResponse(to, status_code=int(request.path_params["code"]))
    response.set_cookie("redirected", "yes")
    return response


async def set_cookies(request: Request) -> Response:
    response = JSONResponse({"set": dict(request.query_params)})
    for key, value in request.query_params.multi_items():
        response.set_cookie(key, value, httponly=True)
    return response


async def big(request: Request) -> Response:
    """A compressible answer: the GZip middleware encodes it when asked to."""
    return Response(b"all work and no play " * 500, media_type="text/plain")


async def pregzipped(request: Request) -> Response:
    """An answer the service encodes itself, whatever the client accepts."""
    body = gzip.compress(b'{"pre": "compressed"}', mtime=0)
    return Response(body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})


async def ranged(request: Request) -> Response:
    return FileResponse(_FILE, media_type="application/octet-stream")


async def basic(request: Request) -> Response:
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    if request.headers.get("authorization") != expected:
        return Response(
            b"who are you?\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="httpapp"'},
        )
    return JSONResponse({"user": "alice"})


async def odd_headers(request: Request) -> Response:
    """Non-ASCII (UTF-8) header values, duplicates and mixed-case names, in a fixed order."""
    response = Response(b"odd\n", media_type="text/plain")
    response.raw_headers += [
        (b"X-Utf8", "naïve café ☕".encode()),
        (b"X-Dup", b"one"),
        (b"x-dup", b"two"),
        (b"X-MiXeD-CaSe", b"kept"),
    ]
    return response


async def latin1_header(request: Request) -> Response:
    response = Response(b"latin-1\n", media_type="text/plain")
    response.raw_headers.append((b"X-Latin1", b"caf\xe9"))
    return response


async def no_type(request: Request) -> Response:
    """A body with no Content-Type at all (a proxy must not invent one)."""
    response = Response(b"untyped")
    response.raw_headers = [(n, v) for n, v in response.raw_headers if n != b"content-type"]
    return response


async def hop(request: Request) -> Response:
    """Hop-by-hop headers and one named in Connection: none may reach the DApp."""
    response = Response(b"hop\n", media_type="text/plain")
    response.raw_headers += [
        (b"Connection", b"X-Private-Hop"),
        (b"X-Private-Hop", b"secret"),
        (b"Keep-Alive", b"timeout=5"),
    ]
    return response


app = Starlette(
    routes=[
        Route("/reflect/{rest:path}", reflect, methods=_ALL),
        Route("/reflect", reflect, methods=_ALL),
        Route("/parsed", parsed, methods=["POST"]),
        Route("/status/{code:int}", status, methods=_ALL),
        Route("/etag", etag),
        Route("/redirect/{code:int}", redirect, methods=_ALL),
        Route("/cookies/set", set_cookies),
        Route("/big", big),
        Route("/pregzipped", pregzipped),
        Route("/range", ranged),
        Route("/basic", basic),
        Route("/odd-headers", odd_headers),
        Route("/latin1-header", latin1_header),
        Route("/no-type", no_type),
        Route("/hop", hop),
    ],
    middleware=[Middleware(GZipMiddleware, minimum_size=4000)],
)
