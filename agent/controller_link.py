"""The agent's stream to the leader controller: registration and status up, desired sets down.

The controller's address comes from the configuration or from gossip (members
tagged ``role=controller`` publish ``rpc``); a follower's answer names the
leader and the link goes there. When the stream breaks the agent keeps running
what it has and reconnects with backoff; on every (re)connect it sends the state
of all its allocations, so nothing the controller missed is lost.

A controller that freezes (paused, or its host hung) neither breaks the stream nor
answers NotLeader: the link would wait for keepalive to give up on it. So while a
stream is open the link also watches who gossip says leads (``leader``): when another
controller is the leader there, the link leaves for it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2

log = logging.getLogger("agent")

DesiredHandler = Callable[[controller_pb2.DesiredAllocations], Awaitable[None]]


class ControllerLink:
    def __init__(self, registration: Callable[[], node_pb2.Node],
                 addresses: Callable[[], list[str]], on_desired: DesiredHandler,
                 current: Callable[[], list[node_pb2.Allocation]], *,
                 backoff_max: float = 10.0,
                 leader: Callable[[], str | None] | None = None,
                 leader_check_interval: float = 0.5,
                 connect: Callable[[str, list[tuple[str, Any]]], grpc.aio.Channel] | None = None
                 ) -> None:
        self._registration = registration
        self._addresses = addresses
        self._on_desired = on_desired
        self._current = current
        self._backoff_max = backoff_max
        self._leader = leader
        """The leader's address as gossip has it (None while that is unclear)."""
        self._leader_check_interval = leader_check_interval
        self._connect = connect or (lambda addr, options: grpc.aio.insecure_channel(
            addr, options=options))
        self._pending: dict[str, node_pb2.Allocation] = {}
        self._kick = asyncio.Event()
        self._leader_hint: str | None = None
        self._reregister = False
        self._usage: controller_pb2.UsageReport | None = None
        self.connected = False
        self.controller = ""
        self.last_controller = ""
        """The last controller that took our stream (kept when the stream breaks)."""
        self.applied_version = 0
        self._stream = 0
        """The number of the current stream: a request generator of an earlier one that is
        still waiting (its call over, its task not yet cancelled) must not take the updates."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="controller-link")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def reregister(self) -> None:
        """Send the node's registration again (its drivers or resources changed)."""
        self._reregister = True
        self._kick.set()

    def usage(self, report: controller_pb2.UsageReport) -> None:
        """Queue a usage report (only the newest is kept until it is sent)."""
        self._usage = report
        self._kick.set()

    def report(self, allocs: list[node_pb2.Allocation]) -> None:
        """Queue status updates (the newest per allocation wins) for the controller."""
        for a in allocs:
            self._pending[a.id] = a
        self._kick.set()

    async def run(self) -> None:
        backoff = 0.5
        while True:
            addrs = self._addresses()
            if self.last_controller and self.last_controller not in addrs:
                # gossip may have lost it (it left to restart): keep trying where we were
                addrs.append(self.last_controller)
            if self._leader_hint:
                addrs = [self._leader_hint, *[a for a in addrs if a != self._leader_hint]]
                self._leader_hint = None
            if not addrs:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
                continue
            for addr in addrs:
                try:
                    await self._session(addr)
                    backoff = 0.5
                except asyncio.CancelledError:
                    raise
                except grpc.aio.AioRpcError as e:
                    log.warning("controller stream failed", extra={
                        "controller": addr, "code": e.code().name, "error": e.details()})
                except Exception:
                    log.exception("controller stream failed", extra={"controller": addr})
                finally:
                    self.connected = False
                    self.controller = ""
                if self._leader_hint:
                    break
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._backoff_max)

    async def _session(self, addr: str) -> None:
        async with self._connect(addr, [
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1)]) as channel:
            stub = controller_pb2_grpc.NodeServiceStub(channel)
            self._stream += 1
            call = stub.Connect(self._outgoing(self._stream))
            left = asyncio.Event()
            watch = (asyncio.create_task(self._watch_leader(addr, call, left),
                                         name="controller-link-leader")
                     if self._leader is not None else None)
            try:
                async for msg in call:
                    kind = msg.WhichOneof("msg")
                    if kind == "not_leader":
                        self._leader_hint = msg.not_leader.address or None
                        log.info("controller is not the leader", extra={
                            "controller": addr, "leader": msg.not_leader.address})
                        return
                    if kind == "desired":
                        if not self.connected:
                            self.connected, self.controller = True, addr
                            self.last_controller = addr
                            log.info("connected to the controller", extra={"controller": addr})
                        await self._on_desired(msg.desired)
                        self.applied_version = msg.desired.version
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                # the call cancelled by the watch below ends one way or the other; anything
                # else (the link stopped, a real failure) goes on up
                task = asyncio.current_task()
                if not left.is_set() or (task is not None and task.cancelling()):
                    raise
            finally:
                self._stream += 1  # this stream's requests end here
                self._kick.set()
                if watch is not None:
                    watch.cancel()
                    await asyncio.gather(watch, return_exceptions=True)

    async def _watch_leader(self, addr: str, call: Any, left: asyncio.Event) -> None:
        """Leave ``addr`` (cancel ``call``) for the leader gossip names, once it is another."""
        assert self._leader is not None
        while True:
            await asyncio.sleep(self._leader_check_interval)
            leader = self._leader()
            if leader and leader != addr:
                log.info("gossip names another leader: leaving this controller for it",
                         extra={"controller": addr, "leader": leader})
                self._leader_hint = leader
                left.set()
                call.cancel()
                return

    async def _outgoing(self, stream: int) -> AsyncIterator[controller_pb2.NodeMessage]:
        self._reregister = False
        yield controller_pb2.NodeMessage(register=self._registration())
        # everything we run, so that the controller catches up with what it missed
        for a in self._current():
            self._pending.setdefault(a.id, a)
        while True:
            if not self._pending and not self._reregister and self._usage is None:
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), 15.0)
            if stream != self._stream:
                return
            if self._reregister:
                self._reregister = False
                yield controller_pb2.NodeMessage(register=self._registration())
            if self._usage is not None:
                report, self._usage = self._usage, None
                yield controller_pb2.NodeMessage(usage=report)
            if self._pending:
                batch, self._pending = list(self._pending.values()), {}
                yield controller_pb2.NodeMessage(allocations=controller_pb2.AllocationUpdates(
                    allocations=batch, applied_version=self.applied_version))
            elif not self._kick.is_set():
                yield controller_pb2.NodeMessage(heartbeat=controller_pb2.Heartbeat())
