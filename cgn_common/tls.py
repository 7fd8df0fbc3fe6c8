"""TLS for every gRPC link: server and channel credentials that follow certificate files as
they rotate, the peer identity a verified client certificate proves, and the operator's list of
revoked certificates.

Servers re-read their certificate, key and CA bundle on the first handshake after the files
change (gRPC asks on every handshake; a stat of three files answers), so certificates rotate
without a restart and connections already open keep working. Long-lived client channels use
:class:`ReloadingChannel`, which opens a fresh channel when the files change and lets calls on
the old one finish. Plaintext exists only behind the explicit ``insecure_plaintext``
development flag and is logged loudly.

Revocation is checked by servers, per call: :class:`RevocationList` follows the CRL file
(``tls_crl_file``) and the authorization interceptor refuses a client certificate it lists.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cgn_common.certs import Identity, crl_number, load_crl, revoked_serials
from cgn_common.errors import InvalidArgumentError
from cgn_common.logs import log_event

_log = logging.getLogger(__name__)

_RELOAD_CHECK_S = 1.0
_OLD_CHANNEL_GRACE_S = 60.0
#: Distinct client certificates whose serial is remembered (``_serial``).
_SERIAL_CACHE_SIZE = 1024
#: The auth-context key under which gRPC core gives the peer's verified leaf certificate.
_PEER_CERT_KEY = "x509_pem_cert"

#: What ``context.auth_context()`` returns: property name -> values.
AuthContext = Mapping[str, Sequence[bytes]]


class ClientAuth(enum.Enum):
    """Whether a server demands a client certificate from the operator CA."""

    #: Mutual TLS: the handshake fails without a certificate of the operator CA.
    REQUIRED = "required"
    #: Server-authenticated TLS: clients prove themselves in band (API key, session token).
    NONE = "none"


@dataclass(frozen=True)
class TlsConfig:
    """Where one process's TLS material lives.

    ``ca_file`` is the operator CA bundle (several CAs during a CA rotation). A process that
    presents no certificate of its own (a miner, a gRPC client) sets only ``ca_file``.
    ``insecure_plaintext`` turns TLS off for development and is refused unless set explicitly.
    ``crl_file`` is the operator's certificate revocation list: a server refuses the client
    certificates it lists (empty: no revocation checking).
    """

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    insecure_plaintext: bool = False
    crl_file: str = ""

    def check(self, *, need_cert: bool) -> None:
        """Raises InvalidArgumentError unless the material a process needs is configured."""
        if self.insecure_plaintext:
            return
        if not self.ca_file:
            raise InvalidArgumentError(
                "TLS is required: set tls_ca_file (and tls_cert_file/tls_key_file), or "
                "insecure_plaintext=true for local development only"
            )
        if need_cert and not (self.cert_file and self.key_file):
            raise InvalidArgumentError("tls_cert_file and tls_key_file are required")
        if self.crl_file:
            _load_crl(self)

    def fingerprint(self) -> tuple[tuple[int, int, int], ...]:
        """Changes whenever one of the files is replaced or rewritten."""
        return _marks(self.cert_file, self.key_file, self.ca_file)


def _marks(*paths: str) -> tuple[tuple[int, int, int], ...]:
    marks = []
    for path in paths:
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        marks.append((st.st_ino, st.st_mtime_ns, st.st_size) if st else (0, 0, 0))
    return tuple(marks)


def warn_if_plaintext(tls: TlsConfig, process: str) -> None:
    """Logs the development flag loudly, once per process start."""
    if tls.insecure_plaintext:
        log_event(
            _log,
            "insecure_plaintext_enabled",
            logging.WARNING,
            process=process,
            warning="INSECURE: TLS is off and peers are not authenticated; development only",
        )


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class _Material:
    cert: bytes
    key: bytes
    ca: bytes


def _load_material(tls: TlsConfig) -> _Material:
    """Reads the files and checks that the key belongs to the certificate."""
    cert, key, ca = _read(tls.cert_file), _read(tls.key_file), _read(tls.ca_file)
    try:
        public = x509.load_pem_x509_certificate(cert).public_key()
        private = serialization.load_pem_private_key(key, password=None)
    except ValueError as exc:
        raise InvalidArgumentError(f"cannot read TLS material: {exc}") from exc
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if public.public_bytes(enc, fmt) != private.public_key().public_bytes(enc, fmt):
        raise InvalidArgumentError(f"{tls.key_file} does not match {tls.cert_file}")
    return _Material(cert, key, ca)


class _ServerReloader:
    """gRPC's certificate-configuration fetcher: new material after the files change."""

    def __init__(self, tls: TlsConfig, name: str) -> None:
        self._tls = tls
        self._name = name
        self._mark = tls.fingerprint()
        self.initial = self._config(_load_material(tls))

    @staticmethod
    def _config(m: _Material) -> Any:
        return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], m.ca)

    def __call__(self) -> Any:
        mark = self._tls.fingerprint()
        if mark == self._mark:
            return None
        try:
            material = _load_material(self._tls)
        except (OSError, InvalidArgumentError) as exc:
            # Mid-rotation (a new key beside the old certificate): keep serving the old pair
            # and look again at the next handshake.
            log_event(
                _log, "tls_reload_deferred", logging.WARNING, server=self._name, error=str(exc)
            )
            return None
        self._mark = mark
        log_event(_log, "tls_reloaded", server=self._name)
        return self._config(material)


