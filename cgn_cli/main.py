"""``cgn central | node | miner run | gateway | sandbox | certs | accounts | ledger | dservice``.

Each process reads a TOML config file (``--config``), then environment variables
(``CGN_<ROLE>_<OPTION>``), which win. ``--ready-file`` makes the process write its bound
endpoints as JSON once it serves.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cgn_cli._accounts import accounts
from cgn_cli._certs import certs
from cgn_cli._dservice import dservice
from cgn_cli._ledger import ledger
from cgn_common.config import load_config
from cgn_common.errors import CgnError
from cgn_common.logs import setup_logging

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML config file.",
)
_ready_option = click.option(
    "--ready-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write bound endpoints here as JSON once serving.",
)


def _load(cls: type[Any], path: Path | None, prefix: str, role: str) -> Any:
    try:
        config = load_config(cls, path=path, env_prefix=prefix)
    except CgnError as exc:
        raise click.UsageError(exc.message) from exc
    setup_logging(role, config.log_level)
    return config


@click.group()
def cli() -> None:
    """Compute Generation Network."""


@cli.command()
@_config_option
@_ready_option
def central(config_path: Path | None, ready_file: Path | None) -> None:
    """Run Central (accounts, registries, outbound node links)."""
    from central.config import CentralConfig
    from central.server import run

    run(_load(CentralConfig, config_path, "CGN_CENTRAL_", "central"), ready_file)


@cli.command()
@_config_option
@_ready_option
def node(config_path: Path | None, ready_file: Path | None) -> None:
    """Run a regional node (work, miner link, status, central link)."""
    from cgn_node.config import NodeConfig
    from cgn_node.server import run

    run(_load(NodeConfig, config_path, "CGN_NODE_", "node"), ready_file)


@cli.group()
def miner() -> None:
    """The miner daemon."""


@miner.command("run")
@_config_option
@_ready_option
def miner_run(config_path: Path | None, ready_file: Path | None) -> None:
    """Run the miner daemon: start DServices, connect to the node, take work."""
    from miner.config import MinerConfig
    from miner.daemon import run

    run(_load(MinerConfig, config_path, "CGN_MINER_", "miner"), ready_file)


@cli.command()
@_config_option
@_ready_option
def gateway(config_path: Path | None, ready_file: Path | None) -> None:
    """Run the REST gateway."""
    from gateway.config import GatewayConfig
    from gateway.server import run

    run(_load(GatewayConfig, config_path, "CGN_GATEWAY_", "gateway"), ready_file)


cli.add_command(certs)
cli.add_command(accounts)
cli.add_command(ledger)
cli.add_command(dservice)


@cli.command()
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".sandbox"),
    show_default=True,
    help="Where the sandbox keeps databases, logs and sandbox.json.",
)
@click.option("--miners", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option(
    "--nodes",
    type=click.IntRange(1, 4),
    default=1,
    show_default=True,
    help="Regional nodes, each with its own gateway; miners are dealt to them in turn.",
)
@click.option(
    "--miner-tier",
    type=click.IntRange(1, 2),
    default=1,
    show_default=True,
    help="1: the demo enterprise's private miners; 2: data-centre miners any account may use.",
)
@click.option(
    "--dservices",
    default="echo,mediagen",
    show_default=True,
    help="Built-in DServices the miners offer (comma-separated; echo is always needed).",
)
@click.option(
    "--dservice",
    "descriptors",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A DService's descriptor (PATH/dservice.toml) that every sandbox miner offers; "
    "repeatable (docs/dservices.md).",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    help="An origin (scheme://host[:port]) whose browser pages may call the sandbox's "
    "gateways; repeatable (docs/gateway.md, CORS).",
)
def sandbox(
    state_dir: Path,
    miners: int,
    nodes: int,
    miner_tier: int,
    dservices: str,
    descriptors: tuple[Path, ...],
    cors_origins: tuple[str, ...],
) -> None:
    """Start a complete local CGN on loopback and keep it running until Ctrl-C."""
    from cgn_cli.sandbox import run_sandbox

    setup_logging("sandbox")
    from cgn_common.types import Tier

    sys.exit(
        run_sandbox(
            state_dir.resolve(),
            miners,
            Tier(miner_tier),
            dservices,
            nodes,
            list(descriptors),
            list(cors_origins),
        )
    )


def main() -> None:
    """Console entry point."""
    cli()
