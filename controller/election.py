"""Leader election on etcd: one leader among the controllers, a lease, and a fencing revision.

The recipe is Kubernetes' lease lock on etcd's primitives. A candidate grants
itself a lease of ``ttl`` seconds, keeps it alive, and creates the leader key
(``<prefix>/leader``, value ``{"name", "address"}``) attached to that lease, only
if the key does not exist: a transaction comparing the key's create_revision with
0. The candidate whose put succeeds leads; the revision of that put (the key's
create_revision, unique to this incarnation of the key) is its **fencing
revision**: ``EtcdStore.fence(term.key, term.revision)`` makes every later commit
check it, so a deposed leader cannot write, however long it was paused. The
others watch the key and try again as soon as it is deleted: at once when the
leader resigns (``resign``), or when its lease expires because its keepalives
stopped (a crash, a pause, a partition): within ``ttl`` of its last keepalive,
plus up to half a second for etcd's expiry check.

The leader learns that it lost (``Term.lost`` is set, ``Term.reason`` says why)
when a keepalive answers that the lease is gone, when the key is no longer its
own (checked with every keepalive), or when no keepalive succeeded for
``renew_deadline``: shorter than the TTL, so it stops acting before anyone else
can take over, unless its own clock was stopped; fencing covers that case. A
leader that lost revokes its lease as soon as etcd answers (others then need not
wait for the TTL) and may campaign again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from controller.lease_keeper import LeaseKeeper
from controller.store.etcd_client import (
    Compare,
    EtcdClient,
    EtcdError,
    EtcdInDoubt,
    EtcdRejected,
    Get,
    KeyValue,
    Put,
    Txn,
)
from orch.errors import ConfigError, StoreError

log = logging.getLogger(__name__)


# --- the pure parts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ElectionConfig:
    ttl: int = 5
    """Seconds the leader key outlives its holder's last keepalive (the etcd lease's TTL): a
    crashed leader is replaced within ttl + about 0.5 s."""
    keepalive_interval: float = 0.0
    """Seconds between keepalives (each also checks the leader key); 0: ttl / 3."""
    renew_deadline: float = 0.0
    """Leadership counts as lost when no keepalive succeeded for this long; 0: ttl * 2 / 3.
    Below ttl, so that a cut-off leader stops before anyone else can start."""
    retry_interval: float = 0.5
    """Seconds between campaign attempts while etcd cannot be reached."""

    def __post_init__(self) -> None:
        if self.ttl < 1:
            raise ConfigError(f"the lease TTL is a whole number of seconds >= 1, got {self.ttl}",
                              where="election.ttl")
        if not 0 < self.interval < self.deadline < self.ttl:
            raise ConfigError(
                f"need 0 < keepalive_interval ({self.interval:g}) < renew_deadline "
                f"({self.deadline:g}) < ttl ({self.ttl})", where="election")
        if self.retry_interval <= 0:
            raise ConfigError("retry_interval must be positive", where="election.retry_interval")

    @property
    def interval(self) -> float:
        return self.keepalive_interval or self.ttl / 3

    @property
    def deadline(self) -> float:
        return self.renew_deadline or self.ttl * 2 / 3


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads, as the leader key says."""

    name: str
    address: str
    """Where the leader serves gRPC (what a follower redirects to)."""
    revision: int
    """The leader's fencing revision (the leader key's create_revision)."""


def encode_leader(name: str, address: str) -> bytes:
    return json.dumps({"name": name, "address": address}, separators=(",", ":")).encode()


def decode_leader(kv: KeyValue) -> Leader:
    """The leader a key holds; a value that is not ours still names someone ("?")."""
    try:
        d = json.loads(kv.value)
        return Leader(str(d["name"]), str(d.get("address", "")), kv.create_revision)
    except (ValueError, KeyError, TypeError):
        return Leader("?", "", kv.create_revision)


@dataclass(slots=True)
class RenewalClock:
    """When a lease holder must stop counting on its lease: pure, fed with times.

    A keepalive sent at ``t`` and answered moves the lease's expiry to at least
    ``t + ttl`` (etcd refreshes it on arrival, later than ``t``); the holder gives up
    at ``last_ok + renew_deadline``, before that.
    """

    renew_deadline: float
    last_ok: float
    """When the last keepalive that was answered was sent (or the lease granted)."""

    def renewed(self, sent_at: float) -> None:
        self.last_ok = max(self.last_ok, sent_at)

    def lost(self, now: float) -> bool:
        return now >= self.last_ok + self.renew_deadline

    def budget(self, now: float, interval: float) -> float:
        """How long the next keepalive may take: an interval, never past the deadline."""
        return max(0.05, min(interval, self.last_ok + self.renew_deadline - now))

    def next_wait(self, now: float, sent_at: float, interval: float) -> float:
        """How long to sleep before the next keepalive (which was sent at ``sent_at``)."""
        return max(0.0, min(sent_at + interval, self.last_ok + self.renew_deadline) - now)


