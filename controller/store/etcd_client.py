"""A small typed etcd v3 client for the store and the election: every endpoint, bounded calls.

aetcd ships etcd's v3 API as generated protobuf messages and gRPC stubs
(``aetcd.rpc``) and an ``aetcd.Client`` on top. That client dials one
``host:port``, retries nothing, and cannot page a read at a fixed revision nor
set a deadline per call, which a controller needs; so this module keeps aetcd's
API bindings and puts a thin client of its own around them:

- **Every endpoint.** One gRPC channel per endpoint. Calls go to the endpoint that
  answered last and move on to the next when it cannot be reached, so a dead
  etcd member costs one refused connection, not an outage. Channels reconnect
  with a short backoff (0.1 to 1 s), so an etcd that comes back is used at once.
- **Bounded time.** Every call has a deadline (``timeout``, retries included); one
  endpoint gets at most ``try_timeout`` of it, so a hung member (paused, cut
  off) cannot eat the whole budget. When every endpoint refuses connections
  (nothing listens) a call gives up after ``refused_grace`` (1 s), time enough for
  a member that restarts; a member that answers "no leader" is asked again until
  the deadline, as its cluster elects one.
- **A leader is required.** Calls carry etcd's ``hasleader`` metadata: a member
  cut off from its quorum refuses at once ("no leader") instead of hanging.
- **Outcomes a writer can act on.** A failed call raises ``EtcdUnavailable`` (no
  endpoint took it: nothing was applied), ``EtcdRejected`` (etcd answered with an
  error: nothing was applied) or ``EtcdInDoubt`` (the deadline passed or the
  connection broke after the request left: it may have been applied). Reads are
  retried on every endpoint until the deadline; writes only while nothing was sent.

Results are plain dataclasses (``KeyValue``, ``RangeResult``, ``TxnResult``), and
transactions are built from ``Compare``, ``Put``, ``Delete`` and ``Get``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from aetcd import rpc

from orch.errors import ConfigError, StoreError
from orch.tls import TlsConfig, open_channel

Outcome = Literal["unsent", "rejected", "indoubt"]

METADATA = (("hasleader", "true"),)
"""etcd's require-leader metadata (clientv3's WithRequireLeader)."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # etcd's --grpc-keepalive-min-time defaults to 5 s; ping less often than that.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
)
"""gRPC's own retries stay on: it retries transparently only what never left the client."""


# --- errors --------------------------------------------------------------------------------


class EtcdError(StoreError):
    """An etcd call failed; ``endpoint`` is the last one tried."""

    outcome: Outcome = "indoubt"

    def __init__(self, message: str, *, endpoint: str = "", code: str = "", details: str = "") -> None:
        self.endpoint = endpoint
        self.code = code
        self.details = details
        super().__init__(message)


class EtcdUnavailable(EtcdError):
    """No endpoint took the request before the deadline: nothing was applied."""

    outcome: Outcome = "unsent"


class EtcdRejected(EtcdError):
    """etcd answered with an error (too large, too many operations, compacted...): nothing
    was applied."""

    outcome: Outcome = "rejected"


class EtcdInDoubt(EtcdError):
    """The request left but no answer came (deadline, broken connection): it may have been
    applied."""

    outcome: Outcome = "indoubt"


_UNSENT_DETAILS = ("failed to connect to all addresses", "etcdserver: no leader",
                   "etcdserver: too many requests", "etcdserver: not capable")


def classify(code: grpc.StatusCode, details: str) -> Outcome:
    """Whether a failed etcd call was surely not applied ("unsent": try elsewhere; "rejected":
    do not retry) or may have been ("indoubt")."""
    if any(d in details for d in _UNSENT_DETAILS):
        return "unsent"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                grpc.StatusCode.ABORTED, grpc.StatusCode.DATA_LOSS):
        return "indoubt"
    return "rejected"


TRANSIENT_FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE

_ERRORS: dict[Outcome, type[EtcdError]] = {
    "unsent": EtcdUnavailable, "rejected": EtcdRejected, "indoubt": EtcdInDoubt}


