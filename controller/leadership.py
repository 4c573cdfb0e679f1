"""Who leads, seen from one controller: itself alone on SQLite; on etcd, an election.

On etcd every controller serves reads; one leads, and only the leader writes,
schedules, and takes the agents' streams. The loop here:

1. **campaign** (``controller.election``) until this controller wins a term;
2. **lead**: fence the store with the term's revision (a deposed leader's writes are
   refused by etcd itself), read the whole state afresh, start the scheduling loops,
   re-evaluate every job (reconciliation and deployments resume from the stored
   state), and take agents' streams; agents known from before get ``failover_grace``
   to reconnect before their nodes count as down;
3. when the term is **lost** (keepalives failed for ``renew_deadline``, the key is
   someone else's, etcd is gone) or on shutdown (``resign``: the next one takes over
   at once): stop the loops, end the agents' streams with the new leader's address,
   and go back to following.

A follower reads the store's index every ``follower_refresh`` seconds and reloads the
state when the leader wrote, publishing the new events to its own watchers. A reload
reads the whole state, so a follower spends at most ``FOLLOWER_RELOAD_SHARE`` of its time
reloading: with 100,000 allocations (seconds a load) it waits longer between reloads,
rather than read the state from etcd without pause while the leader writes. When etcd
cannot be reached, the controller writes nothing, keeps serving what it holds, and
says so (``store_available``: health, metrics, logs) until etcd answers again.

``LeaderStatus`` is what the rest of the controller asks: whether it leads now (before
a write), and where the leader is when it does not (the answer a client or an agent
is sent on with).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Protocol

from controller.election import Election, ElectionConfig, Leader, Term
from orch.errors import NotLeaderError, StoreError

if TYPE_CHECKING:
    from controller.store.etcd import EtcdStore

log = logging.getLogger("controller.leadership")


class LeaderStatus:
    """Whether this controller leads now, and where the leader is when it does not.

    On SQLite the one controller leads from ``lead()`` on; on etcd it leads while it holds
    a current term of ``election``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.address = ""
        """This controller's gRPC address (known once it listens)."""
        self.election: Leadership | None = None
        """The election, on etcd; None: this controller alone always leads."""
        self.leading = False
        """Between ``lead()`` and ``step_down()``: the leader's loops run."""
        self.term_over = asyncio.Event()
        """Set when this controller stops leading (agents' streams then end)."""

    @property
    def is_leader(self) -> bool:
        if self.election is not None:
            return self.leading and self.election.is_leader
        return self.leading

    def require(self) -> None:
        """Raise NotLeaderError (with the leader's address, when known) on a follower."""
        if not self.is_leader:
            raise NotLeaderError(self.election.leader_address if self.election else None)

    def may_write(self) -> None:
        """On etcd only a controller that holds a current term writes (``Cluster.may_write``);
        the fenced store refuses the writes of a term that ended, this refuses a follower's."""
        if self.election is not None and not self.election.is_leader:
            raise NotLeaderError(self.election.leader_address or None)

    def leader(self) -> tuple[str, str]:
        """The leader's name and gRPC address ("" each when nobody is known to lead)."""
        if self.is_leader:
            return self.name, self.address
        seen = self.election.leader if self.election is not None else None
        return (seen.name, seen.address) if seen is not None else ("", "")


class Leading(Protocol):
    """What an election starts and stops: the controller's terms as leader."""

    async def lead(self) -> None:
        """Start leading (the term's loops, the state read afresh)."""

    async def step_down(self, reason: str) -> None:
        """Stop leading."""

    async def catch_up(self) -> None:
        """A follower: reload the state when the leader has written since."""

    def store_health(self, ok: bool) -> None:
        """Say whether the store answers."""


FOLLOWER_RELOAD_SHARE = 0.1
"""The share of its time a follower may spend reloading the state: two followers reading
100,000 allocations back to back slowed etcd (and its leader's lease keepalives) enough to
lose the lease on a busy machine."""


def follower_pause(refresh: float, reload_s: float) -> float:
    """Seconds a follower waits before it reads the store again, its last read having taken
    ``reload_s``: ``refresh``, or longer after a long reload."""
    return max(refresh, reload_s * (1 - FOLLOWER_RELOAD_SHARE) / FOLLOWER_RELOAD_SHARE)


class Leadership:
    def __init__(self, leading: Leading, store: EtcdStore, *, name: str, address: str, ttl: int,
                 follower_refresh: float = 1.0) -> None:
        self.leading = leading
        self.name = name
        self.address = address
        self.store = store
        self.follower_refresh = follower_refresh
        self.election = Election(store.client, name=name, address=address,
                                 prefix=store.prefix, config=ElectionConfig(ttl=ttl))
        self.term: Term | None = None
        self.leader: Leader | None = None
        """Who leads, as last observed (None: nobody, or not known yet)."""
        self.store_available = True
        self.terms = 0
        """Terms won by this controller (since it started)."""
        self.elected_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def is_leader(self) -> bool:
        return self.term is not None and self.term.current

    @property
    def leader_address(self) -> str:
        if self.is_leader:
            return self.address
        return self.leader.address if self.leader is not None else ""

    async def start(self) -> None:
        await self.election.open()
        self._tasks = [asyncio.create_task(self._campaign(), name="campaign"),
                       asyncio.create_task(self._observe(), name="observe-leader"),
                       asyncio.create_task(self._follow(), name="follow")]

    async def stop(self) -> None:
        """Hand the leadership over (if held) and stop campaigning."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.is_leader:
            await self.leading.step_down("shutting down")
            await self.election.resign()
        await self.election.close()

    # --- the loops --------------------------------------------------------------------------

    async def _campaign(self) -> None:
        while True:
            term = await self.election.campaign()
            self.term = term
            self.terms += 1
            self.elected_at = time.monotonic()
            log.warning("elected leader", extra={"revision": term.revision,
                                                 "node": self.name})
            try:
                self.store.fence(term.key, term.revision)
                await self.leading.lead()
            except (StoreError, NotLeaderError, OSError) as e:
                # could not read the state, or the term ended already: let someone else
                log.error("could not take over; resigning", extra={"error": str(e)})
                self.term = None
                with contextlib.suppress(Exception):
                    await self.leading.step_down(f"could not take over: {e}")
                await self.election.resign()
                await asyncio.sleep(self.election.config.retry_interval)
                continue
            await term.lost.wait()
            log.warning("lost the leadership", extra={"reason": term.reason})
            self.term = None
            await self.leading.step_down(term.reason or "lost the lease")

    async def _observe(self) -> None:
        async for leader in self.election.observe():
            if leader != self.leader:
                log.info("leader", extra={"leader": leader.name if leader else "none",
                                          "address": leader.address if leader else ""})
            self.leader = leader

    async def _follow(self) -> None:
        """Keep a follower's state close to the store's (and notice when etcd is away)."""
        took = 0.0
        while True:
            await asyncio.sleep(follower_pause(self.follower_refresh, took))
            took = 0.0
            try:
                if not self.is_leader:
                    t0 = time.monotonic()
                    await self.leading.catch_up()
                    took = time.monotonic() - t0
                else:
                    await self.store.index()  # a leader's writes say it too; this is cheap
                self._available(True, "")
            except StoreError as e:
                self._available(False, str(e))
            except Exception:
                log.exception("following the store failed")

    def _available(self, ok: bool, why: str) -> None:
        if ok != self.store_available:
            self.store_available = ok
            if ok:
                log.warning("the store answers again")
            else:
                log.error("the store cannot be reached: writes stop; reads serve what this "
                          "controller holds", extra={"error": why})
            self.leading.store_health(ok)