# --- terms and the election ------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Term:
    """One stretch of leadership. ``revision`` is the fencing revision for ``EtcdStore.fence``."""

    key: str
    revision: int
    lease: int
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once this term is over (``reason`` says why); it never leads again."""
    reason: str = ""

    @property
    def current(self) -> bool:
        return not self.lost.is_set()


@dataclass(eq=False, slots=True)
class _Lease:
    id: int
    clock: RenewalClock
    dead: bool = False


class Election:
    """Campaign for the leadership among controllers sharing an etcd prefix. ::

        election = Election(endpoints, name="controller-1", address="10.0.0.1:4647")
        await election.open()
        term = await election.campaign()          # blocks until this controller leads
        store.fence(term.key, term.revision)
        ...                                       # lead until term.lost is set
        await election.resign()                   # graceful shutdown: the next one takes over now
        await election.close()

    ``leader()`` says who leads (for followers' redirects); ``observe()`` yields it at
    every change. ``client`` may be the store's ``EtcdClient`` (then it is neither
    opened nor closed here). ``close`` without ``resign`` leaves the key to expire with
    its lease, as a crash would.
    """

    def __init__(self, endpoints: Sequence[str] | EtcdClient, *, name: str, address: str = "",
                 prefix: str = "/orch", config: ElectionConfig | None = None) -> None:
        if not name:
            raise ConfigError("a candidate needs a name", where="election.name")
        self._own_client = not isinstance(endpoints, EtcdClient)
        self.client = endpoints if isinstance(endpoints, EtcdClient) else EtcdClient(endpoints)
        self.name = name
        self.address = address
        self.key = f"{prefix.rstrip('/')}/leader"
        self._key = self.key.encode()
        self.config = config or ElectionConfig()
        self.term: Term | None = None
        """The current or last term this candidate won."""
        self._lease: _Lease | None = None
        self._keepalive: LeaseKeeper | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    async def open(self) -> None:
        self._closed = False
        if self._own_client:
            await self.client.open()

    async def close(self) -> None:
        """Stop keeping the lease alive, without resigning: the key expires with the lease.
        A campaign in progress ends with StoreError."""
        self._closed = True
        if self.term is not None and self.term.current:
            self._lose(self.term, "the election was closed", revoke=False)
        await self._stop_keepalive()
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._lease = None
        if self._own_client:
            await self.client.close()

    # --- campaigning ----------------------------------------------------------------------------

    async def campaign(self) -> Term:
        """Wait until this candidate leads; its term (the current one, if it already leads).

        Never gives up while etcd cannot be reached: cancel it (or ``close`` the election)
        to stop; cancel it before ``resign`` when a candidate that does not lead withdraws.
        """
        if self.term is not None and self.term.current:
            return self.term
        value = encode_leader(self.name, self.address)
        while True:
            if self._closed:
                raise StoreError(f"{self.name}: the election for {self.key} is closed")
            try:
                lease = await self._ensure_lease()
                txn = Txn([Compare(self._key, "create", "==", 0)], [Put(self._key, value, lease.id)],
                          [Get(self._key)])
                result = await self.client.txn(txn, within=self.config.ttl)
                if result.succeeded:
                    return await self._won(lease, result.revision)
                holder = result.ranges[0][0] if result.ranges and result.ranges[0] else None
                if holder is None:
                    continue  # it was just deleted: try again now
                if holder.lease == lease.id:  # an earlier attempt won and its answer was lost
                    return await self._won(lease, holder.create_revision)
                # Someone leads: wait for the key to change (or a TTL, and look again).
                await self.client.watch(self._key, start_revision=holder.mod_revision + 1,
                                        within=self.config.ttl)
            except EtcdInDoubt:
                continue  # the next attempt reads the key and tells
            except EtcdRejected as e:
                if "lease not found" in e.details and self._lease is not None:
                    self._lease.dead = True  # expired while etcd was away: take a new one
                else:
                    log.debug("campaign for %s: %s", self.key, e)
                    await asyncio.sleep(self.config.retry_interval)
            except EtcdError as e:
                log.debug("campaign for %s: %s", self.key, e)
                await asyncio.sleep(self.config.retry_interval)

    async def _ensure_lease(self) -> _Lease:
        if self._lease is not None and not self._lease.dead:
            return self._lease
        await self._stop_keepalive()
        sent = time.monotonic()
        lease_id, _ = await self.client.lease_grant(self.config.ttl, within=self.config.ttl)
        lease = _Lease(lease_id, RenewalClock(self.config.deadline, sent))
        self._lease = lease
        self._keepalive = self._keep_alive(lease)
        return lease

    async def _won(self, lease: _Lease, revision: int) -> Term:
        term = Term(self.key, revision, lease.id)
        self.term = term
        sent = time.monotonic()
        try:  # start the term with a fresh lease
            ttl: int | None = await self.client.lease_keepalive(lease.id, within=self.config.interval)
        except EtcdError:
            ttl = None
        if ttl is not None and ttl > 0:
            lease.clock.renewed(sent)
            if term.current and (self._keepalive is None or not self._keepalive.running):
                # Its keepalives gave up on the lease while the winning put was under way
                # (etcd answered slowly); etcd still has it: keep it alive again.
                lease.dead = False
                self._keepalive = self._keep_alive(lease)
        if (ttl is not None and ttl <= 0) or lease.dead or lease.clock.lost(time.monotonic()):
            self._lose(term, "elected on a lease that could not be kept alive")
        else:
            log.info("%s leads %s (fencing revision %d)", self.name, self.key, revision)
        return term

    def _keep_alive(self, lease: _Lease) -> LeaseKeeper:
        """Keep ``lease`` alive on a thread of its own (``LeaseKeeper``); when it can no
        longer be counted on, the lease is given up and the term holding it ends."""
        def term_revision() -> int | None:
            term = self.term
            return term.revision if term is not None and term.lease == lease.id \
                and term.current else None

        keeper = LeaseKeeper(self.client, lease.id, lease.clock, interval=self.config.interval,
                             key=self._key, term=term_revision, ended=self._lease_ended,
                             holder=lambda kv: decode_leader(kv).name)
        keeper.start()
        return keeper

    def _lease_ended(self, lease_id: int, reason: str) -> None:
        """A keeper stopped by itself (on the event loop): a lease nobody keeps alive must
        never win or hold a term."""
        lease = self._lease
        if lease is not None and lease.id == lease_id:
            lease.dead = True
        term = self.term
        if term is not None and term.lease == lease_id and term.current:
            self._lose(term, reason)

    def _lose(self, term: Term, reason: str, *, revoke: bool = True) -> None:
        if not term.current:
            return
        term.reason = reason
        term.lost.set()
        log.warning("%s no longer leads %s: %s", self.name, self.key, reason)
        lease = self._lease
        if lease is not None and lease.id == term.lease:
            lease.dead = True  # a new campaign takes a new lease
            if revoke:  # as soon as etcd answers, so that others need not wait for the TTL
                task = asyncio.create_task(self._revoke(lease.id))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _revoke(self, lease: int) -> None:
        for _ in range(10 * self.config.ttl):
            try:
                await self.client.lease_revoke(lease, within=self.config.ttl)
                return
            except EtcdError:
                await asyncio.sleep(self.config.retry_interval)

    async def _stop_keepalive(self) -> None:
        keeper, self._keepalive = self._keepalive, None
        if keeper is not None:
            await keeper.stop()

    async def resign(self) -> None:
        """Give up the leadership (or the candidacy) now: the next candidate takes over at once."""
        lease = self._lease
        term = self.term
        if term is not None and term.current:
            self._lose(term, "resigned", revoke=False)
        await self._stop_keepalive()
        self._lease = None
        if lease is not None:
            try:  # revoking deletes the key with it, at one revision
                await self.client.lease_revoke(lease.id, within=self.config.ttl)
            except EtcdError as e:
                log.warning("%s: resigning could not revoke the lease (%s); the key expires "
                            "within %d s", self.name, e, self.config.ttl)

    # --- who leads ---------------------------------------------------------------------------------

    async def leader(self) -> Leader | None:
        """The current leader, as etcd says now (None while nobody leads)."""
        kv = await self.client.get(self._key, within=self.config.ttl)
        return None if kv is None else decode_leader(kv)

    async def observe(self) -> AsyncIterator[Leader | None]:
        """The leader now, then again at every change (a follower's view); runs until cancelled."""
        last: Leader | None = None
        first = True
        while True:
            try:
                got = await self.client.range(self._key, within=self.config.ttl)
            except EtcdError:
                await asyncio.sleep(self.config.retry_interval)
                continue
            now = decode_leader(got.kvs[0]) if got.kvs else None
            if first or now != last:
                first, last = False, now
                yield now
            with contextlib.suppress(EtcdError):
                await self.client.watch(self._key, start_revision=got.revision + 1,
                                        within=self.config.ttl)
