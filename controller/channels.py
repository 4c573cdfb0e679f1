"""The gRPC channels a controller opens: to agents (their AgentService: logs, restarts,
the keyring) and to the other controllers; one per address, reused, closed on stop."""

from __future__ import annotations

import grpc

from controller.state import ClusterState
from orch import pki
from orch.errors import NotFoundError
from orch.tls import TlsConfig, open_channel

MAX_AGENT_MESSAGE = 64 * 1024 * 1024
"""Largest message read from an agent (a chunk of logs, a status with many tasks)."""


class Channels:
    def __init__(self, tls: TlsConfig, state: ClusterState) -> None:
        self.tls = tls
        self.state = state
        self._open: dict[str, grpc.aio.Channel] = {}

    def to_controller(self, address: str) -> grpc.aio.Channel:
        """A channel to another controller's gRPC address."""
        ch = self._open.get(address)
        if ch is None:
            ch = self._open[address] = open_channel(address, self.tls,
                                                    server=pki.role_dns("controller"))
        return ch

    def to_agent(self, node_id: str) -> grpc.aio.Channel:
        """A channel to the agent of a node (its AgentService); NotFoundError when the node
        is unknown or has no agent address."""
        node = self.state.nodes.get(node_id)
        if node is None or not node.address:
            raise NotFoundError(f"node {node_id[:8]} has no agent address")
        ch = self._open.get(node.address)
        if ch is None:
            ch = self._open[node.address] = open_channel(
                node.address, self.tls, [("grpc.max_receive_message_length", MAX_AGENT_MESSAGE)],
                server=pki.role_dns("agent"))
        return ch

    async def prune(self) -> int:
        """Close the channels to addresses no node and no controller has any more (nodes
        that were forgotten); how many."""
        used = {n.address for n in self.state.nodes.values()}
        used |= {v for k, v in self.state.meta.items() if k.startswith("controller/")}
        stale = [a for a in self._open if a not in used]
        for address in stale:
            await self._open.pop(address).close()
        return len(stale)

    async def close(self) -> None:
        for ch in self._open.values():
            await ch.close()
        self._open.clear()
