"""The etcd backend: the controller's state in an etcd cluster, for several controllers.

Same semantics as the SQLite backend (the same contract suite runs against both);
only the leader writes, and ``fence`` makes etcd itself refuse the writes of a
leader that has been deposed.

Key layout, under ``prefix`` (default ``/orch``); names are percent-encoded, so a
``/`` in a name cannot split a key, and numbers are zero-padded to sort::

    <p>/state                                  {"schema", "index", "event_index", "eval_seq", "token"}
    <p>/meta/<key>                             the value, as text
    <p>/jobs/<namespace>/<name>/<version:020>  orch.v1.Job (protobuf, as in SQLite)
    <p>/allocs/<id>                            orch.v1.Allocation
    <p>/nodes/<id>                             orch.v1.Node
    <p>/deployments/<id>                       orch.v1.Deployment
    <p>/evals/<seq:020>/<id>                   orch.v1.Evaluation; seq = the order first stored
    <p>/events/<index:020>                     0x00 + orch.v1.EventBatch, zlib-compressed:
                                               the events of one transaction; index =
                                               the last one's
    <p>/leader                                 the leader key (controller.election)

Commits. A commit is one etcd transaction, which etcd applies whole or not at all,
at one revision. It compares the state key's ``mod_revision`` with the one this
store last saw (so two writers can never interleave, and the commit and event
counters in the state key move by exactly one commit), and, once fenced, the
leader key's ``create_revision`` with the one this controller's election won;
then it deletes, puts, prunes (one range delete each for old event batches and old
evaluations, from the oldest one kept) and puts the state key with the new counters.
The transaction's events go under one key, compressed: etcd's cost per commit grows
with the keys it holds and with what its compaction frees, and the event log is most
of both when kept one event per key as it comes (as layout 1 did: its keys, each an
``orch.v1.Event`` without the 0x00, are read as batches of one and pruned as the log
moves on). Events of one transaction repeat names, ids and payloads: zlib's fastest
level makes them about six times smaller. A batch that straddles the log's floor stays
whole, and reads leave out the events below the floor. The store keeps in
memory what it needs to write without reading first (the counters, each job's
versions, each evaluation's seq); that copy is exact while the compare on the
state key holds, and read again when it does not. Commits queued while one is
under way go together in the next transaction (each keeps its own index), so
concurrent writers share etcd's round trip and fsync.

Limits: required etcd flags. etcd refuses a transaction of more than
``--max-txn-ops`` operations (default 128) or a request above
``--max-request-bytes`` (default 1.5 MiB), and a job registration of 1,000
allocations is one commit of about 1,010 operations. Splitting a commit over
several transactions would give up atomicity, and a commit log replayed over
the records would make every read pay for it; so the store needs every etcd
member started with (``REQUIRED_FLAGS``)::

    --max-txn-ops=10000 --max-request-bytes=10485760

(10 MiB is the largest request etcd recommends; a 1,000-allocation registration
measures about 0.7 MB, see ``bench.store``). ``open`` checks both with a
read-only probe transaction (nothing is written) and refuses, saying which flag
to set, when etcd allows less; a commit larger than ``max_txn_ops`` or
``max_request_bytes`` is refused before it is sent (``StoreError``, nothing
written).

History. etcd keeps every revision until it is compacted, and its database stops
taking writes at its quota (2 GiB by default). Every ``compact_every`` commits the
store compacts etcd's history up to the revision of ``compact_every`` commits ago
(etcd has one history for all its keys: set ``compact_every=0`` when the etcd is
shared and compacted by its owner). Defragment members now and then
(``etcdctl defrag``) to give the freed space back to the file system.

Failures. Every call is bounded by ``timeout``; the client tries every endpoint
(``controller.store.etcd_client``). A commit that no endpoint took raises
``StoreError`` and wrote nothing. A commit whose answer was lost (a deadline or a
broken connection after sending) is resolved before the store answers: a
*seal* transaction (the same compares, and a put of the state key as it was)
either finds the commit applied (the commit succeeded) or makes sure it never
applies (it failed, nothing written; it is retried while time is left). When
etcd cannot be reached for the seal either, ``CommitInDoubtError`` says that the
outcome is unknown; the store seals it before its next commit or ``load``, which
therefore show whether it landed. A fenced store whose election was lost gets
``FencedError``: nothing written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

from google.protobuf.message import DecodeError

from controller.store.base import (
    MAX_EVALUATIONS,
    AllocTable,
    Changes,
    JobKey,
    Store,
    StoreSize,
    StoreSnapshot,
)
from controller.store.bbolt import check_hash, latest_keys
from controller.store.etcd_client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdInDoubt,
    EtcdRejected,
    EtcdUnavailable,
    Get,
    KeyValue,
    Op,
    Put,
    Txn,
    TxnResult,
    prefix_end,
)
from orch.errors import CommitInDoubtError, ConfigError, FencedError, StoreError
from orch.tls import TlsConfig
from orch.v1 import controller_pb2, job_pb2, node_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = 2
"""The key layout this code writes (in the state key); a newer one is refused. 2: events in
batches (1's single events are still read)."""
BATCH_TAG = b"\x00"
"""Starts an event batch's value; no protobuf message starts with it (field 0 is invalid)."""
BATCH_LEVEL = 1
"""zlib's level for event batches: the fastest (about 50 us for 10 KB) compresses them
about sixfold; higher levels gain a few per cent for twice the time."""
MAX_BATCH_BYTES = 64 * 2**20
"""An event batch larger than this when decompressed is refused as corrupt (a commit's is
bounded by etcd's request size, 10 MiB, before compression)."""
EVENTS_PAGE = 64
"""Event batches read at a time by ``events_since``."""
MAX_TXN_OPS = 10_000
MAX_REQUEST_BYTES = 10 * 2**20
REQUIRED_FLAGS = (f"--max-txn-ops={MAX_TXN_OPS}", f"--max-request-bytes={MAX_REQUEST_BYTES}")
"""What every etcd member needs on its command line for the store's default limits."""
REQUEST_MARGIN = 4096
"""etcd checks a request's size wrapped in its raft entry: a little more than was sent."""
MAX_BATCH = 64
"""At most this many queued commits go in one transaction."""
SNAPSHOT_TIMEOUT = 600.0
"""Seconds etcd's snapshot may take to stream (a database of its 2 GiB quota, slowly)."""


# --- keys ------------------------------------------------------------------------------------


def _q(name: str) -> str:
    return quote(name, safe="")


class Keys:
    """Where each record lives under ``prefix`` (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        p = prefix.rstrip("/")
        if not p.startswith("/"):
            raise ConfigError(f"the etcd prefix must start with '/', got {prefix!r}",
                              where="etcd.prefix")
        self.prefix = p
        self.root = f"{p}/".encode()
        self.state = f"{p}/state".encode()
        self.leader = f"{p}/leader".encode()
        self.meta_dir = f"{p}/meta/".encode()
        self.jobs_dir = f"{p}/jobs/".encode()
        self.allocs_dir = f"{p}/allocs/".encode()
        self.nodes_dir = f"{p}/nodes/".encode()
        self.deployments_dir = f"{p}/deployments/".encode()
        self.evals_dir = f"{p}/evals/".encode()
        self.events_dir = f"{p}/events/".encode()
        self.probe = f"{p}/probe".encode()

    def meta(self, key: str) -> bytes:
        return self.meta_dir + _q(key).encode()

    def job(self, key: JobKey, version: int) -> bytes:
        return self.jobs_dir + f"{_q(key[0])}/{_q(key[1])}/{version:020d}".encode()

    def alloc(self, aid: str) -> bytes:
        return self.allocs_dir + _q(aid).encode()

    def node(self, nid: str) -> bytes:
        return self.nodes_dir + _q(nid).encode()

    def deployment(self, did: str) -> bytes:
        return self.deployments_dir + _q(did).encode()

    def evaluation(self, seq: int, eid: str) -> bytes:
        return self.evals_dir + f"{seq:020d}/{_q(eid)}".encode()

    def evals_below(self, seq: int) -> bytes:
        """The range end that covers every evaluation with a smaller seq."""
        return self.evals_dir + f"{seq:020d}".encode()

    def event(self, index: int) -> bytes:
        return self.events_dir + f"{index:020d}".encode()

    def parse_job(self, key: bytes) -> tuple[JobKey, int]:
        ns, name, version = key[len(self.jobs_dir):].decode().split("/")
        return (unquote(ns), unquote(name)), int(version)

    def parse_eval(self, key: bytes) -> tuple[int, str]:
        seq, eid = key[len(self.evals_dir):].decode().split("/")
        return int(seq), unquote(eid)

    def parse_event(self, key: bytes) -> int:
        return int(key[len(self.events_dir):])


# --- the state key ------------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    index: int = 0
    event_index: int = 0
    eval_seq: int = 0
    """The last seq given to an evaluation."""
    token: str = ""
    """Names the commit that wrote this value (a seal: ``seal:<token>``)."""

    def encode(self) -> bytes:
        return json.dumps({"schema": SCHEMA, "index": self.index, "event_index": self.event_index,
                           "eval_seq": self.eval_seq, "token": self.token},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> _State:
        try:
            d = json.loads(raw)
            schema = int(d["schema"])
            state = cls(int(d["index"]), int(d["event_index"]), int(d["eval_seq"]), str(d["token"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"not an orch store ({e}); choose another prefix", where=where) from e
        if schema > SCHEMA:
            raise ConfigError(f"the store was written by a newer orch (layout {schema}; this orch "
                              f"knows up to {SCHEMA}) and is left untouched; run the newer "
                              "orch-controller", where=where)
        return state


@dataclass(slots=True)
class _Cache:
    """What the store knows of etcd without reading: exact while the state key's compare holds."""

    state: _State = field(default_factory=_State)
    state_rev: int = 0
    """mod_revision of the state key (0: there is none yet)."""
    state_value: bytes = b""
    jobs: dict[JobKey, set[int]] = field(default_factory=dict)
    evals: dict[str, int] = field(default_factory=dict)
    """Evaluation id → seq."""
    eval_order: dict[int, str] = field(default_factory=dict)
    """seq → id, ascending."""
    first_event: int = 1
    """No event batch is stored under a key (its last event's index) below this."""


# --- one commit, checked and serialised ------------------------------------------------------------


@dataclass(slots=True)
class _Commit:
    purge: list[JobKey]
    delete_versions: list[tuple[JobKey, int]]
    jobs: list[tuple[JobKey, int, bytes]]
    delete_allocs: list[str]
    allocs: list[tuple[str, bytes]]
    delete_nodes: list[str]
    nodes: list[tuple[str, bytes]]
    delete_deployments: list[str]
    deployments: list[tuple[str, bytes]]
    delete_evals: list[str]
    evals: list[tuple[str, bytes]]
    events: list[controller_pb2.Event]
    """The store's own copies; the caller's are ``caller_events``."""
    caller_events: list[controller_pb2.Event]
    meta: list[tuple[str, str]]
    delete_meta: list[str]
    future: asyncio.Future[int]


def _checked(field_: str, items: Sequence[Any], cls: type[T],
             key: Callable[[T], str] | None = None) -> list[T]:
    """``items`` if each is a ``cls`` with a non-empty ``key``; else TypeError or ValueError."""
    for i, item in enumerate(items):
        if not isinstance(item, cls):
            raise TypeError(f"Changes.{field_}[{i}] is a {type(item).__name__}, not a {cls.__name__}")
        if key is not None and not key(item):
            raise ValueError(f"Changes.{field_}[{i}] has an empty key (id or name)")
    return list(items)


def _ids(field_: str, items: Sequence[Any]) -> list[str]:
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"Changes.{field_}[{i}] is a {type(item).__name__}, not a str")
    return list(items)


