"""The gossip keyring as ``orchctl keyring`` changes it, kept across restarts.

Rotation, as in Serf: ``install`` a new key everywhere (every member opens packets
sealed with it), ``use`` it (every member seals with it), then ``remove`` the old one.
Each member writes its keys to ``<data_dir>/keyring.json`` after every change; on start
that file, when present, wins over the keys in the configuration (which only seed a
fresh member), so a restarted member comes back with the rotated keys.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from orch.errors import ConfigError
from orch.v1 import controller_pb2

if TYPE_CHECKING:
    from orch.gossip.transport import GossipNode

log = logging.getLogger("keyring")
FILE = "keyring.json"


def initial_keys(data_dir: str, configured: list[str]) -> list[str]:
    """The keys to start with: the keyring file's when it exists, else the configured ones."""
    path = Path(data_dir) / FILE
    try:
        keys = json.loads(path.read_text())
    except FileNotFoundError:
        return list(configured)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the gossip keyring {path}: {e}") from None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{path} must hold a list of base64 keys, the primary first")
    if configured and keys != list(configured):
        log.info("gossip keys come from the keyring file (rotated with orchctl keyring); "
                 "the configured keys are ignored", extra={"path": str(path)})
    return keys


def apply(gossip: GossipNode | None, req: controller_pb2.KeyringRequest, data_dir: str,
          member: str) -> controller_pb2.MemberKeyring:
    """Do ``req`` on this member's keyring and save it; the keys after, or the error."""
    out = controller_pb2.MemberKeyring(member=member)
    try:
        if gossip is None or gossip.keyring is None:
            raise ConfigError("gossip runs without encryption here (start every member with "
                              "a key to turn it on)")
        op = req.op
        if op == controller_pb2.KEYRING_OP_INSTALL:
            gossip.install_key(req.key)
        elif op == controller_pb2.KEYRING_OP_USE:
            gossip.use_key(req.key)
        elif op == controller_pb2.KEYRING_OP_REMOVE:
            gossip.remove_key(req.key)
        elif op != controller_pb2.KEYRING_OP_LIST:
            raise ConfigError("unknown keyring operation")
        keys = encoded(gossip)
        if op != controller_pb2.KEYRING_OP_LIST:
            save(data_dir, keys)
            log.info("gossip keyring changed", extra={
                "op": controller_pb2.KeyringOp.Name(op).removeprefix("KEYRING_OP_").lower(),
                "keys": len(keys)})
        out.keys.extend(keys)
    except (ConfigError, OSError, ValueError) as e:
        out.error = str(e)
    return out


def encoded(gossip: GossipNode | None) -> list[str]:
    """This member's gossip keys, base64, the primary first ([] without encryption)."""
    if gossip is None or gossip.keyring is None:
        return []
    installed = gossip.keyring.keys()
    return [base64.b64encode(k).decode() for k in installed]


def save(data_dir: str, keys: list[str]) -> None:
    """Write the keyring file (mode 0600): these keys, the primary first."""
    path = Path(data_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
