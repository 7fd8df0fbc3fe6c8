"""The gateway's configuration (env prefix ``CGN_GATEWAY_``)."""

from __future__ import annotations

from dataclasses import dataclass

from cgn_common.config import option


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway reads at start."""

    listen: str = option("0.0.0.0:8000", "Where the gateway's HTTP server listens, host:port.")
    node_address: str = option(
        "127.0.0.1:9091", "The node's internal port (mutual TLS), host:port."
    )
    max_control_body_bytes: int = option(
        64 * 1024, "Largest body on control endpoints (413 above)."
    )
    max_work_body_bytes: int = option(
        2 * 1024**3,
        "Largest DService request body (413 above, refused before it is read when "
        "Content-Length shows it); the node, the account and the DService may allow less.",
    )
    request_timeout_s: int = option(
        60,
        "Deadline of one DService call through the node; a DApp may ask for less with "
        "X-CGN-Timeout-Ms (the node caps it too).",
    )
    retry_after_s: int = option(1, "Retry-After seconds sent with 503 on node overload.")
    idle_timeout_s: int = option(
        20,
        "How long a connection may go without a complete request head: from connect and after "
        "each answer. Closes idle keep-alive connections and slow-header (slowloris) ones "
        "alike; aiohttp runs one timer for both (docs/gateway.md, Limits and timeouts). Longer "
        "than common clients' pool idle time (aiohttp's 15 s), so that a client does not reuse "
        "a kept connection just as the gateway closes it.",
    )
    body_timeout_s: int = option(
        30, "Longest wait for the next piece of a request body (408 and the connection closed)."
    )
    max_headers: int = option(100, "Most header lines in one request (431 above).")
    max_header_bytes: int = option(
        8190, "Longest request line, and longest header line (431 above)."
    )
    cors_allowed_origins: list[str] = option(
        [],
        "Origins (scheme://host[:port]) whose browser pages may call the gateway, comma-"
        "separated; `*` allows any. Empty: no CORS headers, and preflights are refused.",
    )
    cors_allowed_methods: list[str] = option(
        ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        "Methods a preflight may ask for.",
    )
    cors_allowed_headers: list[str] = option(
        [
            "Authorization",
            "Content-Type",
            "X-CGN-Session",
            "X-CGN-Timeout-Ms",
            "X-Request-Id",
        ],
        "Request headers a preflight may ask for (case-insensitive).",
    )
    cors_max_age_s: int = option(600, "How long a browser may cache a preflight's answer.")
    tls_cert_file: str = option(
        "", "This gateway's certificate (role gateway, from `cgn certs`), shown to the node."
    )
    tls_key_file: str = option("", "The private key of tls_cert_file.")
    tls_ca_file: str = option("", "The operator CA bundle the node's certificate chains to.")
    insecure_plaintext: bool = option(
        False, "DEVELOPMENT ONLY: talk to the node without TLS. Logged loudly when on."
    )
    https_cert_file: str = option(
        "",
        "Certificate chain DApps see (e.g. from a public CA); with https_key_file the gateway "
        "serves HTTPS. Empty: plain HTTP (only behind a TLS-terminating proxy or on loopback).",
    )
    https_key_file: str = option("", "The private key of https_cert_file.")
    log_level: str = option("INFO", "Log level.")
