"""Gossip key rotation end to end with orchctl: install, use, remove on every member; the
keys survive a restart; a member with only the old key is shut out afterwards."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agent.config import AgentConfig
from agent.server import Agent
from orch.gossip.config import GossipConfig
from orch.gossip.crypto import new_key
from tests.integration.live import Cli, live_cluster
from tests.integration.synthetic import wait_until


async def test_rotation_with_orchctl(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    async with live_cluster(tmp_path, agents=2, keys=[old]) as (ctl, agents):
        cli = Cli(ctl.rpc_address, tmp_path)
        assert ctl.gossip is not None
        gossip = ctl.gossip

        def alive() -> set[str]:
            return {m.name for m in gossip.members() if str(m.status) == "alive"}

        everyone = {"ctl", "agent-1", "agent-2"}
        await wait_until(lambda: alive() == everyone, within=10)
        listed = await cli.json("keyring", "list")
        assert {m["member"]: m["keys"] for m in listed["members"]} == {
            n: [old] for n in everyone}
        text = await cli("keyring", "list")
        assert "3/3" in text

        assert "install: done on 3 of 3 members" in await cli("keyring", "install", new)
        assert "use: done on 3 of 3 members" in await cli("keyring", "use", new)
        # the primary cannot go; a bad key is one clear error
        text = await cli("keyring", "remove", new, code=1)
        assert "cannot remove the primary key" in text
        assert "must be 16, 24 or 32 bytes" in await cli("keyring", "install", "nope", code=1)
        await cli("keyring", "remove", old)
        listed = await cli.json("keyring", "list")
        assert {m["member"]: m["keys"] for m in listed["members"]} == {n: [new] for n in everyone}
        # gossip keeps working on the new key alone
        await asyncio.sleep(1.5)
        assert alive() == everyone
        assert json.loads((tmp_path / "agent-1" / "keyring.json").read_text()) == [new]
        assert json.loads((tmp_path / "ctl" / "keyring.json").read_text()) == [new]

        # an agent restarted with its original configuration ([old]) comes back on the new
        # key, from its keyring file
        a1 = agents[0]
        await a1.stop(stop_tasks=False)
        agents.remove(a1)
        await wait_until(lambda: "agent-1" not in alive(), within=15)
        back = Agent(a1.cfg)
        await back.start()
        agents.append(back)
        await wait_until(lambda: alive() == everyone, within=15)

        # a fresh member that only knows the old key cannot join
        stale = Agent(AgentConfig(
            name="stale", bind="127.0.0.9:0", join=[f"{gossip.addr[0]}:{gossip.addr[1]}"],
            rpc_addr="127.0.0.9:0", data_dir=str(tmp_path / "stale"), metrics_addr="",
            drivers=["process"], gossip=GossipConfig.fast(), keys=[old]))
        await stale.start()
        try:
            await asyncio.sleep(2.0)
            assert "stale" not in {m.name for m in gossip.members()}
            assert gossip.wire.dropped.get("decrypt", 0) >= 1
            # reported by name, not silently dropped
            text = await cli("members")
            refused = [line for line in text.splitlines() if line.startswith("stale")]
            assert refused, text
            assert "wrong gossip key?" in refused[0], text
        finally:
            await stale.stop(stop_tasks=True)
