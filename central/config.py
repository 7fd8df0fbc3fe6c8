"""Central's configuration (env prefix ``CGN_CENTRAL_``)."""

from __future__ import annotations

from dataclasses import dataclass

from cgn_common.config import Secret, option


@dataclass(frozen=True)
class CentralConfig:
    """Everything Central reads at start."""

    database_url: str = option(
        "sqlite+aiosqlite:///central.db", "SQLAlchemy URL of the accounts and registry database."
    )
    admin_listen: str = option(
        "127.0.0.1:7700", "Where the operator-authenticated admin services listen (loopback)."
    )
    operator_token: Secret = option(
        Secret(""), "Bearer token operators present to the admin services; empty refuses all."
    )
    replica_id: str = option("central-1", "This replica's id, sent to nodes in CentralHello.")
    tls_cert_file: str = option(
        "", "TLS certificate for dialing nodes (mutual TLS); empty: plaintext."
    )
    tls_key_file: str = option("", "TLS private key matching tls_cert_file.")
    tls_ca_file: str = option("", "CA bundle that signs node certificates.")
    log_level: str = option("INFO", "Log level.")
