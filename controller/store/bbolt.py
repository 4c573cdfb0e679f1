"""Reading an etcd snapshot without etcd: its bbolt file, and the keys it held (pure).

``etcdctl snapshot save`` (and etcd's Maintenance.Snapshot, which the controller calls) give
etcd's database as it was at one revision: a bbolt file (go.etcd.io/bbolt), followed by
the SHA-256 of the file's bytes. The controller restores from such a file into a running
etcd (``orchctl operator snapshot restore``), so it reads it here, with no etcd binary:

- ``check_hash`` verifies the SHA-256 etcd appended (a torn or edited file is refused);
- ``Bolt`` walks the B+tree pages of a bucket (meta pages with their FNV-1a checksums,
  branch and leaf pages, overflow pages, inline buckets);
- ``latest_keys`` replays etcd's ``key`` bucket (every revision of every key, ordered by
  revision, a ``t`` marking a deletion) into the keys live at the snapshot's revision.

The layout read here is bbolt's, stable since its first release: a page header (id u64,
flags u16, count u16, overflow u32), then ``count`` elements (branch: pos u32, ksize u32,
pgid u64; leaf: flags u32, pos u32, ksize u32, vsize u32), each ``pos`` bytes from its
element to its key. Every number is little-endian; etcd's revisions are big-endian.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from aetcd import rpc

from orch.errors import StoreError

MAGIC = 0xED0CDAED
VERSION = 2
BRANCH, LEAF, META, FREELIST = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF = 0x01
PAGE_HEADER = 16
ELEMENT = 16
HASH = 32
MAX_DEPTH = 64
"""A B+tree deeper than this is a corrupt file, not a big one."""
_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def check_hash(data: bytes) -> bytes:
    """The database part of an etcd snapshot whose appended SHA-256 matches; StoreError if
    the file has no hash (not from etcd's snapshot) or another one (torn, or edited)."""
    if len(data) % 512 != HASH:
        raise StoreError("not an etcd snapshot with its integrity hash (its size is not a whole "
                         "number of pages plus 32 bytes): save it with `orchctl operator "
                         "snapshot save` or etcd's snapshot save")
    db, want = data[:-HASH], data[-HASH:]
    if hashlib.sha256(db).digest() != want:
        raise StoreError("the etcd snapshot's SHA-256 does not match its contents: the file is "
                         "damaged (torn or edited); use another copy")
    return db


@dataclass(frozen=True, slots=True)
class Meta:
    page_size: int
    root: int
    """The root bucket's root page."""
    txid: int


class Bolt:
    """A bbolt database in memory, read-only."""

    def __init__(self, db: bytes) -> None:
        self.db = db
        self.meta = self._meta()

    def _meta(self) -> Meta:
        found: list[Meta] = []
        errors: list[str] = []
        # page 0's header holds the page size; page 1 sits one page further
        size = struct.unpack_from("<I", self.db, PAGE_HEADER + 8)[0] if len(self.db) >= 64 else 0
        for page in (0, 1):
            off = page * size
            try:
                magic, version, page_size, _flags, root, _seq, _free, _pgid, txid, checksum = \
                    struct.unpack_from("<IIIIQQQQQQ", self.db, off + PAGE_HEADER)
            except struct.error:
                errors.append(f"meta page {page} is cut off")
                continue
            if magic != MAGIC or version != VERSION:
                errors.append(f"meta page {page} is not bbolt's (magic {magic:#x}, version "
                              f"{version})")
                continue
            if fnv1a64(self.db[off + PAGE_HEADER:off + PAGE_HEADER + 56]) != checksum:
                errors.append(f"meta page {page} fails its checksum")
                continue
            found.append(Meta(page_size, root, txid))
        if not found:
            raise StoreError("not a bbolt database (an etcd snapshot's): " + "; ".join(errors))
        return max(found, key=lambda m: m.txid)

    def _page(self, pgid: int) -> tuple[int, int, int]:
        """(offset, flags, count) of a page."""
        off = pgid * self.meta.page_size
        if pgid < 2 or off + PAGE_HEADER > len(self.db):
            raise StoreError(f"bbolt page {pgid} is outside the file: the snapshot is damaged")
        _, flags, count, _ = struct.unpack_from("<QHHI", self.db, off)
        return off, flags, count

    def _items(self, off: int, flags: int, count: int, depth: int) -> Iterator[tuple[int, bytes,
                                                                                      bytes]]:
        """(leaf flags, key, value) of the page at ``off`` and below it, in key order."""
        if depth > MAX_DEPTH:
            raise StoreError("the bbolt tree is deeper than any real one: the snapshot is damaged")
        db = self.db
        for i in range(count):
            el = off + PAGE_HEADER + i * ELEMENT
            if flags & BRANCH:
                _pos, _ksize, child = struct.unpack_from("<IIQ", db, el)
                yield from self._items(*self._page(child), depth + 1)
            elif flags & LEAF:
                lflags, pos, ksize, vsize = struct.unpack_from("<IIII", db, el)
                start = el + pos
                if start + ksize + vsize > len(db):
                    raise StoreError("a bbolt leaf points outside the file: the snapshot is "
                                     "damaged")
                yield lflags, db[start:start + ksize], db[start + ksize:start + ksize + vsize]
            else:
                raise StoreError(f"bbolt page at offset {off} is neither a branch nor a leaf "
                                 f"(flags {flags:#x}): the snapshot is damaged")

    def buckets(self) -> list[bytes]:
        """The names of the top-level buckets."""
        return [k for f, k, _ in self._items(*self._page(self.meta.root), 0) if f & BUCKET_LEAF]

    def bucket(self, name: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of a top-level bucket, in key order."""
        for f, k, v in self._items(*self._page(self.meta.root), 0):
            if k == name and f & BUCKET_LEAF:
                root = struct.unpack_from("<Q", v, 0)[0]
                if root == 0:  # an inline bucket: its one page follows the bucket header
                    inline = Bolt.__new__(Bolt)
                    inline.db, inline.meta = v[16:], self.meta
                    _, flags, count, _ = struct.unpack_from("<QHHI", inline.db, 0)
                    items = inline._items(0, flags, count, 0)
                else:
                    items = self._items(*self._page(root), 0)
                for lf, key, value in items:
                    if not lf & BUCKET_LEAF:
                        yield key, value
                return
        raise StoreError(f"the etcd snapshot has no bucket {name.decode()!r}: not etcd's database")


def latest_keys(db: bytes, prefix: bytes) -> tuple[int, dict[bytes, bytes]]:
    """(the snapshot's revision, key -> value) of the keys under ``prefix`` live at that
    revision, from an etcd database (``check_hash``'s result)."""
    revision = 0
    live: dict[bytes, bytes] = {}
    for rev, value in Bolt(db).bucket(b"key"):
        if len(rev) < 17 or rev[8:9] != b"_":
            raise StoreError("an etcd snapshot key is not a revision: not etcd's database")
        main = struct.unpack_from(">Q", rev, 0)[0]
        revision = max(revision, main)
        kv = rpc.KeyValue.FromString(value)
        if not kv.key.startswith(prefix):
            continue
        if rev[17:18] == b"t":  # a deletion ("tombstone")
            live.pop(kv.key, None)
        else:
            live[kv.key] = kv.value
    return revision, live
