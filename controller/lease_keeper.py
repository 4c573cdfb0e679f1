"""An etcd lease kept alive on a thread of its own, whatever the controller's event loop does.

A leader's event loop is busy: commits of large plans, the agents' reports, a state of a
hundred thousand allocations loaded after an election. Keepalives that shared it missed
their renew deadline on a loaded machine, and the lease moved from controller to controller
while every one of them was alive (Kubernetes' leader election renews on a goroutine of
its own for the same reason). Here each lease gets a thread with blocking gRPC channels of
its own (never the event loop's ``grpc.aio`` ones): it sends a keepalive every interval,
checks with each answered one that the leader key is still the term's, and when the lease
can no longer be counted on, tells the event loop once, through ``call_soon_threadsafe``.
A leader whose loop stalls keeps its lease; fencing still guards every write it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from aetcd import rpc

from controller.store.etcd_client import CHANNEL_OPTIONS, METADATA, EtcdClient, KeyValue
from orch.tls import open_blocking_channel

log = logging.getLogger(__name__)

Ended = Callable[[int, str], None]
"""Called on the event loop when the keeper stops by itself: the lease id, and why it can
no longer be counted on (the reason a term holding it is lost)."""


class LeaseKeeper:
    """Keepalives of one lease, every ``interval``, on a thread of its own.

    ``clock`` is the lease's ``RenewalClock`` (times from ``time.monotonic``; the event
    loop only reads it, and a renewal is a monotonic max, so the two threads need no
    lock); ``term`` returns the fencing revision of the term the lease holds, or None
    while it holds none (a candidate's lease); ``holder`` names the holder of a leader
    key that is no longer the term's. The keeper ends by itself when the lease expired, when
    the leader key is no longer the term's, or when no keepalive succeeded within the
    clock's deadline (a term) or the lease lapsed (no term); then ``ended`` runs on the
    event loop. ``stop`` ends it without a word.
    """

    def __init__(self, client: EtcdClient, lease: int, clock: Any, *, interval: float,
                 key: bytes, term: Callable[[], int | None], ended: Ended,
                 holder: Callable[[KeyValue], str]) -> None:
        self.lease = lease
        self.clock = clock
        self.interval = interval
        self._endpoints = client.endpoints
        self._tls = client.tls
        self._key = key
        self._term = term
        self._ended = ended
        self._holder = holder
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()
        self._channels: list[grpc.Channel] = []
        self._current = 0
        self._thread = threading.Thread(target=self._run, name=f"orch-lease-keeper-{lease:x}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        """No keepalive is sent once this returns (one in flight is waited for)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            await asyncio.to_thread(self._thread.join, self.interval + 1.0)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    # --- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        self._channels = [open_blocking_channel(e, self._tls, CHANNEL_OPTIONS)
                          for e in self._endpoints]
        reason: str | None = None
        try:
            reason = self._keep()
        except Exception:
            log.exception("keeping lease %x alive failed", self.lease)
            reason = "the lease is no longer kept alive"
        finally:
            for ch in self._channels:
                ch.close()
        if reason is not None and not self._stop.is_set():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                self._loop.call_soon_threadsafe(self._ended, self.lease, reason)

    def _keep(self) -> str | None:
        """Keepalives until the lease cannot be counted on (why, for the term) or a stop
        (None)."""
        clock, interval = self.clock, self.interval
        while not self._stop.is_set():
            revision = self._term()
            sent = time.monotonic()
            if revision is not None and clock.lost(sent):
                return (f"no keepalive succeeded for {clock.renew_deadline:g} s (etcd "
                        "unreachable or too slow)")
            ttl = self._keepalive(clock.budget(sent, interval))
            if ttl is not None and ttl <= 0:
                return "the lease expired"
            if ttl is not None:
                clock.renewed(sent)
                if revision is not None:
                    lost = self._not_ours(revision, interval)
                    if lost:
                        return lost
            elif revision is None and clock.lost(time.monotonic()):
                # a candidate takes a new lease at its next attempt
                return f"no keepalive succeeded for {clock.renew_deadline:g} s"
            self._stop.wait(clock.next_wait(time.monotonic(), sent, interval))
        return None

    def _unary(self, call: Callable[[grpc.Channel, float], Any], within: float) -> Any:
        """``call(channel, timeout)`` on the endpoints in turn until one answers or ``within``
        has passed; None when none did."""
        deadline = time.monotonic() + within
        for i in range(len(self._channels)):
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return None
            n = (self._current + i) % len(self._channels)
            try:
                result = call(self._channels[n], left)
            except grpc.RpcError as e:
                log.debug("lease %x: %s at %s", self.lease, e, self._endpoints[n])
                continue
            self._current = n
            return result
        return None

    def _keepalive(self, within: float) -> int | None:
        def once(ch: grpc.Channel, timeout: float) -> int:
            calls = rpc.LeaseStub(ch).LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=self.lease)]), timeout=timeout,
                metadata=METADATA)
            try:
                return int(next(calls).TTL)
            finally:
                calls.cancel()
        ttl: int | None = self._unary(once, within)
        return ttl

    def _not_ours(self, revision: int, within: float) -> str:
        """Why the leader key is no longer the term's ("" when it is, or cannot be told)."""
        def get(ch: grpc.Channel, timeout: float) -> Any:
            return rpc.KVStub(ch).Range(rpc.RangeRequest(key=self._key), timeout=timeout,
                                        metadata=METADATA)
        resp = self._unary(get, within)
        if resp is None:
            return ""  # cannot tell now; the renew deadline decides
        if not resp.kvs:
            return "the leader key was deleted"
        kv = KeyValue.from_pb(resp.kvs[0])
        if kv.create_revision == revision:
            return ""
        return f"the leader key now belongs to {self._holder(kv)!r}"
