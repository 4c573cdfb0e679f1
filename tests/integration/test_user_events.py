"""User events on real sockets: `orchctl event fire` reaches every member once, and the leader
records it; a bad event is refused with a clear error."""

from __future__ import annotations

from pathlib import Path

from orch.gossip.messages import UserEvent
from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until


async def test_an_event_reaches_every_member_once_and_is_recorded(tmp_path: Path) -> None:
    async with live_cluster(tmp_path, agents=3, net="127.0.9") as (ctl, agents):
        got: dict[str, list[UserEvent]] = {a.cfg.name: [] for a in agents}
        for a in agents:
            assert a.gossip is not None
            a.gossip.on_user_event(lambda e, n=a.cfg.name: got[n].append(e))  # type: ignore[misc]
        cli = Cli(ctl.rpc_address, tmp_path)
        text = await cli("event", "fire", "deploy", "v2")
        assert "fired from" in text
        await wait_until(lambda: all(len(v) == 1 for v in got.values()), within=10)
        for events in got.values():
            assert [(e.name, e.payload) for e in events] == [("deploy", b"v2")]
        await wait_until(lambda: any(e.topic == "user" and e.key == "deploy"
                                     for e in ctl.cluster.events.recent), within=10)
        listed = await cli("events", "--topic", "user")
        assert "UserEvent" in listed
        assert "deploy" in listed
        # the Lamport clock: an event fired after another is stamped later, everywhere
        await cli("event", "fire", "deploy", "v3", "--no-coalesce")
        await wait_until(lambda: all(len(v) == 2 for v in got.values()), within=10)
        assert all(v[1].ltime > v[0].ltime for v in got.values())
        refused = await cli("event", "fire", "big", "x" * 600, code=1)
        assert "at most 512" in refused
        assert all(len(v) == 2 for v in got.values())  # nothing was sent
