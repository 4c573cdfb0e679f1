"""Configuration files (TOML) and flags onto the daemons' frozen dataclasses.

Each daemon has one configuration dataclass with every default written once,
beside its meaning; what both daemons share is ``DaemonConfig``, which both
extend (so its settings stay at the top level of either file). This module
moves values onto those objects and says clearly where a value is wrong.
"""

from __future__ import annotations

import dataclasses
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from orch.errors import ConfigError
from orch.gossip.config import GossipConfig
from orch.net import GOSSIP_PORT
from orch.tls import TlsConfig

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """The settings of every daemon: its gossip membership, its gRPC listener, its state
    directory, metrics, TLS and logs. The agent's and the controller's configurations
    extend it and set their own defaults where they differ (name, rpc_addr, metrics_addr).
    """

    name: str = field(default_factory=socket.gethostname)
    """This member's name in the gossip cluster (unique); the host name by default."""
    bind: str = f"0.0.0.0:{GOSSIP_PORT}"
    """Gossip address (UDP and TCP on the same port)."""
    advertise: str = ""
    """Gossip address other members use to reach this one; the bind address unless it is
    0.0.0.0."""
    join: list[str] = field(default_factory=list)
    """Gossip seeds host:port; retried with backoff until one answers."""
    keys: list[str] = field(default_factory=list)
    """Gossip encryption keys (base64, 16/24/32 bytes); the first is primary. Empty: no
    encryption (only for trusted networks)."""
    data_dir: str = "/var/lib/orch"
    """State directory (the gossip keyring and member snapshot; the controller's database,
    the agent's tasks)."""
    rpc_addr: str = ""
    """This daemon's gRPC address (port 0 picks a free one)."""
    rpc_advertise: str = ""
    """gRPC address given to others; by default the rpc_addr (an agent bound to 0.0.0.0
    gives its gossip address's host; a controller needs it then)."""
    metrics_addr: str = ""
    """Where /metrics is served (Prometheus); empty: not served."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """mTLS with certificates made by hand (CA, this daemon's certificate and key). Empty:
    the ones a bootstrap or a join left in ``data_dir/pki``, the usual way."""
    join_token: str = ""
    """A join token (``orchctl cluster join-token agent|controller``): the first start gets
    this daemon's certificate, the CA and the gossip keys with it, through ``controllers``;
    later starts need it no more. Better kept out of the file: ``join_token_file``, or the
    environment's ``ORCH_JOIN_TOKEN``."""
    join_token_file: str = ""
    """A file holding the join token (read at the first start only; waited for a while when
    it does not exist yet, as on the host where the first controller is bootstrapping)."""
    controllers: list[str] = field(default_factory=list)
    """Controller gRPC addresses: where a joining daemon asks for its certificate and
    renews it, and where an agent streams (empty for an agent: found through gossip)."""
    insecure: bool = False
    """Serve gRPC in plain text on an address other than loopback (a laptop, a lab). Off,
    a daemon without TLS refuses to start on anything but 127.0.0.0/8 or ::1."""
    cert_days: float = 90.0
    """Lifetime of the certificates controllers issue (Swarm's default); each daemon
    renews its own when a third of it is left."""
    log_level: str = "info"
    log_format: str = "auto"
    """json, human, or auto (human on a terminal)."""
    gossip: GossipConfig = field(default_factory=GossipConfig)


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a syntax error names the file and the line."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", where=str(p)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", where=str(p)) from None


def build(cls: type[T], values: dict[str, Any], *, where: str = "") -> T:
    """Make ``cls`` (a dataclass) from ``values``, checking names and types.

    Nested dataclass fields take nested tables. Unknown keys and wrong types
    raise ConfigError naming ``where.key``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        name = key.replace("-", "_")
        at = f"{where}.{key}" if where else key
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown setting (known: {known})", where=at)
        kwargs[name] = _coerce(hints[name], raw, at)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e), where=where or cls.__name__) from None


def _coerce(tp: Any, raw: Any, at: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if raw is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, raw, at)
            except ConfigError:
                continue
        raise ConfigError(f"expected {tp}, got {raw!r}", where=at)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a table, got {raw!r}", where=at)
        return build(tp, raw, where=at)
    if origin in (list, tuple):
        if not isinstance(raw, list | tuple):
            raise ConfigError(f"expected a list, got {raw!r}", where=at)
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(inner, x, f"{at}[{i}]") for i, x in enumerate(raw)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"expected a table, got {raw!r}", where=at)
        return dict(raw)
    if tp is Any:
        return raw
    if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if tp is bool and not isinstance(raw, bool):
        raise ConfigError(f"expected true or false, got {raw!r}", where=at)
    if isinstance(tp, type) and not isinstance(raw, tp):
        raise ConfigError(f"expected {tp.__name__}, got {raw!r}", where=at)
    return raw