def server_credentials(tls: TlsConfig, client_auth: ClientAuth, name: str) -> Any:
    """Credentials for one listener that follow the files; None in plaintext mode."""
    if tls.insecure_plaintext:
        return None
    tls.check(need_cert=True)
    reloader = _ServerReloader(tls, name)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        reloader,
        require_client_authentication=client_auth is ClientAuth.REQUIRED,
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """Client credentials read from the files now (with a client certificate when set)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file),
        private_key=_read(tls.key_file) if tls.key_file else None,
        certificate_chain=_read(tls.cert_file) if tls.cert_file else None,
    )


def peer_identity(auth: AuthContext) -> Identity | None:
    """The CGN identity the peer's verified certificate proves, or None.

    ``auth`` is the call's ``context.auth_context()``. gRPC fills ``peer_spiffe_id`` only for a
    certificate the handshake verified against the configured CA bundle and that carries
    exactly one URI SAN.
    """
    values = auth.get("peer_spiffe_id")
    if not values:
        return None
    return _identity_of(values[0])


@functools.lru_cache(maxsize=1024)
def _identity_of(spiffe_id: bytes) -> Identity | None:
    """The identity a URI SAN names (parsed once per distinct peer, not once per call)."""
    return Identity.from_uri(spiffe_id.decode("utf-8", "replace"))


def peer_certificate(auth: AuthContext) -> bytes | None:
    """The PEM of the peer's verified leaf certificate, or None (no client certificate)."""
    values = auth.get(_PEER_CERT_KEY)
    return values[0] if values else None


def _load_crl(tls: TlsConfig) -> x509.CertificateRevocationList:
    """``tls.crl_file``, once a CA of ``tls.ca_file`` is seen to have signed it."""
    try:
        crl = load_crl(_read(tls.crl_file), _read(tls.ca_file))
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read tls_crl_file: {exc}") from exc
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"tls_crl_file {tls.crl_file}: {exc.message}") from exc
    next_update = crl.next_update_utc
    if next_update is not None and next_update < datetime.datetime.now(datetime.UTC):
        # Still the operator's latest word: enforcing it beats forgetting every revocation.
        log_event(
            _log,
            "crl_past_next_update",
            logging.WARNING,
            crl_file=tls.crl_file,
            next_update=next_update.isoformat(),
        )
    return crl


def _signer(crl: x509.CertificateRevocationList) -> bytes:
    """Which CA key signed ``crl`` (its authority key id; the issuer name when it has none)."""
    try:
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return crl.issuer.public_bytes()
    return aki.key_identifier or crl.issuer.public_bytes()


@functools.lru_cache(maxsize=_SERIAL_CACHE_SIZE)
def _serial(cert_pem: bytes) -> int:
    """The serial number of a PEM certificate (each distinct one parsed once)."""
    serial: int = x509.load_pem_x509_certificate(cert_pem).serial_number
    return serial


