"""The node's configuration (env prefix ``CGN_NODE_``)."""

from __future__ import annotations

from dataclasses import dataclass

from cgn_common.config import Secret, option


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node reads at start. Ports are the paper's production defaults."""

    node_id: str = option("", "This node's account id at Central (an ACCOUNT_KIND_NODE account).")
    work_listen: str = option(
        "0.0.0.0:9090",
        "WorkService + SessionService for internal gRPC clients: server-authenticated TLS, "
        "callers prove themselves with an API key or session token.",
    )
    internal_listen: str = option(
        "0.0.0.0:9091",
        "WorkService + SessionService for the CGN's own processes (gateways): mutual TLS, "
        "a gateway certificate of the operator CA is required.",
    )
    miner_link_listen: str = option(
        "0.0.0.0:8080",
        "MinerLinkService, where miners dial in: server-authenticated TLS; a miner proves "
        "itself with its API key, checked by Central.",
    )
    status_listen: str = option(
        "0.0.0.0:5551", "NodeStatusService: public and read-only, server-authenticated TLS."
    )
    central_link_listen: str = option(
        "0.0.0.0:7771",
        "CentralLinkService, where Central dials in: mutual TLS, only a Central certificate "
        "of the operator CA is accepted.",
    )
    session_secret: Secret = option(
        Secret(""),
        "HMAC key for session tokens, inline (prefer session_key_file: a variable is readable "
        "wherever the process environment is). Every process of one node must share it.",
    )
    session_key_file: str = option(
        "",
        "File holding the HMAC key for session tokens (mode 0600; made with 32 random bytes "
        "when missing), shared by every process of the node so sessions survive a restart. "
        "Neither this nor session_secret: a random key per start (sessions end with it).",
    )
    session_ttl_s: int = option(3600, "How long a session token is accepted, in seconds.")
    sessions_max_stale_ms: int = option(
        5000,
        "After the node loses its last link to Central, how long session tokens are still "
        "accepted; then, and after a start until the first revocation sync, they are "
        "refused with 503 SESSIONS_UNCONFIRMED. This bounds how late a revocation can "
        "take effect.",
    )
    ack_deadline_ms: int = option(500, "How long a miner has to acknowledge an assignment.")
    lease_ms: int = option(
        3000,
        "Heartbeat lease of a running unit: a miner not heard from (progress, response) for "
        "this long is sent a WorkCancel and dropped, and the work is re-dispatched.",
    )
    drain_grace_ms: int = option(
        5000,
        "At shutdown, how long miners may finish work in flight after a Drain before the "
        "node stops.",
    )
    max_work_body_bytes: int = option(
        32 * 1024 * 1024,
        "Largest request body of a unary WorkService.Call (INVALID_ARGUMENT above); larger "
        "bodies go through CallStream.",
    )
    max_stream_body_bytes: int = option(
        2 * 1024**3,
        "Largest request body of a WorkService.CallStream (BODY_TOO_LARGE above, 413 at the "
        "gateway); an account's and a DService's own limits may be lower.",
    )
    spool_dir: str = option(
        "",
        "Where streamed request bodies over 1 MiB wait on disk while their work runs, so a "
        "re-dispatch can resend them (files are unlinked at once); empty: the system's "
        "temporary directory.",
    )
    max_spool_bytes: int = option(
        8 * 1024**3,
        "Disk that request bodies in flight may take at once; past it a new body is refused "
        "with RESOURCE_EXHAUSTED (SPOOL_FULL) until some finish.",
    )
    max_timeout_ms: int = option(
        60_000, "Longest deadline of one request; a caller's longer deadline is capped to it."
    )
    account_limit: int = option(
        256, "Work units one account may have waiting or running; past it: 429 + Retry-After."
    )
    appear_grace_ms: int = option(
        5000,
        "How long a request waits for a miner that may run it to connect when none is "
        "connected, before 503 naming why.",
    )
    ledger_url: str = option(
        "",
        "This node's microtransaction ledger (required): sqlite:///PATH (WAL) or "
        "postgresql+psycopg://... One database per node; docs/ledger.md.",
    )
    currency: str = option("EUR", "The fiat currency this node prices work in (ISO 4217).")
    sandbox_rate_nano_per_coin: int = option(
        500_000_000,
        "The fixed CPUcoin rate of the sandbox rate source, in nano-units of `currency` per "
        "coin. A production node plugs a real rate source in its place (docs/pricing.md).",
    )
    dispatch_attempts: int = option(5, "Most dispatches of one work unit before it fails.")
    queue_danger_threshold: int = option(
        1000, "Waiting work units per DService past which new work gets RESOURCE_EXHAUSTED."
    )
    central_timeout_s: int = option(10, "How long a question to Central may take.")
    dservices: list[str] = option([], "DService names this node serves even with no miner online.")
    region: str = option("local", "The data-flow region of this node.")
    tls_cert_file: str = option(
        "", "This node's certificate (role node, from `cgn certs`), served on every listener."
    )
    tls_key_file: str = option("", "The private key of tls_cert_file.")
    tls_ca_file: str = option(
        "", "The operator CA bundle that client certificates must chain to (mutual TLS)."
    )
    tls_crl_file: str = option(
        "",
        "The operator CA's revocation list (`crl.pem` from `cgn certs`): Central and gateway "
        "certificates it lists are refused from their next call. Re-read when it changes; "
        "must be signed by a CA of tls_ca_file. Empty: no revocation checking.",
    )
    insecure_plaintext: bool = option(
        False, "DEVELOPMENT ONLY: no TLS, peers unauthenticated. Logged loudly when on."
    )
    log_level: str = option("INFO", "Log level.")
