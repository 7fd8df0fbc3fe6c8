"""Central's configuration (env prefix ``CGN_CENTRAL_``)."""

from __future__ import annotations

from dataclasses import dataclass

from cgn_common.config import option


@dataclass(frozen=True)
class CentralConfig:
    """Everything Central reads at start."""

    database_url: str = option(
        "sqlite+aiosqlite:///central.db", "SQLAlchemy URL of the accounts and registry database."
    )
    admin_listen: str = option(
        "127.0.0.1:7700",
        "Where the admin services listen (loopback by default): mutual TLS, an operator "
        "certificate of the operator CA is required.",
    )
    replica_id: str = option(
        "central-1",
        "This replica's id, sent to nodes in CentralHello; must be the name in its certificate.",
    )
    tls_cert_file: str = option(
        "",
        "This replica's certificate (role central, from `cgn certs`): presented when dialing "
        "nodes and served on the admin port.",
    )
    tls_key_file: str = option("", "The private key of tls_cert_file.")
    tls_ca_file: str = option(
        "", "The operator CA bundle: node and operator certificates must chain to it."
    )
    tls_crl_file: str = option(
        "",
        "The operator CA's revocation list (`crl.pem` from `cgn certs`): operator certificates "
        "it lists are refused on the admin port from their next call. Re-read when it changes; "
        "must be signed by a CA of tls_ca_file. Empty: no revocation checking.",
    )
    insecure_plaintext: bool = option(
        False, "DEVELOPMENT ONLY: no TLS, peers unauthenticated. Logged loudly when on."
    )
    default_max_body_bytes: int = option(
        2 * 1024 * 1024 * 1024,
        "The largest request body, in bytes, of an account without a limit of its own "
        "(`cgn accounts set-body-limit`); nodes refuse a larger one (BODY_TOO_LARGE). "
        "Default 2 GiB; 0: none (only the nodes' own limits apply).",
    )
    log_level: str = option("INFO", "Log level.")