def _encode(c: Changes, future: asyncio.Future[int]) -> _Commit:
    """Check and serialise ``c``; raises TypeError or ValueError before anything is sent."""
    purge: list[JobKey] = []
    for i, key in enumerate(c.purge_jobs):
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise TypeError(f"Changes.purge_jobs[{i}] is not a (namespace, name) pair")
        purge.append((key[0], key[1]))
    versions: list[tuple[JobKey, int]] = []
    for i, gone in enumerate(c.delete_job_versions):
        if not (isinstance(gone, tuple) and len(gone) == 3 and isinstance(gone[0], str)
                and isinstance(gone[1], str) and isinstance(gone[2], int)):
            raise TypeError(f"Changes.delete_job_versions[{i}] is not a (namespace, name, "
                            "version) triple")
        versions.append(((gone[0], gone[1]), gone[2]))
    caller_events = _checked("events", c.events, controller_pb2.Event)
    events = []
    for ev in caller_events:
        copy = controller_pb2.Event()
        copy.CopyFrom(ev)
        events.append(copy)
    meta = []
    for k, v in c.meta.items():
        if not (isinstance(k, str) and isinstance(v, str)):
            raise TypeError(f"Changes.meta[{k!r}] is not str -> str")
        meta.append((k, v))
    return _Commit(
        purge=purge, delete_versions=versions,
        delete_evals=_ids("delete_evaluations", c.delete_evaluations),
        delete_meta=_ids("delete_meta", c.delete_meta),
        jobs=[((j.namespace, j.name), j.version, j.SerializeToString())
              for j in _checked("put_jobs", c.put_jobs, job_pb2.Job, lambda j: j.name)],
        delete_allocs=_ids("delete_allocs", c.delete_allocs),
        allocs=[(a.id, a.SerializeToString())
                for a in _checked("put_allocs", c.put_allocs, node_pb2.Allocation, lambda a: a.id)],
        delete_nodes=_ids("delete_nodes", c.delete_nodes),
        nodes=[(n.id, n.SerializeToString())
               for n in _checked("put_nodes", c.put_nodes, node_pb2.Node, lambda n: n.id)],
        delete_deployments=_ids("delete_deployments", c.delete_deployments),
        deployments=[(d.id, d.SerializeToString())
                     for d in _checked("put_deployments", c.put_deployments,
                                       controller_pb2.Deployment, lambda d: d.id)],
        evals=[(e.id, e.SerializeToString())
               for e in _checked("put_evaluations", c.put_evaluations, controller_pb2.Evaluation,
                                 lambda e: e.id)],
        events=events, caller_events=caller_events, meta=meta, future=future)


