"""The miner's configuration (env prefix ``CGN_MINER_``)."""

from __future__ import annotations

from dataclasses import dataclass

from cgn_common.config import Secret, option


@dataclass(frozen=True)
class MinerConfig:
    """Everything a miner reads at start."""

    node_address: str = option("127.0.0.1:8080", "The node's miner link, host:port.")
    miner_id: str = option("", "This miner's account id at Central.")
    miner_key: Secret = option(
        Secret(""),
        "This miner's API key, inline (prefer miner_key_file: a variable is readable wherever "
        "the process environment is).",
    )
    miner_key_file: str = option("", "File holding this miner's API key (mode 0600).")
    dservices: list[str] = option(["echo"], "Built-in DServices to offer.")
    descriptors: list[str] = option(
        [],
        "Descriptor files (dservice.toml) of further DServices to offer, comma-separated "
        "(docs/dservices.md).",
    )
    max_concurrent_work_units: int = option(16, "Work units run at once.")
    runtime: str = option("process", "DService runtime: 'process' (docker comes later).")
    state_dir: str = option(".", "Where the miner keeps DService sockets and temporary files.")
    reconnect_max_s: int = option(10, "Longest wait between reconnection attempts.")
    tls_ca_file: str = option(
        "",
        "The operator CA bundle that the node's certificate must chain to. Miners hold no "
        "certificate: they prove themselves with miner_id and miner_key.",
    )
    insecure_plaintext: bool = option(
        False, "DEVELOPMENT ONLY: connect without TLS (the key travels in clear). Logged loudly."
    )
    log_level: str = option("INFO", "Log level.")
