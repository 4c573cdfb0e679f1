"""Backing up the controller's store and restoring it: ``orchctl operator snapshot save|restore``.

A snapshot file is one header line and the store's own snapshot::

    orch-snapshot 1 {"store": "sqlite", "cluster_id": ..., "index": ..., "epoch": ...,
                     "sha256": <of the payload>, "size": <its length>, ...}\\n
    <payload>   SQLite's online backup of the database (a consistent copy taken while
                commits wait), or etcd's snapshot of its database (its SHA-256 at the end)

A restore checks everything before it changes anything: the header, the payload's length and
SHA-256, then the store's own integrity (SQLite's integrity check; etcd's SHA-256 and its
bbolt pages), and that the snapshot is of this cluster (the CA it was taken under). Then the
leader replaces the store's records with the snapshot's, and advances the store's *epoch*:
every agent applies the restored desired sets although their versions are lower than what
it applied before (the agents pin the cluster id; the epoch tells a newer lineage of the
same cluster's store). A snapshot of either store restores into either (its records are
the same), so a restore also moves a cluster from SQLite to etcd.

What a restore keeps of the store it replaces: the event log (it is history, not state),
the access token the restore was made with (the operator is not locked out by a snapshot
older than their token), and this controller's own address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from controller.cluster import Cluster
from controller.planner import event
from controller.store.base import CLUSTER_ID, EPOCH, Changes, Store, StoreSnapshot
from controller.store.sqlite import SQLiteStore, read_backup
from orch.errors import ConfigError, RequestError, StoreError

log = logging.getLogger("controller.snapshot")

MAGIC = b"orch-snapshot 1 "
MAX_HEADER = 64 * 1024
"""A header line longer than this is not a snapshot's."""
MAX_SNAPSHOT_BYTES = 8 * 2**30
"""The largest snapshot a restore accepts: etcd's largest quota (8 GiB) holds no more."""
CHUNK = 1 << 20
"""Bytes per streamed piece (well under gRPC's message limits)."""


@dataclass(frozen=True, slots=True)
class Header:
    store: str
    """sqlite or etcd: how the payload is read."""
    prefix: str
    """etcd: the key prefix of the store in etcd's database."""
    cluster_id: str
    ca_digest: str
    """The cluster CA's digest ("" without TLS): a snapshot restores into its cluster only."""
    index: int
    epoch: int
    created_ns: int
    size: int
    """The payload's length in bytes."""
    sha256: str

    def line(self) -> bytes:
        return MAGIC + json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def parse(cls, line: bytes, where: str) -> Header:
        if not line.startswith(MAGIC):
            raise RequestError(f"{where}: not an orch snapshot (it does not start with "
                               f"{MAGIC.decode().strip()!r}): save one with `orchctl operator "
                               "snapshot save`")
        try:
            doc = json.loads(line[len(MAGIC):])
            return cls(store=str(doc["store"]), prefix=str(doc.get("prefix", "")),
                       cluster_id=str(doc["cluster_id"]), ca_digest=str(doc.get("ca_digest", "")),
                       index=int(doc["index"]), epoch=int(doc.get("epoch", 0)),
                       created_ns=int(doc["created_ns"]), size=int(doc["size"]),
                       sha256=str(doc["sha256"]))
        except (ValueError, KeyError, TypeError) as e:
            raise RequestError(f"{where}: the snapshot's header cannot be read ({e}): the file "
                               "is damaged") from e


def store_kind(store: Store) -> tuple[str, str]:
    """(sqlite or etcd, the etcd prefix)."""
    if isinstance(store, SQLiteStore):
        return "sqlite", ""
    prefix = getattr(store, "prefix", None)
    if isinstance(prefix, str):
        return "etcd", prefix
    raise ConfigError(f"snapshots of a {type(store).__name__} are not supported")


def read_payload(header: Header, payload: Path) -> StoreSnapshot:
    """The records of a checked payload, by its store's own reader (StoreError if damaged)."""
    if header.store == "sqlite":
        return read_backup(payload)
    if header.store == "etcd":  # imported on first use, as the etcd store is
        from controller.store.etcd import read_backup as read_etcd
        return read_etcd(payload, header.prefix or "/orch")
    raise RequestError(f"the snapshot is of a {header.store!r} store, which this orch does not "
                       "know (sqlite, etcd)")