def parse_endpoint(endpoint: str) -> str:
    """``host:port`` from ``host:port`` or ``http://host:port``; ConfigError otherwise."""
    target = endpoint.strip()
    if target.startswith("http://"):
        target = target[len("http://"):]
    elif "://" in target:
        raise ConfigError(f"etcd endpoint {endpoint!r}: only http:// endpoints are supported "
                          "(no TLS yet)", where="etcd.endpoints")
    target = target.rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"etcd endpoint {endpoint!r} is not host:port (for example "
                          "127.0.0.1:2379)", where="etcd.endpoints")
    return target


# --- requests and results --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    """The revision that created the key (unique to this incarnation of it)."""
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_pb(cls, kv: Any) -> KeyValue:
        return cls(bytes(kv.key), bytes(kv.value), int(kv.create_revision),
                   int(kv.mod_revision), int(kv.version), int(kv.lease))


@dataclass(frozen=True, slots=True)
class RangeResult:
    revision: int
    """The store's revision when the read was served."""
    kvs: list[KeyValue]
    more: bool
    count: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    """The store's revision after the transaction (its own revision if it wrote)."""
    ranges: list[list[KeyValue]]
    """What each ``Get`` of the branch that ran found, in order."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class Compare:
    """``target(key) result value``: e.g. ``Compare(k, "create", "==", 0)`` (k is absent)."""

    key: bytes
    target: Literal["create", "mod", "version", "value"]
    result: Literal["==", "!=", "<", ">"]
    value: int | bytes


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    range_end: bytes = b""
    """Empty: the one key; else every key in [key, range_end)."""


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes
    range_end: bytes = b""


Op = Put | Delete | Get

_TARGETS = {"create": rpc.Compare.CREATE, "mod": rpc.Compare.MOD,
            "version": rpc.Compare.VERSION, "value": rpc.Compare.VALUE}
_RESULTS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS,
            ">": rpc.Compare.GREATER}


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _compare_pb(c: Compare) -> Any:
    msg = rpc.Compare(key=c.key, target=_TARGETS[c.target], result=_RESULTS[c.result])
    if c.target == "create":
        msg.create_revision = int(c.value)
    elif c.target == "mod":
        msg.mod_revision = int(c.value)
    elif c.target == "version":
        msg.version = int(c.value)
    else:
        msg.value = bytes(c.value) if isinstance(c.value, bytes) else str(c.value).encode()
    return msg


def _op_pb(op: Op) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key, value=op.value, lease=op.lease))
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key,
                                                                         range_end=op.range_end))
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=op.key, range_end=op.range_end))


@dataclass(slots=True)
class Txn:
    """One etcd transaction: if every compare holds, ``success`` runs, else ``failure``."""

    compare: list[Compare] = field(default_factory=list)
    success: list[Op] = field(default_factory=list)
    failure: list[Op] = field(default_factory=list)

    @property
    def ops(self) -> int:
        """What etcd's ``--max-txn-ops`` is checked against: the longest of the three lists."""
        return max(len(self.compare), len(self.success), len(self.failure))

    def message(self) -> Any:
        return rpc.TxnRequest(compare=[_compare_pb(c) for c in self.compare],
                              success=[_op_pb(o) for o in self.success],
                              failure=[_op_pb(o) for o in self.failure])


def _txn_result(resp: Any) -> TxnResult:
    ranges = [[KeyValue.from_pb(kv) for kv in r.response_range.kvs] for r in resp.responses
              if r.WhichOneof("response") == "response_range"]
    return TxnResult(bool(resp.succeeded), int(resp.header.revision), ranges)


# --- the client -------------------------------------------------------------------------------


