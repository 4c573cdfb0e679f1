"""sd_notify spoken by hand (what is read from the environment; the messages on real sockets
are in tests/integration/test_notifier.py), and what a reload reports."""

from __future__ import annotations

import os

from agent.config import AgentConfig
from orch.daemon import Notifier, Reload, changed_settings, reload_keys


def test_without_a_notify_socket_nothing_is_sent() -> None:
    n = Notifier.from_environment({})
    assert not n.send(READY=1)
    assert n.watchdog_interval is None


def test_the_environment_is_read_and_cleared_so_children_do_not_inherit_it() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()),
           "OTHER": "1"}
    n = Notifier.from_environment(env)
    assert env == {"OTHER": "1"}
    assert n.watchdog_interval == 15.0  # half of WatchdogSec
    # a watchdog meant for another process (our parent's) is not ours to feed
    assert Notifier.from_environment({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000",
                                      "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_changed_settings_leaves_out_what_applies_live() -> None:
    a = AgentConfig(name="a", tags={"x": "1"}, keys=["k"], log_level="info")
    b = AgentConfig(name="a", tags={"x": "2"}, keys=["j"], log_level="debug", bind="10.0.0.1:7946")
    assert changed_settings(a, b, live=("tags",)) == ["bind"]
    assert changed_settings(a, b) == ["bind", "tags"]


def test_encryption_is_not_switched_on_by_a_reload() -> None:
    out = Reload()
    assert reload_keys(None, [], ["k"], out) is False
    assert out.needs_restart
    assert "restarting every member" in out.needs_restart[0]
    assert reload_keys(None, ["k"], ["k"], Reload()) is True  # unchanged: nothing to do