def open_file(path: Path, workdir: Path) -> tuple[Header, StoreSnapshot]:
    """Check a snapshot file whole and read its records (nothing is changed anywhere).
    RequestError or StoreError say what is wrong with it."""
    where = str(path)
    workdir.mkdir(parents=True, exist_ok=True)
    with path.open("rb") as f:
        line = f.readline(MAX_HEADER)
        if not line.endswith(b"\n"):
            raise RequestError(f"{where}: not an orch snapshot (no header line)")
        header = Header.parse(line, where)
        fd, name = tempfile.mkstemp(prefix="payload-", dir=workdir)
        payload = Path(name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                while piece := f.read(CHUNK):
                    digest.update(piece)
                    size += len(piece)
                    out.write(piece)
            if size != header.size:
                raise RequestError(f"{where}: the snapshot is cut off or padded ({size:,} bytes "
                                   f"after the header; it says {header.size:,})")
            if digest.hexdigest() != header.sha256:
                raise RequestError(f"{where}: the snapshot's SHA-256 does not match its header: "
                                   "the file is damaged; use another copy")
            return header, read_payload(header, payload)
        finally:
            payload.unlink(missing_ok=True)


def restored_meta(snap: StoreSnapshot, header: Header, current: dict[str, str], now_ns: int,
                  keep: tuple[str, ...] = ()) -> int:
    """Set the meta a restored store starts with (in ``snap``): the ``keep`` keys of the
    ``current`` meta, a cluster id, and a new epoch, newer than the store's and the
    snapshot's; returns the epoch."""
    epoch = max(now_ns, int(current.get(EPOCH, "0") or 0) + 1, header.epoch + 1)
    for key in keep:
        if key in current:
            snap.meta[key] = current[key]
    snap.meta.setdefault(CLUSTER_ID, current.get(CLUSTER_ID) or str(uuid.uuid4()))
    snap.meta[EPOCH] = str(epoch)
    return epoch


async def restore_at_start(store: Store, path: Path, workdir: Path, *, ca_digest: str,
                           clock: Callable[[], float] = time.time) -> Header:
    """Restore ``path`` into an open ``store`` before the controller serves (nothing else
    writes yet): the same checks and meta as ``Snapshots.restore``."""
    header, snap = await asyncio.to_thread(open_file, path, workdir)
    if ca_digest and header.ca_digest and header.ca_digest != ca_digest:
        raise ConfigError("the snapshot is of another cluster (its CA differs from this one's)",
                          where=str(path))
    current = (await store.load()).meta
    epoch = restored_meta(snap, header, current, int(clock() * 1e9))
    index = await store.replace(snap)
    log.warning("snapshot restored at start", extra={"file": str(path), "index": index,
                                                     "epoch": epoch, "jobs": len(snap.jobs)})
    return header


class Snapshots:
    """Saving and restoring the store of this (leading) controller."""

    def __init__(self, cluster: Cluster, workdir: Path, *, ca_digest: str = "",
                 name: str = "", on_restored: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self.workdir = workdir
        """Where snapshots are spooled (the controller's data dir): never /tmp, whose size
        has nothing to do with the store's."""
        self.ca_digest = ca_digest
        self.name = name
        self.on_restored = on_restored
        self.clock = clock

    # --- save -------------------------------------------------------------------------------------

    async def save(self) -> AsyncIterator[bytes]:
        """The snapshot file, in pieces: taken whole first (spooled beside the store), then sent."""
        kind, prefix = store_kind(self.cluster.store)
        state = self.cluster.state
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="snapshot-", dir=self.workdir))
        try:
            payload = tmp / "payload"
            index = state.index
            await self.cluster.store.backup(payload)
            digest, size = await _digest(payload)
            header = Header(store=kind, prefix=prefix, cluster_id=state.meta.get(CLUSTER_ID, ""),
                            ca_digest=self.ca_digest, index=index,
                            epoch=int(state.meta.get(EPOCH, "0") or 0),
                            created_ns=int(self.clock() * 1e9), size=size, sha256=digest)
            log.info("snapshot taken", extra={"store": kind, "bytes": size, "index": index})
            yield header.line()
            with payload.open("rb") as f:
                while piece := f.read(CHUNK):
                    yield piece
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- restore ----------------------------------------------------------------------------------

    async def receive(self, pieces: AsyncIterator[bytes]) -> Path:
        """Spool an uploaded snapshot to a file (at most MAX_SNAPSHOT_BYTES)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="restore-", dir=self.workdir)
        path = Path(name)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for piece in pieces:
                    size += len(piece)
                    if size > MAX_SNAPSHOT_BYTES:
                        raise RequestError(f"the snapshot is larger than {MAX_SNAPSHOT_BYTES:,} "
                                           "bytes: not a snapshot of an orch store")
                    f.write(piece)
        except BaseException:
            _remove(name)
            raise
        if size == 0:
            _remove(name)
            raise RequestError("the snapshot is empty: nothing was restored")
        return path

    async def restore(self, path: Path, *, keep_meta: tuple[str, ...] = ()) -> tuple[
            Header, int, int]:
        """Restore the snapshot file at ``path``: (its header, the new index, the new epoch).
        ``keep_meta``: meta keys whose current values survive the restore."""
        header, snap = await asyncio.to_thread(open_file, path, self.workdir)
        if self.ca_digest and header.ca_digest and header.ca_digest != self.ca_digest:
            raise RequestError("the snapshot is of another cluster (its CA differs from this "
                               "one's): nothing was restored")
        cluster, state = self.cluster, self.cluster.state
        async with cluster.lock:
            if cluster.may_write is not None:
                cluster.may_write()
            now_ns = int(self.clock() * 1e9)
            epoch = restored_meta(snap, header, state.meta, now_ns, keep_meta)
            try:
                index = await cluster.store.replace(snap)
                fresh = await cluster.store.load()
            except StoreError:
                log.exception("restoring a snapshot failed")
                raise
            await state.reload(fresh)
            cluster.resend()
            await cluster.commit(Changes(events=[event(
                "cluster", "SnapshotRestored", header.cluster_id or "cluster",
                f"restored a snapshot of the {header.store} store taken at index {header.index}: "
                f"{len(snap.jobs)} jobs, {len(snap.allocs)} allocations, {len(snap.nodes)} "
                f"nodes; store epoch {epoch}", now_ns)]))
        log.warning("snapshot restored", extra={"store": header.store, "index": index,
                                                "epoch": epoch, "jobs": len(snap.jobs),
                                                "allocations": len(snap.allocs)})
        if self.on_restored is not None:
            self.on_restored()
        return header, index, epoch


def _remove(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


async def _digest(path: Path) -> tuple[str, int]:
    def run() -> tuple[str, int]:
        h = hashlib.sha256()
        n = 0
        with path.open("rb") as f:
            while piece := f.read(CHUNK):
                h.update(piece)
                n += len(piece)
        return h.hexdigest(), n
    return await asyncio.to_thread(run)