class RevocationList:
    """The client certificates the operator revoked (``tls.crl_file``), following the file.

    :meth:`revoked_serial` runs on every call a server takes: a clock read, a stat of the CRL
    and CA files at most once per ``check_interval_s``, and a dict lookup (each distinct
    certificate is parsed once; its serial is cached by PEM). The file is re-read when it (or
    the CA bundle) changes. A CRL that cannot be read or that no trusted CA signed is refused
    at construction; after a good load it is logged (``crl_reload_failed``) and the last good
    list stays in force until the files change again. So is an older CRL of the same CA key (a
    lower CRL number), which would bring revoked certificates back; a CRL of another CA of the
    bundle (after a CA rotation) starts its own numbering.
    """

    def __init__(
        self,
        tls: TlsConfig,
        name: str,
        *,
        check_interval_s: float = _RELOAD_CHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tls = tls
        self._name = name
        self._interval = check_interval_s
        self._clock = clock
        self._mark = _marks(tls.crl_file, tls.ca_file)
        crl = _load_crl(tls)
        self._revoked = revoked_serials(crl)
        self._signer, self._number = _signer(crl), crl_number(crl)
        self._checked = clock()

    @property
    def revoked(self) -> frozenset[int]:
        """The serial numbers in force."""
        return self._revoked

    def revoked_serial(self, cert_pem: bytes) -> int | None:
        """The serial of ``cert_pem`` (a PEM certificate) when it is revoked, else None."""
        now = self._clock()
        if now - self._checked >= self._interval:
            self._checked = now
            self._follow()
        if not self._revoked:
            return None
        serial = _serial(cert_pem)
        return serial if serial in self._revoked else None

    def _follow(self) -> None:
        mark = _marks(self._tls.crl_file, self._tls.ca_file)
        if mark == self._mark:
            return
        self._mark = mark
        try:
            crl = _load_crl(self._tls)
            if _signer(crl) == self._signer and crl_number(crl) < self._number:
                raise InvalidArgumentError(
                    f"CRL number {crl_number(crl)} is older than the one in force ({self._number})"
                )
        except InvalidArgumentError as exc:
            log_event(
                _log,
                "crl_reload_failed",
                logging.ERROR,
                server=self._name,
                error=exc.message,
                revoked_in_force=len(self._revoked),
            )
            return
        self._revoked = revoked_serials(crl)
        self._signer, self._number = _signer(crl), crl_number(crl)
        log_event(
            _log,
            "crl_reloaded",
            server=self._name,
            crl_number=self._number,
            revoked=len(self._revoked),
        )


class ReloadingChannel:
    """A long-lived client channel that is rebuilt when the certificate files change.

    ``get()`` is cheap (a clock read; a stat of three files at most once a second). A replaced
    channel is closed after its calls finish (bounded by a grace period).
    """

    def __init__(
        self,
        address: str,
        tls: TlsConfig,
        options: list[tuple[str, Any]],
    ) -> None:
        self._address = address
        self._tls = tls
        self._options = options
        self._mark = tls.fingerprint()
        self._checked = time.monotonic()
        self._channel = self._open()
        self._closing: set[asyncio.Task[None]] = set()
        self.generation = 0

    def _open(self) -> grpc.aio.Channel:
        if self._tls.insecure_plaintext:
            return grpc.aio.insecure_channel(self._address, options=self._options)
        return grpc.aio.secure_channel(
            self._address, channel_credentials(self._tls), options=self._options
        )

    def get(self) -> grpc.aio.Channel:
        """The current channel."""
        now = time.monotonic()
        if now - self._checked >= _RELOAD_CHECK_S:
            self._checked = now
            mark = self._tls.fingerprint()
            if mark != self._mark:
                self._replace(mark)
        return self._channel

    def _replace(self, mark: tuple[tuple[int, int, int], ...]) -> None:
        try:
            if self._tls.cert_file:
                _load_material(self._tls)
            fresh = self._open()
        except (OSError, InvalidArgumentError) as exc:
            log_event(_log, "tls_reload_deferred", logging.WARNING, error=str(exc))
            return
        old, self._channel, self._mark = self._channel, fresh, mark
        self.generation += 1
        log_event(_log, "tls_channel_reloaded", address=self._address)
        task = asyncio.get_running_loop().create_task(old.close(_OLD_CHANNEL_GRACE_S))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Closes the current channel and any still closing."""
        await self._channel.close()
        for task in list(self._closing):
            task.cancel()