class EtcdClient:
    """Calls to an etcd cluster through every endpoint, each bounded in time. ::

        client = EtcdClient(["127.0.0.1:2379", "127.0.0.2:2379"], timeout=5.0)
        await client.open()
        got = await client.range(b"/orch/state")
        done = await client.txn(Txn([Compare(k, "create", "==", 0)], [Put(k, b"v")]))
        await client.close()
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0,
                 try_timeout: float = 2.0, refused_grace: float = 1.0,
                 tls: TlsConfig | None = None) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ConfigError("no etcd endpoint given", where="etcd.endpoints")
        if timeout <= 0 or try_timeout <= 0:
            raise ConfigError("etcd timeouts must be positive", where="etcd.timeout")
        self.endpoints = tuple(parse_endpoint(e) for e in endpoints)
        self.timeout = timeout
        self.try_timeout = try_timeout
        self.refused_grace = refused_grace
        self.tls = tls if tls is not None and tls.enabled else None
        """mTLS towards etcd (its CA, this client's certificate and key); None: plain."""
        if self.tls is not None:
            self.tls.load()  # a missing file is a configuration error now, not at a call
        self._channels: list[grpc.aio.Channel] = []
        self._current = 0

    @property
    def is_open(self) -> bool:
        return bool(self._channels)

    @property
    def where(self) -> str:
        return ",".join(self.endpoints)

    async def open(self) -> None:
        """Make the channels (connections are made on the first call)."""
        if not self._channels:
            self._channels = [open_channel(e, self.tls, CHANNEL_OPTIONS) for e in self.endpoints]

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        for ch in channels:
            await ch.close(grace=None)

    # --- unary calls ---------------------------------------------------------------------------

    async def _call(self, what: str, stub: Callable[[grpc.aio.Channel], Any], request: Any, *,
                    write: bool, within: float | None) -> Any:
        """``stub(channel)(request)`` on the endpoints in turn until one answers or the deadline.

        ``stub`` maps a channel to the bound RPC. A read is retried after any failure; a
        write only after failures that left nothing applied ("unsent").
        """
        if not self._channels:
            raise EtcdUnavailable(f"etcd at {self.where}: the client is closed")
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + (self.timeout if within is None else within)
        last: EtcdError = EtcdUnavailable(f"etcd at {self.where}: no answer in time to {what}")
        n = len(self._channels)
        for round_ in itertools.count():
            answered = False  # by any endpoint in this round (else all refused to connect)
            for _ in range(n):  # one round: every endpoint once, from the one that answered last
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise last
                i = self._current % n
                channel, endpoint = self._channels[i], self.endpoints[i]
                if channel.get_state(try_to_connect=True) == TRANSIENT_FAILURE:
                    self._current = i + 1  # refused a moment ago: it reconnects in the background
                    last = EtcdUnavailable(f"etcd at {endpoint} cannot be reached to {what}",
                                           endpoint=endpoint)
                    continue
                try:
                    return await stub(channel)(request, timeout=min(remaining, self.try_timeout),
                                               metadata=METADATA)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # this task is being cancelled: not a failure of etcd
                    # The call was cancelled under us (its channel closed or reset).
                    self._current = i + 1
                    cut: EtcdError = EtcdInDoubt(f"etcd at {endpoint}: {what} was cut off",
                                                 endpoint=endpoint)
                    if write:
                        raise cut from None
                    last = cut
                    answered = True
                except grpc.aio.AioRpcError as e:
                    details = e.details() or ""
                    outcome = classify(e.code(), details)
                    if outcome == "indoubt" and not write:
                        outcome = "unsent"  # a read is simply asked again
                    err = _ERRORS[outcome](
                        f"etcd at {endpoint}: {what} failed: {details or e.code().name}",
                        endpoint=endpoint, code=e.code().name, details=details)
                    if outcome != "rejected":
                        self._current = i + 1  # the next attempt (or call) tries another member
                    if outcome != "unsent":
                        raise err from e
                    last = err
                    answered = answered or "failed to connect" not in details
            if not answered and loop.time() - start >= self.refused_grace:
                raise last  # nothing listens anywhere: say so now rather than at the deadline
            pause = min(0.05 * 2 ** round_, 0.5, deadline - loop.time())
            if pause > 0:
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def range(self, key: bytes, range_end: bytes = b"", *, limit: int = 0, revision: int = 0,
                    keys_only: bool = False, within: float | None = None) -> RangeResult:
        """Keys in [key, range_end) (the one key when empty), ascending, at ``revision``
        (0: now), at most ``limit`` (0: all); linearizable."""
        request = rpc.RangeRequest(key=key, range_end=range_end, limit=limit, revision=revision,
                                   keys_only=keys_only)
        resp = await self._call("read", lambda ch: rpc.KVStub(ch).Range, request, write=False,
                                within=within)
        return RangeResult(int(resp.header.revision), [KeyValue.from_pb(kv) for kv in resp.kvs],
                           bool(resp.more), int(resp.count))

    async def count(self, key: bytes, range_end: bytes, *, within: float | None = None) -> int:
        """How many keys [key, range_end) holds (etcd counts; nothing is sent back)."""
        request = rpc.RangeRequest(key=key, range_end=range_end, count_only=True)
        resp = await self._call("count", lambda ch: rpc.KVStub(ch).Range, request, write=False,
                                within=within)
        return int(resp.count)

    async def db_size(self, *, within: float | None = None) -> int:
        """Bytes the answering member's database uses (what compaction and defragmentation
        leave: etcd's dbSizeInUse)."""
        resp = await self._call("read the status", lambda ch: rpc.MaintenanceStub(ch).Status,
                                rpc.StatusRequest(), write=False, within=within)
        return int(resp.dbSizeInUse or resp.dbSize)

    async def snapshot(self, *, within: float | None = None) -> AsyncIterator[bytes]:
        """etcd's own snapshot of its whole database (a consistent bbolt file with its SHA-256
        at the end, as ``etcdutl snapshot save`` writes it), in pieces as they come."""
        if not self._channels:
            raise EtcdUnavailable(f"etcd at {self.where}: the client is closed")
        i = self._current % len(self._channels)
        endpoint = self.endpoints[i]
        call = rpc.MaintenanceStub(self._channels[i]).Snapshot(
            rpc.SnapshotRequest(), timeout=self.timeout if within is None else within,
            metadata=METADATA)
        try:
            async for resp in call:
                if resp.blob:
                    yield bytes(resp.blob)
        except grpc.aio.AioRpcError as e:
            raise EtcdUnavailable(f"etcd at {endpoint}: the snapshot failed: "
                                  f"{e.details() or e.code().name}", endpoint=endpoint,
                                  code=e.code().name, details=e.details() or "") from e

    async def get(self, key: bytes, *, within: float | None = None) -> KeyValue | None:
        got = await self.range(key, within=within)
        return got.kvs[0] if got.kvs else None

    async def range_all(self, key: bytes, range_end: bytes, *, revision: int, page: int = 1000,
                        keys_only: bool = False, within: float | None = None) -> list[KeyValue]:
        """Every key in [key, range_end) at ``revision``, read ``page`` keys at a time."""
        out: list[KeyValue] = []
        start = key
        while True:
            got = await self.range(start, range_end, limit=page, revision=revision,
                                   keys_only=keys_only, within=within)
            out += got.kvs
            if not got.more or not got.kvs:
                return out
            start = got.kvs[-1].key + b"\0"

    async def txn(self, txn: Txn | Any, *, within: float | None = None) -> TxnResult:
        """Run a transaction (a ``Txn``, or its ready ``message()``)."""
        request = txn.message() if isinstance(txn, Txn) else txn
        readonly = all(op.WhichOneof("request") == "request_range"
                       for op in (*request.success, *request.failure))
        resp = await self._call("run a transaction", lambda ch: rpc.KVStub(ch).Txn, request,
                                write=not readonly, within=within)
        return _txn_result(resp)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0,
                  within: float | None = None) -> int:
        """Put one key; the revision it was written at."""
        resp = await self._call("put", lambda ch: rpc.KVStub(ch).Put,
                                rpc.PutRequest(key=key, value=value, lease=lease), write=True,
                                within=within)
        return int(resp.header.revision)

    async def delete(self, key: bytes, range_end: bytes = b"", *,
                     within: float | None = None) -> int:
        """Delete ``key`` (or [key, range_end)); how many keys were deleted."""
        resp = await self._call("delete", lambda ch: rpc.KVStub(ch).DeleteRange,
                                rpc.DeleteRangeRequest(key=key, range_end=range_end), write=True,
                                within=within)
        return int(resp.deleted)

    async def lease_grant(self, ttl: int, *, within: float | None = None) -> tuple[int, int]:
        """A new lease: (its id, the TTL etcd granted)."""
        resp = await self._call("grant a lease", lambda ch: rpc.LeaseStub(ch).LeaseGrant,
                                rpc.LeaseGrantRequest(TTL=ttl), write=True, within=within)
        if resp.error:
            raise EtcdRejected(f"etcd at {self.where}: granting a lease failed: {resp.error}")
        return int(resp.ID), int(resp.TTL)

    async def lease_revoke(self, lease: int, *, within: float | None = None) -> None:
        """Revoke ``lease`` (its keys are deleted); a lease that is already gone is fine."""
        try:
            await self._call("revoke a lease", lambda ch: rpc.LeaseStub(ch).LeaseRevoke,
                             rpc.LeaseRevokeRequest(ID=lease), write=True, within=within)
        except EtcdRejected as e:
            if "lease not found" not in e.details:
                raise

    async def lease_keepalive(self, lease: int, *, within: float | None = None) -> int:
        """Refresh ``lease`` once; the TTL it now has (0 or less: it has expired)."""
        def stub(ch: grpc.aio.Channel) -> Callable[..., Any]:
            async def once(request: Any, *, timeout: float, metadata: Any) -> Any:  # noqa: ASYNC109
                call = rpc.LeaseStub(ch).LeaseKeepAlive(iter([request]), timeout=timeout,
                                                        metadata=metadata)
                try:
                    async for reply in call:
                        return reply
                finally:
                    call.cancel()
                raise EtcdInDoubt("the keepalive stream ended without an answer")
            return once

        resp = await self._call("keep a lease alive", stub, rpc.LeaseKeepAliveRequest(ID=lease),
                                write=False, within=within)
        return int(resp.TTL)

    async def compact(self, revision: int, *, within: float | None = None) -> None:
        """Drop the history before ``revision`` (a revision already compacted is fine)."""
        try:
            await self._call("compact", lambda ch: rpc.KVStub(ch).Compact,
                             rpc.CompactionRequest(revision=revision), write=True, within=within)
        except EtcdRejected as e:
            if "compacted" not in e.details:
                raise

    # --- watching ------------------------------------------------------------------------------

    async def watch(self, key: bytes, *, start_revision: int, within: float) -> list[WatchEvent]:
        """The first changes of ``key`` at or after ``start_revision``; [] when none came within
        ``within`` seconds (or the watch broke: the caller reads the key again either way)."""
        if not self._channels:
            raise EtcdUnavailable(f"etcd at {self.where}: the client is closed")
        i = self._current % len(self._channels)
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=key, start_revision=start_revision))
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield create
            await stop.wait()

        call = rpc.WatchStub(self._channels[i]).Watch(requests(), metadata=METADATA)
        try:
            async with asyncio.timeout(within):
                async for resp in call:
                    if resp.compact_revision:
                        raise EtcdRejected(f"etcd at {self.endpoints[i]}: the history before "
                                           f"revision {resp.compact_revision} is compacted",
                                           details="compacted")
                    if resp.canceled:
                        break
                    if resp.events:
                        return [WatchEvent("delete" if ev.type == rpc.Event.DELETE else "put",
                                           KeyValue.from_pb(ev.kv)) for ev in resp.events]
        except TimeoutError:
            return []
        except grpc.aio.AioRpcError:
            self._current = i + 1
            return []
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return []  # the call was cancelled under us (the channel closed), not this task
        finally:
            stop.set()
            call.cancel()
        self._current = i + 1
        return []
