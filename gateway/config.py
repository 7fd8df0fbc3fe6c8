"""The gateway's configuration (env prefix ``CGN_GATEWAY_``)."""

from __future__ import annotations

from dataclasses import dataclass

from cgn_common.config import option


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway reads at start."""

    listen: str = option("0.0.0.0:8000", "Where the gateway's HTTP server listens, host:port.")
    node_address: str = option("127.0.0.1:9090", "The node's work service, host:port.")
    max_control_body_bytes: int = option(
        64 * 1024, "Largest body on control endpoints (413 above)."
    )
    max_work_body_bytes: int = option(
        32 * 1024 * 1024, "Largest DService request body until streaming lands (413 above)."
    )
    request_timeout_s: int = option(300, "Deadline of one DService call through the node.")
    retry_after_s: int = option(1, "Retry-After seconds sent with 503 on node overload.")
    tls_ca_file: str = option("", "CA bundle to verify the node's certificate; empty: plaintext.")
    log_level: str = option("INFO", "Log level.")
