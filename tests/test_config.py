"""Configuration: environment over file over default; secrets never print."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cgn_common.config import Secret, load_config
from cgn_common.errors import InvalidArgumentError
from cgn_common.logs import JsonFormatter
from cgn_node.config import NodeConfig


def test_environment_wins_over_file_and_file_over_default(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('node_id = "from-file"\nack_deadline_ms = 750\ndservices = ["a", "b"]\n')
    env = {"CGN_NODE_NODE_ID": "from-env", "CGN_NODE_SESSION_SECRET": "k"}
    config = load_config(NodeConfig, path=path, env_prefix="CGN_NODE_", environ=env)
    assert config.node_id == "from-env"
    assert config.ack_deadline_ms == 750
    assert config.dservices == ["a", "b"]
    assert config.session_ttl_s == 3600
    assert config.session_secret.reveal() == "k"


def test_unknown_option_and_bad_value_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("no_such_option = 1\n")
    with pytest.raises(InvalidArgumentError, match="no_such_option"):
        load_config(NodeConfig, path=path, env_prefix="CGN_NODE_", environ={})
    with pytest.raises(InvalidArgumentError, match="ack_deadline_ms"):
        load_config(
            NodeConfig, env_prefix="CGN_NODE_", environ={"CGN_NODE_ACK_DEADLINE_MS": "soon"}
        )


def test_secrets_never_print() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    config = NodeConfig(node_id="n", session_secret=secret)
    assert "hunter2" not in repr(config)
    record = logging.makeLogRecord({"msg": "event", "key": secret})
    assert "hunter2" not in JsonFormatter("test").format(record)
