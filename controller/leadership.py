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
state when the leader wrote, publishing the new events to its own watchers. When etcd
cannot be reached, the controller writes nothing, keeps serving what it holds, and
says so (``store_available``: health, metrics, logs) until etcd answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from controller.election import Election, ElectionConfig, Leader, Term
from orch.errors import NotLeaderError, StoreError

if TYPE_CHECKING:
    from controller.server import Controller
    from controller.store.etcd import EtcdStore

log = logging.getLogger("controller.leadership")


class Leadership:
    def __init__(self, ctl: Controller, store: EtcdStore, *, ttl: int,
                 follower_refresh: float = 1.0) -> None:
        self.ctl = ctl
        self.store = store
        self.follower_refresh = follower_refresh
        self.election = Election(store.client, name=ctl.cfg.name, address=ctl.rpc_address,
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
            return self.ctl.rpc_address
        return self.leader.address if self.leader is not None else ""

    async def start(self) -> None:
        self.election.address = self.ctl.rpc_address
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
            await self.ctl.step_down("shutting down")
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
                                                 "node": self.ctl.cfg.name})
            try:
                self.store.fence(term.key, term.revision)
                await self.ctl.lead()
            except (StoreError, NotLeaderError, OSError) as e:
                # could not read the state, or the term ended already: let someone else
                log.error("could not take over; resigning", extra={"error": str(e)})
                self.term = None
                with contextlib.suppress(Exception):
                    await self.ctl.step_down(f"could not take over: {e}")
                await self.election.resign()
                await asyncio.sleep(self.election.config.retry_interval)
                continue
            await term.lost.wait()
            log.warning("lost the leadership", extra={"reason": term.reason})
            self.term = None
            await self.ctl.step_down(term.reason or "lost the lease")

    async def _observe(self) -> None:
        async for leader in self.election.observe():
            if leader != self.leader:
                log.info("leader", extra={"leader": leader.name if leader else "none",
                                          "address": leader.address if leader else ""})
            self.leader = leader

    async def _follow(self) -> None:
        """Keep a follower's state close to the store's (and notice when etcd is away)."""
        while True:
            await asyncio.sleep(self.follower_refresh)
            try:
                if not self.is_leader:
                    await self.ctl.catch_up()
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
            self.ctl.store_health(ok)
