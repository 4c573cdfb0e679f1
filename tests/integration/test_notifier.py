"""sd_notify spoken by hand to real unix datagram sockets: a path and an abstract name reach
the listener, a socket that is gone is not fatal. (The environment it is read from, and
reloads: tests/unit/orch/test_daemon.py; under a stand-in for systemd:
tests/integration/test_daemons.py.)"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from orch.daemon import Notifier


def test_messages_reach_a_path_socket_and_an_abstract_one(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        n = Notifier(str(path))
        assert n.send(READY=1, STATUS="serving")
        assert s.recv(100) == b"READY=1\nSTATUS=serving"
        n.close()
    name = f"orch-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        n = Notifier("@" + name)
        n.stopping()
        assert s.recv(100) == b"STOPPING=1\nSTATUS=stopping"
        n.close()


def test_a_missing_socket_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "gone"))
    assert not n.send(WATCHDOG=1)
    n.close()