# --- planning a transaction ------------------------------------------------------------------------


class _Plan:
    """The transaction for a batch of commits, built against the cache without changing it."""

    def __init__(self, cache: _Cache, keys: Keys, *, max_evaluations: int, max_events: int) -> None:
        self.cache = cache
        self.keys = keys
        self.max_evaluations = max_evaluations
        self.max_events = max_events
        self.state = replace(cache.state)
        self.writes: dict[bytes, bytes | None] = {}
        """Key → value, or None for a delete; the last write of a key wins."""
        self.approx_bytes = 0
        self.jobs: dict[JobKey, set[int]] = {}
        """The new versions of each job this batch touches."""
        self.new_evals: dict[str, int] = {}
        self.gone_evals: set[str] = set()
        """Evaluations this batch deletes (their seq is never given again)."""
        self.eval_writes: dict[bytes, int] = {}
        self.events: list[controller_pb2.Event] = []
        """The batch's events, the transaction's together (one key)."""
        self.eval_floor = 0
        """Evaluations with a seq up to this are pruned."""
        self.commits: list[_Commit] = []

    def _write(self, key: bytes, value: bytes | None) -> None:
        self.writes[key] = value
        self.approx_bytes += len(key) + (len(value) if value is not None else 0) + 16

    def _versions(self, key: JobKey) -> set[int]:
        if key not in self.jobs:
            self.jobs[key] = set(self.cache.jobs.get(key, ()))
        return self.jobs[key]

    def add(self, c: _Commit) -> None:
        k, st = self.keys, self.state
        for job_key in c.purge:
            for version in self._versions(job_key):
                self._write(k.job(job_key, version), None)
            self.jobs[job_key] = set()
        for job_key, version in c.delete_versions:
            self._write(k.job(job_key, version), None)
            self._versions(job_key).discard(version)
        for eid in c.delete_evals:
            seq = self.new_evals.pop(eid, None) or self.cache.evals.get(eid)
            if seq is not None:
                self._write(k.evaluation(seq, eid), None)
                self.eval_writes.pop(k.evaluation(seq, eid), None)
                self.gone_evals.add(eid)
        for name in c.delete_meta:
            self._write(k.meta(name), None)
        for aid in c.delete_allocs:
            self._write(k.alloc(aid), None)
        for nid in c.delete_nodes:
            self._write(k.node(nid), None)
        for did in c.delete_deployments:
            self._write(k.deployment(did), None)
        for job_key, version, data in c.jobs:
            self._write(k.job(job_key, version), data)
            self._versions(job_key).add(version)
        for aid, data in c.allocs:
            self._write(k.alloc(aid), data)
        for nid, data in c.nodes:
            self._write(k.node(nid), data)
        for did, data in c.deployments:
            self._write(k.deployment(did), data)
        for eid, data in c.evals:
            seq = self.new_evals.get(eid) or (
                self.cache.evals.get(eid) if eid not in self.gone_evals else None)
            if seq is None or seq <= self.eval_floor:
                st.eval_seq += 1
                seq = self.new_evals[eid] = st.eval_seq
            key = k.evaluation(seq, eid)
            self._write(key, data)
            self.eval_writes[key] = seq
        for ev in c.events:
            st.event_index += 1
            ev.index = st.event_index
            self.events.append(ev)
            self.approx_bytes += ev.ByteSize() + 8
        for name, value in c.meta:
            self._write(k.meta(name), value.encode())
        st.index += 1
        if st.eval_seq:  # the newest evaluation is never pruned, so max(seq) is eval_seq
            self.eval_floor = max(self.eval_floor, st.eval_seq - self.max_evaluations)
        self.commits.append(c)

    @property
    def event_floor(self) -> int:
        """Events with an index up to this are pruned."""
        return self.state.event_index - self.max_events

    @property
    def ops(self) -> int:
        """The success branch's length: writes, the event batch, two prunes at most, the
        state key."""
        return len(self.writes) + 4

    def txn(self, fence: tuple[bytes, int] | None, token: str) -> tuple[Txn, bytes]:
        """The transaction, and the state key's new value."""
        k, cache = self.keys, self.cache
        self.state.token = token
        deletes: list[Op] = []
        puts: list[Op] = []
        floor, event_floor = self.eval_floor, self.event_floor
        for key, value in self.writes.items():
            if key in self.eval_writes and self.eval_writes[key] <= floor:
                continue  # pruned in the same breath: never written
            if value is None:
                deletes.append(Delete(key))
            else:
                puts.append(Put(key, value))
        kept = [ev for ev in self.events if ev.index > event_floor]
        if kept:  # under its last index, above the prune's range
            puts.append(Put(k.event(kept[-1].index), _encode_events(kept)))
        # each prune starts at the oldest record kept, not at its directory: etcd walks
        # every key in a range, the deleted ones too until history is compacted, so a
        # range from the directory would walk all that the commits since pruned
        oldest_eval = next(iter(cache.eval_order), None)
        if oldest_eval is not None and oldest_eval <= floor:
            deletes.append(Delete(k.evals_below(oldest_eval), k.evals_below(floor + 1)))
        if cache.first_event <= event_floor:
            deletes.append(Delete(k.event(cache.first_event), k.event(event_floor + 1)))
        state = self.state.encode()
        compare = [Compare(k.state, "mod", "==", cache.state_rev)]
        failure: list[Op] = [Get(k.state)]
        if fence is not None:
            compare.append(Compare(fence[0], "create", "==", fence[1]))
            failure.append(Get(fence[0]))
        return Txn(compare, [*deletes, *puts, Put(k.state, state)], failure), state

    def apply(self, revision: int, state_value: bytes) -> None:
        """Make the cache what etcd holds once the transaction has been applied at ``revision``."""
        cache = self.cache
        cache.state, cache.state_rev, cache.state_value = self.state, revision, state_value
        for job_key, versions in self.jobs.items():
            if versions:
                cache.jobs[job_key] = versions
            else:
                cache.jobs.pop(job_key, None)
        for eid in self.gone_evals:
            seq = cache.evals.pop(eid, None)
            if seq is not None:
                cache.eval_order.pop(seq, None)
        for eid, seq in sorted(self.new_evals.items(), key=lambda item: item[1]):
            if seq > self.eval_floor:
                cache.evals[eid] = seq
                cache.eval_order[seq] = eid
        while cache.eval_order:
            seq = next(iter(cache.eval_order))
            if seq > self.eval_floor:
                break
            eid = cache.eval_order.pop(seq)
            if cache.evals.get(eid) == seq:
                del cache.evals[eid]
        cache.first_event = max(cache.first_event, self.event_floor + 1)


