"""The agent's stream to the leader controller: registration and status up, desired sets down.

Down the stream comes the node's full desired set, then only what changes in it
(``agent.desired``: the link announces it takes changes and keeps the set they
edit), so the handler is given the whole set every time and converges to it. The
cluster's expected endpoints come the same way (``agent.lb.discovery.ExpectedSet``):
whole first, then the services that changed. Changes that do not follow the set
held (of another version, or before the stream's whole set) end the stream, and
the next one starts whole.

The controller's address comes from the configuration or from gossip (members
tagged ``role=controller`` publish ``rpc``); a follower's answer names the
leader and the link goes there. When the stream breaks the agent keeps running
what it has and reconnects with backoff; on every (re)connect it sends the state
of all its allocations, so nothing the controller missed is lost. Reports wait in a
``ReportQueue``: the newest per allocation, a pending one held a little for the status
that follows it.

A leader that stops without closing the stream (paused, frozen, cut off) would
hold it until TCP or gRPC keepalives give up, long after another controller took
over and past that one's node grace, which then marks the nodes down and places
their allocations again while they still run here. So while connected the link
also watches gossip (``leader_elsewhere``): once the controller it is connected to
is no longer alive there and another one is tagged leader, it moves there, but only
after that address proved it is a controller (``verify``: a TLS handshake against the
controller role's name): a gossip tag alone never moves the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

from agent.desired import FEATURE, DesiredSet
from agent.lb.discovery import Expected, ExpectedSet
from agent.report_queue import PENDING_HOLD, ReportQueue
from orch.errors import ControllerRefusedError, ProtocolError
from orch.gossip.core import MemberInfo
from orch.gossip.messages import Status
from orch.v1 import controller_pb2, controller_pb2_grpc, node_pb2
from orch.vocab import ENDPOINT_CHANGES, HEARTBEAT_INTERVAL

log = logging.getLogger("agent")

DesiredHandler = Callable[[DesiredSet], Awaitable[None]]
"""Given the node's whole desired set after every message (the same object, changed in
place: read it before returning)."""
SILENCE = 5.0
"""Seconds a stream whose controller sends heartbeats may stay silent before the agent gives
it up and looks for a controller again (a frozen or cut-off leader), at least; with
heartbeats further apart (the controller names the interval: it grows with the agents
streaming to it), ``SILENCE_BEATS`` of them."""
SILENCE_BEATS = 3
"""Heartbeat intervals a stream may stay silent."""
MAX_BEAT = 60.0
"""Seconds between heartbeats a controller may name, at most (the value comes from the
wire: a larger one would let a stream stay silent for ever)."""
HEARTBEAT_UP = 15.0
"""Seconds between the heartbeats this agent sends up a silent stream, at least (longer when
the controller's own come less often)."""
REFUSED_FOR = 60.0
"""Seconds a gossip-named controller that failed to prove itself is not asked again."""
MAX_REFUSED = 64
"""Such addresses remembered at most (gossip is fed from outside)."""


def leader_elsewhere(members: Iterable[MemberInfo], current: str) -> str | None:
    """Where the stream to the controller at ``current`` should move, from gossip (pure).

    The address of an alive controller tagged ``leader=true`` when the controller at
    ``current`` is known to gossip but no longer alive there (suspect, dead, left);
    None (stay) otherwise: while it is alive it says itself when it stops leading (a
    NotLeader message), and a controller gossip does not know cannot be judged.
    """
    controllers = [m for m in members if m.state.get("role") == "controller"
                   and isinstance(m.state.get("rpc"), str)]
    here = [m for m in controllers if m.state["rpc"] == current]
    if not here or any(m.status is Status.ALIVE for m in here):
        return None
    leaders = sorted(str(m.state["rpc"]) for m in controllers if m.status is Status.ALIVE
                     and m.state.get("leader") == "true" and m.state["rpc"] != current)
    return leaders[0] if leaders else None


class ControllerLink:
    def __init__(self, registration: Callable[[], node_pb2.Node],
                 addresses: Callable[[], list[str]], on_desired: DesiredHandler,
                 current: Callable[[], list[node_pb2.Allocation]], *,
                 backoff_max: float = 10.0,
                 connect: Callable[[str, list[tuple[str, Any]]], grpc.aio.Channel] | None = None,
                 moved: Callable[[str], str | None] | None = None,
                 verify: Callable[[str], Awaitable[bool]] | None = None,
                 recheck: float = 0.5,
                 on_endpoints: Callable[[Expected], None] | None = None,
                 pending_hold: float = PENDING_HOLD,
                 ) -> None:
        self._registration = registration
        self._addresses = addresses
        self._on_desired = on_desired
        self._current = current
        self._backoff_max = backoff_max
        self._moved = moved
        """Called with the connected controller's address every ``recheck`` seconds: an
        address to move the stream to (``leader_elsewhere`` over gossip), or None."""
        self._verify = verify
        """Whether an address gossip names proves it is a controller (None: trust it)."""
        self._refused: dict[str, float] = {}
        """Gossip-named addresses that failed ``verify``, and when (not tried again soon)."""
        self._recheck = recheck
        self._on_endpoints = on_endpoints
        """Called with the expected endpoints (what the load balancer may route to) after
        every message that changed them (the same maps each time, changed in place)."""
        self._applying = False
        self._connect = connect or (lambda addr, options: grpc.aio.insecure_channel(
            addr, options=options))
        self._queue = ReportQueue(pending_hold)
        """Allocations' statuses not sent yet (the newest of each; pending ones held a
        little for the status that follows)."""
        self._kick = asyncio.Event()
        self._leader_hint: str | None = None
        self._reregister = False
        self._usage: controller_pb2.UsageReport | None = None
        self.connected = False
        self.controller = ""
        self.last_controller = ""
        """The last controller that took our stream (kept when the stream breaks)."""
        self.applied_version = 0
        self.desired = DesiredSet()
        """The node's desired set as the controller last described it."""
        self.expected = ExpectedSet()
        """The cluster's expected endpoints as the controller last described them (kept
        when ``on_endpoints`` is given)."""
        self._task: asyncio.Task[None] | None = None
        self.last_contact: float | None = None
        """When a controller was last heard (its desired set or heartbeat; loop time)."""
        self._heartbeats = False
        """The connected controller sends heartbeats (older ones do not)."""
        self._beat = 1.0
        """Seconds between the current stream's heartbeats, as its controller names them."""

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="controller-link")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def _silence(self) -> float:
        """Seconds the current stream may stay silent before it is given up."""
        return max(SILENCE, SILENCE_BEATS * self._beat)

    def offline_for(self, now: float | None = None) -> float:
        """Seconds since a controller of this agent's was last heard, past the heartbeat
        that was due by then (0 while one is heard; and before any was: nothing was
        received to act on yet). Heartbeats come further apart as more agents stream to the
        controller: the one that has not come yet is not counted as a silence."""
        if self.last_contact is None:
            return 0.0
        now = asyncio.get_running_loop().time() if now is None else now
        if self.connected and not self._heartbeats:  # an older controller: trust the stream
            return 0.0
        return max(0.0, now - self.last_contact - (self._beat if self._beat > 1.0 else 0.0))

    def reregister(self) -> None:
        """Send the node's registration again (its drivers or resources changed)."""
        self._reregister = True
        self._kick.set()

    def usage(self, report: controller_pb2.UsageReport) -> None:
        """Queue a usage report (only the newest is kept until it is sent)."""
        self._usage = report
        self._kick.set()

    def report(self, allocs: list[node_pb2.Allocation],
               next_in: Mapping[str, float] | None = None) -> None:
        """Queue status updates for the controller: the newest per allocation wins, and a
        pending one, or one whose next status is due soon (``next_in``: allocation id ->
        seconds), waits up to ``pending_hold`` seconds for the next (``ReportQueue``)."""
        now = asyncio.get_running_loop().time()
        for a in allocs:
            self._queue.put(a, now, next_in.get(a.id) if next_in else None)
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
                except ControllerRefusedError:
                    pass  # the agent said why (once a minute)
                except ProtocolError as e:
                    log.warning("the controller's stream went out of step; starting over",
                                extra={"controller": addr, "error": str(e)})
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
            ended = asyncio.Event()
            call = stub.Connect(self._outgoing(ended))
            reader = asyncio.create_task(self._read(addr, call), name="controller-stream")
            loop = asyncio.get_running_loop()
            try:
                while not reader.done():
                    await asyncio.wait({reader}, timeout=self._recheck)
                    if self._heartbeats and self.last_contact is not None and not self._applying \
                            and loop.time() - self.last_contact > self._silence:
                        log.warning("the controller stopped answering: looking for one again",
                                    extra={"controller": addr, "silent_for": round(
                                        loop.time() - self.last_contact, 1)})
                        return
                    if self._moved is None or self._applying or reader.done():
                        continue  # never cut a desired set off half applied
                    elsewhere = self._moved(addr)
                    if elsewhere and not await self._proven(elsewhere):
                        continue
                    if elsewhere:
                        log.warning("the controller no longer answers gossip and another one "
                                    "leads: moving there", extra={"controller": addr,
                                                                  "leader": elsewhere})
                        self._leader_hint = elsewhere
                        return
                reader.result()  # what ended the stream, raised here
            finally:
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                    call.cancel()
                ended.set()  # and wake this stream's sender, wherever it waits, to see it
                self._kick.set()
                # A finished call still referenced keeps its connection open (so does the
                # controller, with its TLS state): the error that ended the stream refers to
                # this frame, and the reader task's error to the reader, a cycle that only the
                # garbage collector would break, late. Let them go with the stream.
                del call, reader, stub

    async def _proven(self, addr: str) -> bool:
        """Whether a controller gossip names proved it is one (not asked again for a minute
        after it failed)."""
        if self._verify is None:
            return True
        loop = asyncio.get_running_loop()
        if loop.time() - self._refused.get(addr, -REFUSED_FOR) < REFUSED_FOR:
            return False
        if await self._verify(addr):
            self._refused.pop(addr, None)
            return True
        log.warning("gossip names a leader that does not prove it is a controller; staying",
                    extra={"address": addr})
        self._refused[addr] = loop.time()
        while len(self._refused) > MAX_REFUSED:
            self._refused.pop(next(iter(self._refused)))
        return False

    async def _read(self, addr: str, call: Any) -> None:
        """Take the controller's messages until the stream ends (or it says it does not lead).

        ProtocolError when changes arrive that do not follow the set held (before this
        stream's full set, or for another version): the stream is dropped and the next
        one starts with a full set."""

        self._heartbeats = False
        self._beat = 1.0
        whole = whole_endpoints = False
        async for msg in call:
            kind = msg.WhichOneof("msg")
            if kind == "heartbeat":
                if msg.heartbeat.next_ms:
                    self._beat = min(MAX_BEAT, msg.heartbeat.next_ms / 1000)
                if self.connected:  # heard only once a desired set of ours was applied
                    self._heartbeats = True
                    self.last_contact = asyncio.get_running_loop().time()
                continue
            if kind == "not_leader":
                self._leader_hint = msg.not_leader.address or None
                log.info("controller is not the leader", extra={
                    "controller": addr, "leader": msg.not_leader.address})
                return
            if kind in ("endpoints", "endpoint_changes"):
                if self._on_endpoints is None:
                    continue
                if kind == "endpoints":
                    self.expected.replace(msg.endpoints)
                    whole_endpoints = True
                elif not whole_endpoints:
                    raise ProtocolError("expected-endpoint changes before the stream's whole "
                                        "set")
                else:
                    self.expected.change(msg.endpoint_changes)
                self._on_endpoints(self.expected.expected)
                if self.connected:  # the controller is heard: the next heartbeat counts from now
                    self.last_contact = asyncio.get_running_loop().time()
                continue
            if kind == "desired":
                self.desired.replace(msg.desired)
                whole = True
            elif kind == "changes":
                if not whole:
                    raise ProtocolError("desired-set changes before the stream's full set")
                self.desired.change(msg.changes)
            else:
                continue
            self.controller = addr
            self._applying = True
            try:
                await self._on_desired(self.desired)  # ControllerRefusedError: not ours
            finally:
                self._applying = False
            self.last_contact = asyncio.get_running_loop().time()
            if not self.connected:
                self.connected = True
                self.last_controller = addr
                log.info("connected to the controller", extra={"controller": addr})
            self.applied_version = self.desired.version

    def _announced(self) -> node_pb2.Node:
        """The node's registration, saying that this link takes desired-set and
        expected-endpoint changes."""
        reg = node_pb2.Node()
        reg.CopyFrom(self._registration())
        for feature in (FEATURE, ENDPOINT_CHANGES, HEARTBEAT_INTERVAL):
            if feature not in reg.features:
                reg.features.append(feature)
        return reg

    async def _outgoing(self, ended: asyncio.Event) -> AsyncIterator[controller_pb2.NodeMessage]:
        """What one stream sends, until ``ended``.

        gRPC does not stop the sender of a stream that ended on the server's side (its
        status: a NotLeader answer, a controller gone); left waiting, it would take the
        next updates and lose them on a finished call, while a newer stream waits for
        them. So each stream's sender stops once its stream ended, taking nothing more.
        """
        self._reregister = False
        yield controller_pb2.NodeMessage(register=self._announced())
        # everything we run, so that the controller catches up with what it missed
        self._queue.catch_up(self._current())
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue.ready(loop.time()) and not self._reregister \
                    and self._usage is None:
                self._kick.clear()
                release = self._queue.next_release()
                up = max(HEARTBEAT_UP, self._beat)
                wait = up if release is None else min(up, max(0.0, release - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), wait)
                if release is not None and not self._kick.is_set():
                    self._kick.set()  # a hold ended: what it held goes, not a heartbeat
            if ended.is_set():
                return
            if self._reregister:
                self._reregister = False
                yield controller_pb2.NodeMessage(register=self._announced())
            if self._usage is not None:
                report, self._usage = self._usage, None
                yield controller_pb2.NodeMessage(usage=report)
            batch = self._queue.take(loop.time())
            if batch:
                yield controller_pb2.NodeMessage(allocations=controller_pb2.AllocationUpdates(
                    allocations=batch, applied_version=self.applied_version))
            elif not self._kick.is_set():
                yield controller_pb2.NodeMessage(heartbeat=controller_pb2.Heartbeat())
