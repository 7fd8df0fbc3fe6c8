"""The two server interceptors every CGN gRPC server runs (grpc-interceptor):

* :class:`ErrorInterceptor` turns exceptions into statuses, in one place: a ``CgnError`` keeps
  its code and safe message; anything else is logged with its traceback and answers
  ``INTERNAL`` with no internals.
* :class:`AuthorizationInterceptor` decides who may call which method from a declared table
  (:data:`Rules`). A method without an entry is refused, never open: adding an RPC means
  saying who may call it. A client certificate the operator revoked is refused on every
  method, before the table is read.

The caller an interceptor established (peer certificate identity, session claims) is handed
to the servicer through :func:`current_caller`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_interceptor import AsyncServerInterceptor

from cgn_common.certs import Identity, Role
from cgn_common.errors import CgnError, PermissionDeniedError, UnauthenticatedError
from cgn_common.logs import log_event
from cgn_common.status import grpc_status
from cgn_common.tls import AuthContext, RevocationList, peer_certificate, peer_identity

_log = logging.getLogger(__name__)

#: Methods every server offers without credentials: health checking and reflection.
STANDARD_PUBLIC_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)


@dataclass(frozen=True)
class Rule:
    """Who may call one method. Build with :meth:`public`, :meth:`peer`, :meth:`session`
    or :meth:`in_band`; a rule always says something."""

    roles: frozenset[Role] = frozenset()
    session: bool = False
    in_band: str = ""
    public: bool = False

    @classmethod
    def open_to_all(cls) -> Rule:
        """Anyone (read-only public information)."""
        return cls(public=True)

    @classmethod
    def peer(cls, *roles: Role) -> Rule:
        """A client certificate of the operator CA granting one of ``roles`` (mutual TLS)."""
        return cls(roles=frozenset(roles))

    @classmethod
    def with_session(cls, *roles: Role) -> Rule:
        """A valid session token; with ``roles``, also a peer certificate of one of them."""
        return cls(roles=frozenset(roles), session=True)

    @classmethod
    def checked_in_band(cls, how: str) -> Rule:
        """The method authenticates its caller itself; ``how`` says with what."""
        return cls(in_band=how)


#: Method full name ("/pkg.Service/Method") -> its rule.
Rules = Mapping[str, Rule]


def rules_for(service: str, methods: Iterable[str], rule: Rule) -> dict[str, Rule]:
    """The same ``rule`` for each named method of ``service`` (a full service name)."""
    return {f"/{service}/{m}": rule for m in methods}


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the interceptors established it."""

    identity: Identity | None = None
    session: Any = None


_NOBODY = Caller()
_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("cgn_caller", default=None)


def current_caller() -> Caller:
    """The caller of the RPC being served."""
    return _caller.get() or _NOBODY


def bearer_token(context: Any) -> str:
    """The bearer token from the call's ``authorization`` metadata, or ''."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


class AuthorizationInterceptor(AsyncServerInterceptor):
    """Refuses every call its table does not allow.

    ``verify_session`` checks a bearer token and returns its claims (raising
    UnauthenticatedError); servers with no session methods pass None. ``trust_plaintext``
    (the development flag) accepts a caller without a certificate for a role rule.
    ``revocations``, when given, refuses a client certificate it lists (a call without one is
    not affected).
    """

    def __init__(
        self,
        rules: Rules,
        server: str,
        verify_session: Callable[[str], Any] | None = None,
        trust_plaintext: bool = False,
        revocations: RevocationList | None = None,
    ) -> None:
        for name in STANDARD_PUBLIC_METHODS:
            rules = {name: Rule.open_to_all(), **rules}
        for name, rule in rules.items():
            if not (rule.public or rule.roles or rule.session or rule.in_band):
                raise ValueError(f"rule for {name} allows nobody: say who may call it")
            if rule.session and verify_session is None:
                raise ValueError(f"{name} needs a session verifier")
        self._rules = dict(rules)
        self._server = server
        self._verify_session = verify_session
        self._trust_plaintext = trust_plaintext
        self._revocations = revocations

    def _refuse_revoked(
        self, revocations: RevocationList, auth: AuthContext, method_name: str
    ) -> None:
        cert = peer_certificate(auth)
        if cert is None:
            return
        serial = revocations.revoked_serial(cert)
        if serial is None:
            return
        log_event(
            _log,
            "rpc_refused_revoked",
            logging.WARNING,
            server=self._server,
            method=method_name,
            peer=str(peer_identity(auth)),
            serial=format(serial, "x"),
        )
        raise UnauthenticatedError(
            "the client certificate has been revoked", reason="CERTIFICATE_REVOKED"
        )

    def _authorize(self, context: Any, method_name: str) -> Caller:
        auth = context.auth_context()
        if self._revocations is not None:
            self._refuse_revoked(self._revocations, auth, method_name)
        rule = self._rules.get(method_name)
        if rule is None:
            log_event(
                _log,
                "rpc_refused_no_rule",
                logging.WARNING,
                server=self._server,
                method=method_name,
            )
            raise PermissionDeniedError(
                f"{method_name} is not open to any caller", reason="NO_AUTHORIZATION_RULE"
            )
        identity = peer_identity(auth)
        if rule.roles and not (identity is None and self._trust_plaintext):
            if identity is None:
                raise UnauthenticatedError(
                    "a client certificate of the operator CA is required",
                    reason="CLIENT_CERTIFICATE_REQUIRED",
                )
            if identity.role not in rule.roles:
                log_event(
                    _log,
                    "rpc_refused_role",
                    logging.WARNING,
                    server=self._server,
                    method=method_name,
                    peer=str(identity),
                )
                raise PermissionDeniedError(
                    f"a {identity.role.value} certificate may not call this",
                    reason="ROLE_NOT_ALLOWED",
                )
        session = None
        if rule.session:
            assert self._verify_session is not None
            session = self._verify_session(bearer_token(context))
        return Caller(identity, session)

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: Any, method_name: str
    ) -> Any:
        _caller.set(self._authorize(context, method_name))
        result = method(request, context)
        if hasattr(result, "__aiter__"):
            return result
        return await result


async def _abort(context: Any, exc: Exception, method_name: str) -> None:
    if isinstance(exc, CgnError):
        error = exc
    else:
        log_event(_log, "rpc_internal_error", logging.ERROR, exc=exc, method=method_name)
        error = CgnError("internal error")
    await context.abort_with_status(grpc_status(error))


class ErrorInterceptor(AsyncServerInterceptor):
    """Turns every exception a servicer (or an inner interceptor) raises into a status."""

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: Any, method_name: str
    ) -> Any:
        try:
            result = method(request, context)
            if hasattr(result, "__aiter__"):
                return self._stream(result, context, method_name)
            return await result
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method_name)

    @staticmethod
    async def _stream(
        responses: AsyncIterator[Any], context: Any, method_name: str
    ) -> AsyncIterator[Any]:
        try:
            async for item in responses:
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method_name)
