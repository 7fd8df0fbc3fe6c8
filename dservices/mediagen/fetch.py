"""HTTP(S) fetches for one MRL, run synchronously inside a worker process.

Every request, and every redirect hop (at most :data:`MAX_REDIRECTS`), goes through
:func:`~dservices.mediagen.policy.check_url` and the address policy; the connection is then
opened to the very address that was checked (the Host header and TLS SNI keep the name), so a
second DNS answer cannot swap in a forbidden address (DNS rebinding). Bodies are read in chunks
against a byte limit and the run's deadline.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin

from dservices.mediagen.errors import FetchError, LimitExceededError, MediaGenError
from dservices.mediagen.policy import AddressPolicy, check_url, shown

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_USER_AGENT = "cgn-mediagen/1"


@dataclass(frozen=True)
class FetchLimits:
    """Limits of the fetches of one MRL."""

    max_fetches: int
    timeout_s: float
    deadline: float  # time.monotonic() value


class Fetcher:
    """Makes the GETs and the PUT of one MRL under the policy and limits."""

    def __init__(self, policy: AddressPolicy, limits: FetchLimits, ca_file: str = "") -> None:
        self.policy = policy
        self.limits = limits
        self.count = 0
        self._ssl = ssl.create_default_context()
        if ca_file:
            self._ssl.load_verify_locations(ca_file)

    def get(self, url: str, max_bytes: int, what: str) -> bytes:
        """GETs ``url``, following up to 3 redirects, each hop checked again."""
        for _hop in range(MAX_REDIRECTS + 1):
            parts = check_url(url, what)
            connection = self._connect(parts, what)
            try:
                connection.request("GET", _target(parts), headers=_headers())
                response = connection.getresponse()
                if response.status in _REDIRECTS:
                    location = response.getheader("Location")
                    if not location:
                        raise FetchError(f"{what}: {shown(url)} redirects without a Location")
                    url = urljoin(url, location)
                    continue
                if not 200 <= response.status < 300:
                    raise FetchError(
                        f"{what}: GET {shown(url)} answered {response.status}",
                        upstream_status=response.status,
                    )
                return self._read(response, max_bytes, what, url)
            except MediaGenError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                raise FetchError(f"{what}: GET {shown(url)} failed: {_reason(exc)}") from None
            finally:
                connection.close()
        raise FetchError(f"{what}: more than {MAX_REDIRECTS} redirects from {shown(url)}")

    def put(self, url: str, data: bytes, content_type: str) -> int:
        """PUTs the result to ``url`` (redirects are not followed); returns the status."""
        parts = check_url(url, "output")
        connection = self._connect(parts, "output")
        try:
            connection.request(
                "PUT",
                _target(parts),
                body=data,
                headers={**_headers(), "Content-Type": content_type},
            )
            response = connection.getresponse()
            response.read(_CHUNK)
            if not 200 <= response.status < 300:
                raise FetchError(
                    f"output: PUT {shown(url)} answered {response.status}",
                    upstream_status=response.status,
                )
            return response.status
        except MediaGenError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"output: PUT {shown(url)} failed: {_reason(exc)}") from None
        finally:
            connection.close()

    def _connect(self, parts: SplitResult, what: str) -> http.client.HTTPConnection:
        self.count += 1
        if self.count > self.limits.max_fetches:
            raise LimitExceededError(
                f"more than {self.limits.max_fetches} fetches for one MRL",
                limit="max_fetches",
                value=self.limits.max_fetches,
                status=422,
            )
        host = parts.hostname or ""
        https = parts.scheme.lower() == "https"
        port = parts.port or (443 if https else 80)
        addresses = self.policy.resolve(host, port)
        timeout = self._timeout()
        sock: socket.socket | None = None
        failure: OSError | None = None
        for address in addresses:
            try:
                sock = socket.create_connection((str(address), port), timeout=timeout)
                break
            except OSError as exc:
                failure = exc
        if sock is None:
            reason = _reason(failure) if failure else "no address"
            raise FetchError(f"{what}: cannot connect to {host}:{port}: {reason}", host=host)
        connection: http.client.HTTPConnection
        if https:
            try:
                sock = self._ssl.wrap_socket(sock, server_hostname=host)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise FetchError(f"{what}: TLS with {host} failed: {_reason(exc)}") from None
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        connection.sock = sock  # connected to the checked address; never resolved again
        return connection

    def _timeout(self) -> float:
        remaining = self.limits.deadline - time.monotonic()
        if remaining <= 0:
            raise LimitExceededError(
                "the MRL ran out of wall time while fetching",
                limit="wall_time_ms",
                value=0,
                status=422,
            )
        return min(self.limits.timeout_s, remaining)

    def _read(
        self, response: http.client.HTTPResponse, max_bytes: int, what: str, url: str
    ) -> bytes:
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise _too_big(what, url, max_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            self._timeout()
            chunk = response.read1(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:
                raise _too_big(what, url, max_bytes)
            chunks.append(chunk)


def _too_big(what: str, url: str, max_bytes: int) -> LimitExceededError:
    limit = "max_script_bytes" if what == "script" else "max_fetch_bytes"
    return LimitExceededError(
        f"{what}: {shown(url)} is larger than {max_bytes} bytes", limit=limit, value=max_bytes
    )


def _target(parts: SplitResult) -> str:
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _headers() -> dict[str, str]:
    return {"User-Agent": _USER_AGENT, "Accept": "*/*", "Accept-Encoding": "identity"}


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return str(exc) or type(exc).__name__