@dataclass(slots=True)
class _Doubt:
    """A transaction whose answer was lost: ``expected`` is the state revision it compared."""

    plan: _Plan
    expected: int
    token: str
    fence: tuple[bytes, int] | None
    seal_value: bytes


@dataclass(slots=True)
class _Load:
    future: asyncio.Future[StoreSnapshot]


@dataclass(slots=True)
class _Replace:
    snap: StoreSnapshot
    future: asyncio.Future[int]


class _Close:
    pass


# --- the store ----------------------------------------------------------------------------------


class EtcdStore(Store):
    """The controller's store in etcd (one transaction per commit; fenced by the leader key). ::

        store = EtcdStore(["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"])
        await store.open()                  # StoreError if etcd cannot be reached; ConfigError
                                            # if its flags are short of the limits
        term = await election.campaign()    # controller.election
        store.fence(term.key, term.revision)
        snapshot = await store.load()       # after fencing: everything the last leader wrote
        index = await store.commit(Changes(put_jobs=[job]))   # FencedError once deposed
        await store.close()

    ``timeout`` bounds every call (retries and the resolution of a lost answer
    included); ``max_txn_ops`` and ``max_request_bytes`` must not exceed the etcd
    flags of the same names (``open`` checks them unless ``verify_limits`` is off);
    ``max_evaluations`` and ``max_events`` bound the evaluation history and the
    event log as in SQLite. ``client`` shares one ``EtcdClient`` with the election;
    the store then neither opens nor closes it.
    """

    def __init__(self, endpoints: Sequence[str] | EtcdClient, *, prefix: str = "/orch",
                 max_evaluations: int = MAX_EVALUATIONS, max_events: int = 100_000,
                 timeout: float = 5.0, max_txn_ops: int = MAX_TXN_OPS,
                 max_request_bytes: int = MAX_REQUEST_BYTES, compact_every: int = 1000,
                 verify_limits: bool = True, tls: TlsConfig | None = None) -> None:
        if max_evaluations < 1 or max_events < 1:
            raise ConfigError("max_evaluations and max_events must be at least 1", where="store")
        if max_txn_ops < 16 or max_request_bytes < 64 * 1024:
            raise ConfigError("max_txn_ops must be at least 16 and max_request_bytes at least "
                              "65536", where="store")
        self.keys = Keys(prefix)
        self._own_client = not isinstance(endpoints, EtcdClient)
        self.client = (EtcdClient(endpoints, timeout=timeout, tls=tls)
                       if not isinstance(endpoints, EtcdClient) else endpoints)
        self.prefix = self.keys.prefix
        self.max_evaluations = max_evaluations
        self.max_events = max_events
        self.timeout = timeout
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self.compact_every = compact_every
        self.verify_limits = verify_limits
        self._fence: tuple[bytes, int] | None = None
        self._cache = _Cache()
        self._stale = True
        self._doubt: _Doubt | None = None
        self._queue: deque[_Commit | _Load | _Replace | _Close] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._marks: deque[tuple[int, int]] = deque()
        """(commit index, etcd revision) every ``compact_every`` commits."""
        self._compacting: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        return f"etcd {self.client.where} {self.prefix}"

    # --- fencing ----------------------------------------------------------------------------------

    def fence(self, key: str | bytes, revision: int) -> None:
        """From now on, commit only while ``key`` is the incarnation created at ``revision``.

        Call it with the leader key and the revision the election won (``Term.key``,
        ``Term.revision``) before ``load``: every later commit's transaction then also
        compares the key's create_revision, so once another controller leads (the
        key expired, was resigned, or is someone else's) etcd refuses the commit and
        it raises ``FencedError``, nothing written.
        """
        if revision <= 0:
            raise ValueError(f"a fencing revision is positive, got {revision}")
        self._fence = (key.encode() if isinstance(key, str) else bytes(key), revision)

    def unfence(self) -> None:
        """Commit without checking a leader key again (a single controller)."""
        self._fence = None

    @property
    def fenced_by(self) -> tuple[str, int] | None:
        """(leader key, revision) while fenced."""
        return None if self._fence is None else (self._fence[0].decode(), self._fence[1])

    # --- the interface ------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._worker is not None:
            raise StoreError(f"{self.where}: the store is already open")
        if self._own_client:
            await self.client.open()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            await self._sync(deadline)
            if self.verify_limits:
                await self._verify_limits()
        except BaseException:
            if self._own_client:
                await self.client.close()
            raise
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name=f"orch-etcd-store {self.prefix}")

    async def close(self) -> None:
        """Finish the calls already made, then close; later calls raise StoreError."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        self._queue.append(_Close())
        self._wakeup.set()
        try:
            await asyncio.shield(worker)
        finally:
            if self._compacting is not None:
                self._compacting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._compacting
            if self._own_client:
                await self.client.close()

    async def load(self) -> StoreSnapshot:
        future: asyncio.Future[StoreSnapshot] = asyncio.get_running_loop().create_future()
        self._submit(_Load(future))
        return await asyncio.shield(future)

    async def commit(self, changes: Changes) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        item = _encode(changes, future)  # TypeError/ValueError here, before anything is queued
        self._submit(item)
        return await asyncio.shield(future)

    async def backup(self, dest: Path) -> None:
        """etcd's own snapshot of its database (every prefix: etcd has one database), with
        the SHA-256 etcd appends, written to ``dest``."""
        if self._worker is None:
            raise StoreError(f"{self.where}: the store is not open")
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            async for piece in self.client.snapshot(within=SNAPSHOT_TIMEOUT):
                await asyncio.to_thread(f.write, piece)
            f.flush()
            os.fsync(f.fileno())

    async def replace(self, snap: StoreSnapshot) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._submit(_Replace(snap, future))
        return await asyncio.shield(future)

    async def index(self) -> int:
        """The index of the last commit, read from etcd (one small get): how a follower
        learns that the leader wrote something."""
        kv = await self.client.get(self.keys.state, within=self.timeout)
        return _State.decode(kv.value, self.where).index if kv is not None else 0

    async def defragment(self) -> bool:
        """Not here: defragmenting an etcd member blocks it, and its operators choose when
        (``etcdctl defrag``, one member at a time); this store compacts etcd's history."""
        return False

    async def size(self) -> StoreSize:
        """Records under this prefix (counted by etcd; events from the log's ends), and the
        bytes etcd's database uses (for every prefix: etcd has one database)."""
        if self._worker is None:
            raise StoreError(f"{self.where}: the store is not open")
        k = self.keys
        rows = {}
        for kind, prefix in (("jobs", k.jobs_dir), ("allocations", k.allocs_dir),
                             ("nodes", k.nodes_dir), ("deployments", k.deployments_dir),
                             ("evaluations", k.evals_dir), ("meta", k.meta_dir)):
            rows[kind] = await self.client.count(prefix, prefix_end(prefix), within=self.timeout)
        head = await self.client.get(k.state, within=self.timeout)
        last = _State.decode(head.value, self.where).event_index if head is not None else 0
        oldest = await self.client.range(k.events_dir, prefix_end(k.events_dir), limit=1,
                                         within=self.timeout)
        if oldest.kvs:  # indexes are consecutive: the log holds from its first kept to last
            first = max(_decode_events(oldest.kvs[0].value)[0].index, last - self.max_events + 1)
            rows["events"] = max(0, last - first + 1)
        else:
            rows["events"] = 0
        return StoreSize(bytes=await self.client.db_size(within=self.timeout), rows=rows)

    async def events_since(self, index: int, limit: int = 1000) -> list[controller_pb2.Event]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if self._worker is None:
            raise StoreError(f"{self.where}: the store is not open")
        k = self.keys
        head = await self.client.get(k.state, within=self.timeout)
        last = _State.decode(head.value, self.where).event_index if head is not None else 0
        first = max(index, last - self.max_events, 0) + 1  # a batch may straddle the floor
        out: list[controller_pb2.Event] = []
        start, end = k.event(first), prefix_end(k.events_dir)
        while len(out) < limit:  # each batch holds one event at least
            got = await self.client.range(start, end, limit=min(EVENTS_PAGE, limit - len(out)),
                                          within=self.timeout)
            for kv in got.kvs:
                out += [ev for ev in _decode_events(kv.value) if ev.index >= first]
            if not got.more or not got.kvs:
                break
            start = got.kvs[-1].key + b"\0"
        return out[:limit]

    # --- the worker: one call at a time, in the order made ----------------------------------------------

    def _submit(self, item: _Commit | _Load | _Replace) -> None:
        if self._worker is None:
            raise StoreError(f"{self.where}: the store is not open")
        item.future.add_done_callback(_retrieve)  # a cancelled caller leaves it unread
        self._queue.append(item)
        self._wakeup.set()

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = queue.popleft()
            if isinstance(item, _Close):
                break
            if isinstance(item, _Load):
                try:
                    snap = await self._load()
                except Exception as e:
                    _fail([item], e)
                else:
                    if not item.future.done():
                        item.future.set_result(snap)
                continue
            if isinstance(item, _Replace):
                try:
                    index = await self._replace(item.snap)
                except Exception as e:
                    self._stale = True
                    _fail([item], e)
                else:
                    if not item.future.done():
                        item.future.set_result(index)
                continue
            batch = [item]
            while queue and isinstance(queue[0], _Commit) and len(batch) < MAX_BATCH:
                nxt = queue.popleft()
                assert isinstance(nxt, _Commit)
                batch.append(nxt)
            try:
                await self._commit_batch(batch)
            except Exception as e:  # StoreError and surprises alike go to the callers
                _fail(batch, e)
        for item in queue:  # nothing is queued after _Close; be safe
            if not isinstance(item, _Close) and not item.future.done():
                item.future.set_exception(StoreError(f"{self.where}: the store is closed"))

    async def _commit_batch(self, batch: list[_Commit]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._doubt is not None:
            try:
                await self._resolve(deadline, quiet_fence=False)
            except CommitInDoubtError as e:  # an earlier commit's doubt, not this one's
                raise StoreError(f"{self.where}: etcd cannot be reached to settle an earlier "
                                 "commit in doubt; this commit wrote nothing") from e
        if self._stale:
            await self._sync(deadline)
        while True:
            plan, rest = self._plan(batch)
            if rest:  # too much for one transaction: the rest goes next
                for c in reversed(rest):
                    self._queue.appendleft(c)
                del batch[len(batch) - len(rest):]  # in place: the caller fails only these
            revision = await self._send(plan, deadline)
            if revision is None:
                continue  # sealed, not applied: plan again against the new state revision
            first_index = plan.state.index - len(batch) + 1
            for i, c in enumerate(batch):
                for mine, theirs in zip(c.events, c.caller_events, strict=True):
                    theirs.index = mine.index
                if not c.future.done():
                    c.future.set_result(first_index + i)
            self._after_commit(plan.state.index, revision)
            return

    def _plan(self, batch: list[_Commit]) -> tuple[_Plan, list[_Commit]]:
        """The plan of the longest head of ``batch`` that fits one transaction, and the rest.

        A first commit that does not fit alone fails with StoreError, nothing sent.
        """
        plan = self._new_plan()
        room = self.max_request_bytes - REQUEST_MARGIN - 1024
        for i, c in enumerate(batch):
            plan.add(c)
            if plan.ops <= self.max_txn_ops and plan.approx_bytes <= room:
                continue
            if i == 0:
                return plan, batch[1:]  # too big alone: _send refuses it, nothing sent
            plan = self._new_plan()
            for done in batch[:i]:
                plan.add(done)
            return plan, batch[i:]
        return plan, []

    def _new_plan(self) -> _Plan:
        return _Plan(self._cache, self.keys, max_evaluations=self.max_evaluations,
                     max_events=self.max_events)

    async def _send(self, plan: _Plan, deadline: float) -> int | None:
        """Run ``plan``'s transaction: the revision it was applied at, or None when a lost
        answer was sealed (nothing applied; plan again). Raises StoreError when refused."""
        loop = asyncio.get_running_loop()
        token = secrets.token_hex(8)
        fence = self._fence
        txn, state_value = plan.txn(fence, token)
        message = txn.message()
        self._check_size(txn, message.ByteSize(), len(plan.commits))
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise StoreError(f"{self.where}: the commit found no time left (timeout "
                             f"{self.timeout} s) and wrote nothing")
        try:
            result = await self.client.txn(message, within=remaining)
        except EtcdInDoubt as e:
            self._doubt = _Doubt(plan, self._cache.state_rev, token, fence,
                                 replace(self._cache.state, token=f"seal:{token}").encode())
            log.warning("etcd store: the answer to a commit was lost (%s); resolving it", e)
            if await self._resolve(deadline, quiet_fence=False):
                return self._cache.state_rev
            return None
        except EtcdRejected as e:
            raise StoreError(f"{self.where}: etcd refused the commit and nothing was written: "
                             f"{_explain(e.details)}") from e
        except EtcdError as e:
            raise StoreError(f"{self.where}: etcd cannot be reached ({e}); the commit wrote "
                             "nothing") from e
        if not result.succeeded:
            raise self._refused(result, fence)
        plan.apply(result.revision, state_value)
        return result.revision

    def _check_size(self, txn: Txn, size: int, commits: int) -> None:
        what = "the commit" if commits == 1 else f"{commits} commits together"
        if txn.ops > self.max_txn_ops:
            raise StoreError(
                f"{self.where}: {what} needs {txn.ops:,} operations in one etcd transaction, more "
                f"than this store allows (max_txn_ops={self.max_txn_ops:,}, etcd's --max-txn-ops); "
                "nothing was written. Raise both, or commit less at once")
        if size + REQUEST_MARGIN > self.max_request_bytes:
            raise StoreError(
                f"{self.where}: {what} is {size:,} bytes, more than this store allows "
                f"(max_request_bytes={self.max_request_bytes:,}, etcd's --max-request-bytes, "
                f"with {REQUEST_MARGIN} bytes for etcd's own framing); nothing was written. "
                "Raise both, or commit less at once")

    def _refused(self, result: TxnResult, fence: tuple[bytes, int] | None) -> StoreError:
        """Why a commit's compares failed: deposed (FencedError) or another writer."""
        self._stale = True
        if fence is not None:
            holder = result.ranges[1][0] if len(result.ranges) > 1 and result.ranges[1] else None
            if holder is None or holder.create_revision != fence[1]:
                return _fenced(fence, holder)
        state = result.ranges[0][0] if result.ranges and result.ranges[0] else None
        found = _State.decode(state.value, self.where).index if state is not None else 0
        return StoreError(
            f"{self.where}: another writer changed the store (its commit index is {found}, this "
            f"store expected {self._cache.state.index}); nothing was written. Only the leader "
            "may write: load() again before writing")

    async def _resolve(self, deadline: float, *, quiet_fence: bool) -> bool:
        """Settle the commit in doubt: True if it was applied, False if it never will be.

        Raises CommitInDoubtError when etcd cannot be reached in time (the doubt stays
        for the next call), FencedError when this store was deposed meanwhile (unless
        ``quiet_fence``: the doubt is settled either way, as the commit can no longer apply).
        """
        doubt = self._doubt
        assert doubt is not None
        k = self.keys
        loop = asyncio.get_running_loop()
        compare = [Compare(k.state, "mod", "==", doubt.expected)]
        failure: list[Op] = [Get(k.state)]
        if doubt.fence is not None:
            compare.append(Compare(doubt.fence[0], "create", "==", doubt.fence[1]))
            failure.append(Get(doubt.fence[0]))
        seal = Txn(compare, [Put(k.state, doubt.seal_value)], failure)
        unknown = CommitInDoubtError(
            f"{self.where}: etcd stopped answering during a commit and cannot be reached to "
            "learn whether it was applied; the store settles it before its next call (load() "
            "then shows whether it landed)")
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise unknown
            try:
                result = await self.client.txn(seal, within=remaining)
                break
            except EtcdRejected as e:
                raise StoreError(f"{self.where}: settling a commit in doubt failed: {e}") from e
            except EtcdUnavailable as e:  # nothing listens: waiting longer would not tell
                raise unknown from e
            except EtcdInDoubt:
                continue  # the seal's own answer was lost: seal again (it is idempotent)
        self._doubt = None
        if result.succeeded:
            self._cache.state_rev = result.revision
            self._cache.state_value = doubt.seal_value
            log.info("etcd store: the commit in doubt was not applied and never will be")
            return False
        state = result.ranges[0][0] if result.ranges and result.ranges[0] else None
        token = _State.decode(state.value, self.where).token if state is not None else ""
        if state is not None and token == doubt.token:
            doubt.plan.apply(state.mod_revision, state.value)
            log.info("etcd store: the commit in doubt was applied")
            return True
        if state is not None and token == f"seal:{doubt.token}":
            self._cache.state_rev, self._cache.state_value = state.mod_revision, state.value
            return False
        self._stale = True
        if doubt.fence is not None:
            holder = result.ranges[1][0] if len(result.ranges) > 1 and result.ranges[1] else None
            if holder is None or holder.create_revision != doubt.fence[1]:
                if quiet_fence:
                    return False
                raise _fenced(doubt.fence, holder)
        raise StoreError(f"{self.where}: another writer changed the store while a commit was in "
                         "doubt; whether it landed is unknown: load() again before writing")

    def _after_commit(self, index: int, revision: int) -> None:
        """Every ``compact_every`` commits, compact etcd up to ``compact_every`` commits ago."""
        if self.compact_every <= 0:
            return
        if self._marks and index - self._marks[-1][0] < self.compact_every:
            return
        self._marks.append((index, revision))
        if len(self._marks) < 2:
            return
        _, target = self._marks.popleft()
        if self._compacting is None or self._compacting.done():
            self._compacting = asyncio.create_task(self._compact(target))

    async def _compact(self, revision: int) -> None:
        try:
            await self.client.compact(revision, within=self.timeout)
        except EtcdError as e:
            log.warning("etcd store: compacting the history up to revision %d failed: %s",
                        revision, e)

    # --- reading ------------------------------------------------------------------------------------

    async def _sync(self, deadline: float) -> None:
        """Read what the cache holds (keys only) at one revision."""
        loop = asyncio.get_running_loop()
        k = self.keys
        for attempt in range(3):
            timeout = max(0.1, deadline - loop.time())
            head = await self.client.range(k.state, within=timeout)
            rev = head.revision
            try:
                jobs = await self.client.range_all(k.jobs_dir, prefix_end(k.jobs_dir), revision=rev,
                                                   keys_only=True, within=timeout)
                evals = await self.client.range_all(k.evals_dir, prefix_end(k.evals_dir),
                                                    revision=rev, keys_only=True, within=timeout)
                first = await self.client.range(k.events_dir, prefix_end(k.events_dir), limit=1,
                                                 revision=rev, keys_only=True, within=timeout)
            except EtcdRejected as e:
                if "compacted" in e.details and attempt < 2:
                    continue
                raise
            cache = _Cache()
            if head.kvs:
                kv = head.kvs[0]
                cache.state = _State.decode(kv.value, self.where)
                cache.state_rev, cache.state_value = kv.mod_revision, kv.value
            for kv in jobs:
                job_key, version = k.parse_job(kv.key)
                cache.jobs.setdefault(job_key, set()).add(version)
            for kv in evals:
                seq, eid = k.parse_eval(kv.key)
                cache.evals[eid] = seq
                cache.eval_order[seq] = eid
            cache.first_event = (k.parse_event(first.kvs[0].key) if first.kvs
                                 else cache.state.event_index + 1)
            self._cache, self._stale = cache, False
            return

    async def _load(self) -> StoreSnapshot:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._doubt is not None:
            try:
                await self._resolve(deadline, quiet_fence=True)
            except CommitInDoubtError as e:
                raise StoreError(f"{self.where}: etcd cannot be reached to settle a commit in "
                                 "doubt, so there is nothing certain to load yet") from e
        k = self.keys
        for attempt in range(3):
            head = await self.client.range(k.state, within=self.timeout)
            rev = head.revision

            async def everything(prefix: bytes, rev: int = rev) -> list[KeyValue]:
                return await self.client.range_all(prefix, prefix_end(prefix), revision=rev,
                                                   within=self.timeout)
            try:
                meta, jobs, allocs, nodes, deployments, evals = [
                    await everything(p) for p in (k.meta_dir, k.jobs_dir, k.allocs_dir,
                                                  k.nodes_dir, k.deployments_dir, k.evals_dir)]
                first = await self.client.range(k.events_dir, prefix_end(k.events_dir), limit=1,
                                                revision=rev, keys_only=True, within=self.timeout)
            except EtcdRejected as e:
                if "compacted" in e.details and attempt < 2:
                    continue
                raise
            snap = StoreSnapshot()
            cache = _Cache()
            if head.kvs:
                kv = head.kvs[0]
                cache.state = _State.decode(kv.value, self.where)
                cache.state_rev, cache.state_value = kv.mod_revision, kv.value
            snap.index, snap.event_index = cache.state.index, cache.state.event_index
            snap.meta = {unquote(kv.key[len(k.meta_dir):].decode()): kv.value.decode()
                         for kv in meta}
            for kv in jobs:  # ascending keys: by namespace, name, version
                job = job_pb2.Job.FromString(kv.value)
                snap.jobs.setdefault((job.namespace, job.name), []).append(job)
                cache.jobs.setdefault((job.namespace, job.name), set()).add(job.version)
            table = AllocTable()  # kept as etcd holds them (ids from the keys)
            for kv in allocs:
                table.put_raw(unquote(kv.key[len(k.allocs_dir):].decode()), kv.value)
            snap.allocs = table
            snap.nodes = {n.id: n for n in (node_pb2.Node.FromString(kv.value) for kv in nodes)}
            snap.deployments = {d.id: d for d in (controller_pb2.Deployment.FromString(kv.value)
                                                  for kv in deployments)}
            for kv in evals:  # ascending seq: the order first stored
                seq, eid = k.parse_eval(kv.key)
                snap.evaluations.append(controller_pb2.Evaluation.FromString(kv.value))
                cache.evals[eid] = seq
                cache.eval_order[seq] = eid
            cache.first_event = (k.parse_event(first.kvs[0].key) if first.kvs
                                 else cache.state.event_index + 1)
            self._cache, self._stale = cache, False
            return snap
        raise StoreError(f"{self.where}: the history kept being compacted during load")

    async def _replace(self, snap: StoreSnapshot) -> int:
        """Delete every record under the prefix, then put ``snap``'s, in transactions that
        each fit etcd's limits; every one compares the state key (one writer) and the fence.
        The last one puts the state key with the new index."""
        loop = asyncio.get_running_loop()
        if self._doubt is not None:
            await self._resolve(loop.time() + self.timeout, quiet_fence=False)
        await self._sync(loop.time() + self.timeout)
        k = self.keys
        puts: list[tuple[bytes, bytes]] = [(k.meta(n), v.encode()) for n, v in snap.meta.items()]
        for job_key, versions in snap.jobs.items():
            puts += [(k.job(job_key, v.version), v.SerializeToString()) for v in versions]
        puts += [(k.alloc(a.id), a.SerializeToString()) for a in snap.allocs.values()]
        puts += [(k.node(n.id), n.SerializeToString()) for n in snap.nodes.values()]
        puts += [(k.deployment(d.id), d.SerializeToString()) for d in snap.deployments.values()]
        state = replace(self._cache.state)
        for e in snap.evaluations:
            state.eval_seq += 1
            puts.append((k.evaluation(state.eval_seq, e.id), e.SerializeToString()))
        state.index = max(state.index, snap.index) + 1
        first: list[Op] = [Delete(d, prefix_end(d)) for d in (
            k.meta_dir, k.jobs_dir, k.allocs_dir, k.nodes_dir, k.deployments_dir, k.evals_dir)]
        groups: list[list[Op]] = [first, []]  # etcd refuses a put under a range deleted
        size = 0                               # in the same transaction
        room = self.max_request_bytes - REQUEST_MARGIN - 4096
        for key, value in puts:
            if len(groups[-1]) + 3 > self.max_txn_ops or size + len(key) + len(value) + 16 > room:
                groups.append([])
                size = 0
            groups[-1].append(Put(key, value))
            size += len(key) + len(value) + 16
        for i, ops in enumerate(groups):
            last = i == len(groups) - 1
            token = secrets.token_hex(8)
            marker = replace(self._cache.state, token=f"restoring:{token}") if not last \
                else replace(state, token=token)
            value = marker.encode()
            compare = [Compare(k.state, "mod", "==", self._cache.state_rev)]
            failure: list[Op] = [Get(k.state)]
            if self._fence is not None:
                compare.append(Compare(self._fence[0], "create", "==", self._fence[1]))
                failure.append(Get(self._fence[0]))
            txn = Txn(compare, [*ops, Put(k.state, value)], failure)
            try:
                result = await self.client.txn(txn, within=self.timeout)
            except EtcdError as e:
                raise StoreError(f"{self.where}: the restore stopped after {i} of {len(groups)} "
                                 f"transactions ({e}); the store now holds part of the snapshot: "
                                 "restore it again") from e
            if not result.succeeded:
                raise self._refused(result, self._fence)
            self._cache.state_rev, self._cache.state_value = result.revision, value
            self._cache.state = marker
        self._stale = True
        await self._sync(loop.time() + self.timeout)
        return state.index

    async def _verify_limits(self) -> None:
        """Check with a read-only transaction (nothing is written) that etcd takes as many
        operations and bytes as this store may send; ConfigError if not."""
        k = self.keys
        filler = max(0, self.max_request_bytes - REQUEST_MARGIN - self.max_txn_ops * (len(k.probe) + 4))
        probe = Txn([Compare(k.probe, "value", "==", b"\0" * filler)],
                    [Get(k.probe)] * self.max_txn_ops, [])
        try:
            await self.client.txn(probe, within=self.timeout)
        except EtcdRejected as e:
            if "too many operations" in e.details:
                raise ConfigError(
                    f"etcd at {self.client.where} allows fewer than {self.max_txn_ops:,} operations "
                    f"per transaction: start every member with --max-txn-ops={self.max_txn_ops} "
                    "(or give the store a smaller max_txn_ops)", where="etcd") from e
            if "larger than max" in e.details or e.code == "RESOURCE_EXHAUSTED":
                raise ConfigError(
                    f"etcd at {self.client.where} takes requests smaller than "
                    f"{self.max_request_bytes:,} bytes: start every member with "
                    f"--max-request-bytes={self.max_request_bytes} (or give the store a smaller "
                    "max_request_bytes)", where="etcd") from e
            raise


def read_backup(path: Path, prefix: str) -> StoreSnapshot:
    """The records under ``prefix`` in an etcd snapshot (``EtcdStore.backup``, or etcd's own
    ``snapshot save``), read without etcd: its SHA-256 checked, its bbolt file walked, its
    keys replayed to the snapshot's revision (``controller.store.bbolt``). StoreError says
    what is wrong."""
    k = Keys(prefix)
    _, live = latest_keys(check_hash(path.read_bytes()), k.root)
    snap = StoreSnapshot()
    where = f"{path} ({prefix})"
    try:
        state = live.get(k.state)
        if state is None:
            raise StoreError(f"{where}: the snapshot holds no orch store under this prefix")
        st = _State.decode(state, where)
        snap.index, snap.event_index = st.index, st.event_index
        allocs = AllocTable()
        snap.allocs = allocs
        for key in sorted(live):
            value = live[key]
            if key.startswith(k.meta_dir):
                snap.meta[unquote(key[len(k.meta_dir):].decode())] = value.decode()
            elif key.startswith(k.jobs_dir):
                job = job_pb2.Job.FromString(value)
                snap.jobs.setdefault((job.namespace, job.name), []).append(job)
            elif key.startswith(k.allocs_dir):
                a = node_pb2.Allocation.FromString(value)  # checked: a snapshot is outside input
                allocs.put(a.id, a, value)
            elif key.startswith(k.nodes_dir):
                n = node_pb2.Node.FromString(value)
                snap.nodes[n.id] = n
            elif key.startswith(k.deployments_dir):
                d = controller_pb2.Deployment.FromString(value)
                snap.deployments[d.id] = d
            elif key.startswith(k.evals_dir):
                snap.evaluations.append(controller_pb2.Evaluation.FromString(value))
    except (DecodeError, UnicodeDecodeError, ValueError) as e:
        raise StoreError(f"{where}: a record in the snapshot cannot be read: {e}") from e
    return snap


def _encode_events(events: Sequence[controller_pb2.Event]) -> bytes:
    """An event batch's value."""
    batch = controller_pb2.EventBatch(events=events).SerializeToString()
    return BATCH_TAG + zlib.compress(batch, BATCH_LEVEL)


def _decode_events(value: bytes) -> list[controller_pb2.Event]:
    """The events of a batch's value, or layout 1's single event; StoreError if corrupt."""
    unpack = zlib.decompressobj()
    try:
        if not value.startswith(BATCH_TAG):
            return [controller_pb2.Event.FromString(value)]
        batch = unpack.decompress(value[len(BATCH_TAG):], MAX_BATCH_BYTES)
        if unpack.unconsumed_tail or not unpack.eof:
            raise StoreError("an event batch in the store is cut short or larger than "
                             f"{MAX_BATCH_BYTES:,} bytes")
        return list(controller_pb2.EventBatch.FromString(batch).events)
    except (zlib.error, DecodeError) as e:
        raise StoreError(f"an event batch in the store cannot be read: {e}") from e


def _fenced(fence: tuple[bytes, int], holder: KeyValue | None) -> FencedError:
    key = fence[0].decode()
    if holder is None:
        now = f"the leader key {key} is gone (the lease expired or the leader resigned)"
    else:
        now = (f"the leader key {key} now belongs to {holder.value.decode(errors='replace')!r} "
               f"since revision {holder.create_revision}")
    return FencedError(f"this controller is no longer the leader: {now}, and this controller "
                       f"was elected at revision {fence[1]}; nothing was written",
                       key=key, revision=fence[1],
                       holder=holder.value.decode(errors="replace") if holder else None)


def _explain(details: str) -> str:
    if "too many operations" in details:
        return (f"{details}: the etcd members need --max-txn-ops of at least the store's "
                "max_txn_ops")
    if "request is too large" in details or "larger than max" in details:
        return (f"{details}: the etcd members need --max-request-bytes of at least the store's "
                "max_request_bytes")
    if "database space exceeded" in details:
        return (f"{details}: etcd reached its quota; compact, defragment and disarm the alarm "
                "(etcdctl alarm disarm)")
    return details


def _fail(items: Sequence[_Commit | _Load | _Replace], error: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
