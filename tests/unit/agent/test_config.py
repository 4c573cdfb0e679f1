"""The agent's configuration: the example file loads; mistakes are named with their place."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.main import load_config, parse_args
from orch import config as configfile
from orch.errors import ConfigError
from orch.gossip.config import GossipConfig
from orch.net import parse_addr

EXAMPLE = Path(__file__).parents[3] / "deploy" / "config" / "agent.toml"


def test_the_example_file_loads() -> None:
    cfg = configfile.build(AgentConfig, configfile.load_toml(EXAMPLE), where=str(EXAMPLE))
    assert cfg.name == "agent-1"
    assert cfg.gossip.probe_interval == GossipConfig().probe_interval  # the defaults shown
    assert cfg.tags == {"datacenter": "dc1", "rack": "r12"}


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('name = "from-file"\njoin = ["10.0.0.1:7946"]\n[gossip]\nprobe_interval = 2\n')
    cfg = load_config(parse_args(["--config", str(f), "--name", "from-flag", "--tag", "role=web"]))
    assert cfg.name == "from-flag"
    assert cfg.join == ["10.0.0.1:7946"]
    assert cfg.gossip.probe_interval == 2.0
    assert cfg.tags == {"role": "web"}


@pytest.mark.parametrize(("text", "where", "what"), [
    ('nmae = "x"', "nmae", "unknown setting"),
    ("[gossip]\nprobe_interval = \"fast\"", "gossip.probe_interval", "expected float"),
    ("[gossip]\nprobe_timeout = 5.0", "gossip", "probe_timeout must be > 0 and <= probe_interval"),
    ("join = 5", "join", "expected a list"),
    ("name = ", "agent.toml", "not valid TOML"),
    ("exec_max_sessions = 0", "agent.toml", "exec_max_sessions must be >= 1"),
    ("exec_idle_timeout = -1", "agent.toml", "exec_idle_timeout must be > 0"),
])
def test_mistakes_say_where_and_what(tmp_path: Path, text: str, where: str, what: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(parse_args(["--config", str(f)]))
    assert where in str(e.value)
    assert what in str(e.value)


def test_addresses() -> None:
    assert parse_addr("127.0.0.2:7000") == ("127.0.0.2", 7000)
    assert parse_addr("127.0.0.2") == ("127.0.0.2", 7946)
    with pytest.raises(ConfigError, match="join"):
        parse_addr("host:port", where="join")
