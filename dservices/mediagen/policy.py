"""Which URLs MediaGen may fetch: only ``http`` and ``https``, and only hosts whose every
resolved address the :class:`AddressPolicy` allows. A fetch from a miner's machine must not
reach that machine's own services or its private network, so loopback and private ranges are
refused unless a setting allows them; link-local (cloud metadata), multicast and unspecified
addresses are always refused.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from dservices.mediagen.errors import (
    AddressRefusedError,
    FetchError,
    RequestError,
    UnsupportedSchemeError,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SCHEMES = ("http", "https")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, private in effect


@dataclass(frozen=True)
class AddressPolicy:
    """The address ranges a fetch may connect to."""

    allow_loopback: bool = False
    allow_private: bool = False

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` is refused, or None when it is allowed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback:
            return None if self.allow_loopback else "a loopback address"
        if address.is_link_local:
            return "a link-local address"
        if address.is_multicast:
            return "a multicast address"
        if address.is_unspecified:
            return "an unspecified address"
        if address.is_private or address in _SHARED or not address.is_global:
            return None if self.allow_private else "a private or reserved address"
        return None

    def check(self, host: str, address: IPAddress) -> None:
        """Raises :class:`AddressRefusedError` when ``address`` is refused."""
        reason = self.refusal(address)
        if reason is not None:
            raise AddressRefusedError(
                f"{host} {'is' if host == str(address) else f'resolves to {address},'} "
                f"{reason}: refused by the address policy",
                host=host,
            )

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` resolves to, each checked; refuses if any is refused (a
        name with one public and one private address is refused, not half-trusted)."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            self.check(host, literal)
            return [literal]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError(f"cannot resolve {host}: {exc}", host=host) from None
        addresses: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            self.check(host, address)
            if address not in addresses:
                addresses.append(address)
        return addresses


def check_url(url: str, what: str) -> SplitResult:
    """Parses ``url`` and refuses anything but an absolute http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise RequestError(f"{what}: {url!r} is not a valid URL") from None
    if parts.scheme.lower() not in SCHEMES:
        scheme = parts.scheme or "(none)"
        raise UnsupportedSchemeError(
            f"{what}: the scheme {scheme!r} is not supported; only http and https URLs",
            scheme=scheme,
        )
    if not parts.hostname:
        raise RequestError(f"{what}: {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise RequestError(f"{what}: URLs with credentials (user@host) are not accepted")
    return parts


def shown(url: str) -> str:
    """``url`` without its query and fragment, for messages (a query may hold a signature)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
