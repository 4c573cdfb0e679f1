"""The asyncio shell around the gossip core: UDP datagrams, TCP push-pull, timers.

``GossipNode`` opens one UDP socket and one TCP listener on the same port,
seals and opens the envelope (label, AES-GCM), feeds the core with
``loop.time()`` and carries out its effects. Bad input is counted by reason and
logged at most once a minute per reason and source; it never stops the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orch.errors import ProtocolError
from orch.gossip import codec
from orch.gossip.config import GossipConfig
from orch.gossip.core import Effect, EventKind, MemberEvent, MemberInfo, Membership, Send, Stream
from orch.gossip.crypto import Keyring
from orch.gossip.inbox import Inbox
from orch.gossip.messages import Addr, PushPull, Status, UserEvent
from orch.gossip.snapshot import Snapshot

log = logging.getLogger("gossip")

EventHandler = Callable[[MemberEvent], None]


@dataclass(slots=True)
class WireStats:
    """What crossed the sockets, envelope included."""

    packets_sent: int = 0
    packets_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    streams_sent: int = 0
    streams_received: int = 0
    stream_failures: int = 0
    send_errors: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Refused:
    """A source whose gossip this member refuses (a wrong key, another cluster's label...)."""

    name: str
    """The sender's name, from the envelope or from the member known at that address."""
    addr: str
    reason: str
    packets: int = 0
    last: float = 0.0
    """Wall-clock time of the last refused input."""
    error: str = ""
    logged: float = -1e9


TURN_BUDGET = 0.002
"""Seconds of queued datagrams handled per turn of the event loop (one 64 KiB datagram of
``max_packet_messages`` takes about a millisecond): under a flood the loop still runs
every few milliseconds."""
DECODE_SLICE = 0.001
"""Seconds a push-pull frame is decoded for per turn of the event loop (``max_streams_in``
frames decoding at once hold a turn for 8 ms at most)."""
DECODE_BATCH = 16
"""Member records decoded between two looks at the clock (at most 2,000 bytes of node
state each: well under a millisecond)."""
REJOIN_MAX = 8
"""Members from the snapshot tried at once when rejoining (one answer is enough)."""


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, node: GossipNode) -> None:
        self.node = node

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.node._datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.node.wire.send_errors += 1


class GossipNode:
    """One member of the gossip cluster on real sockets."""

    def __init__(self, cfg: GossipConfig, *, name: str, bind: Addr,
                 advertise: Addr | None = None, keyring: Keyring | None = None,
                 state: Mapping[str, Any] | None = None, rng: random.Random | None = None,
                 snapshot: str | Path | None = None) -> None:
        self.cfg = cfg
        self.name = name
        self.bind = bind
        self._advertise = advertise
        self.keyring = keyring
        self._initial_state = dict(state or {})
        self._rng = rng or random.Random()
        self.wire = WireStats()
        self.core: Membership | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._handlers: list[EventHandler] = []
        self._user_handlers: list[Callable[[UserEvent], None]] = []
        self._queues: list[asyncio.Queue[MemberEvent]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused: dict[tuple[str, str, str], Refused] = {}
        """Input dropped, by (reason, source host, sender's name): who sends what we refuse."""
        self._stopping = False
        self._streams_in = 0
        self._inbox: Inbox[Addr] = Inbox(per_source=cfg.inbox_per_source, total=cfg.inbox_size)
        self._draining = False
        self.snapshot = Snapshot(snapshot, me=name, max_members=cfg.max_members) \
            if snapshot is not None else None
        """The members known before a restart (``snapshot``: its file), rejoined on start."""
        self.rejoin: list[Addr] = []

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on the same port (a free one when the port is 0) and start."""
        loop = self._loop = asyncio.get_running_loop()
        host, port = self.bind
        for _attempt in range(20):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port), family=socket.AF_INET)
            got = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(
                    self._serve_stream, host, got, family=socket.AF_INET, reuse_address=True)
            except OSError:
                udp.close()
                if port:
                    raise
                continue
            self._udp = udp
            port = got
            break
        else:
            raise OSError(f"could not bind UDP and TCP on one free port on {host}")
        self.bind = (host, port)
        adv = self._advertise or self.bind
        if adv[0] in ("0.0.0.0", ""):
            raise ValueError("binding to 0.0.0.0 needs an advertise address")
        if adv[1] == 0:
            adv = (adv[0], port)
        self.core = Membership(self.cfg, name=self.name, addr=adv, rng=self._rng,
                               now=loop.time(), state=self._initial_state)
        self._sync_clock()
        log.info("gossip listening", extra={"member": self.name, "addr": f"{adv[0]}:{adv[1]}",
                                            "encrypted": self.keyring is not None})
        self._apply(self.core.tick(loop.time()))
        if self.snapshot is not None:
            known = self.snapshot.load()
            self.snapshot.open()
            self.on_event(self.snapshot.record)
            self.rejoin = self._rng.sample(sorted(known.values()), min(len(known), REJOIN_MAX))
            if self.rejoin:
                log.info("rejoining the members known before", extra={
                    "member": self.name, "known": len(known), "tried": len(self.rejoin)})
                self.join([])

    def join(self, seeds: Iterable[Addr]) -> None:
        """Start joining through ``seeds``, and the members known before a restart (from the
        snapshot), retried with backoff until one answers."""
        core, now = self._ready()
        self._apply(core.join([*seeds, *self.rejoin], now))

    async def leave(self) -> None:
        """Tell the cluster we are leaving, give the notice time to spread, then stop."""
        if self.core is not None and not self._stopping:
            core, now = self._ready()
            log.info("leaving the cluster", extra={"member": self.name})
            self._apply(core.leave(now))
            await asyncio.sleep(self.cfg.leave_propagate_time)
        await self.stop()

    async def stop(self) -> None:
        """Stop at once, without telling anyone (others will detect it as a failure)."""
        self._stopping = True
        if self.core is not None:
            self.core.stop()
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.snapshot is not None:
            self.snapshot.close()

    # --- what the rest of the agent uses ---------------------------------------------------------

    @property
    def addr(self) -> Addr:
        assert self.core is not None, "start() first"
        return self.core.addr

    def members(self) -> list[MemberInfo]:
        return self.core.snapshot() if self.core is not None else []

    def alive(self) -> list[MemberInfo]:
        return [m for m in self.members() if m.status is Status.ALIVE]

    def set_state(self, changes: Mapping[str, Any]) -> None:
        """Change our node state; None deletes a key. Spread to every member as deltas."""
        core, now = self._ready()
        self._apply(core.set_state(changes, now))

    def fire_event(self, name: str, payload: bytes = b"", *, coalesce: bool = True) -> None:
        """Send a user event to every member, this one included (ValueError when unfit)."""
        core, now = self._ready()
        self._apply(core.fire_event(name, payload, now, coalesce=coalesce))

    def on_user_event(self, handler: Callable[[UserEvent], None]) -> None:
        """Call ``handler`` once for every user event (keep it quick)."""
        self._user_handlers.append(handler)

    def on_event(self, handler: EventHandler) -> None:
        """Call ``handler`` for every membership event (keep it quick)."""
        self._handlers.append(handler)

    def events(self, maxsize: int = 10_000) -> asyncio.Queue[MemberEvent]:
        """A queue that receives every membership event from now on."""
        q: asyncio.Queue[MemberEvent] = asyncio.Queue(maxsize)
        self._queues.append(q)
        return q

    def install_key(self, key: str | bytes) -> None:
        self._keys().install(key)

    def use_key(self, key: str | bytes) -> None:
        self._keys().use(key)

    def remove_key(self, key: str | bytes) -> None:
        self._keys().remove(key)

    def set_keys(self, keys: list[str | bytes]) -> list[str]:
        """Make the keyring exactly ``keys``, the first primary (see ``Keyring.set_keys``)."""
        return self._keys().set_keys(keys)

    def _keys(self) -> Keyring:
        if self.keyring is None:
            raise ValueError("this cluster runs without encryption; start it with a key")
        return self.keyring

    # --- the core's effects ------------------------------------------------------------------------

    def _ready(self) -> tuple[Membership, float]:
        if self.core is None or self._loop is None:
            raise RuntimeError("GossipNode.start() has not been awaited")
        return self.core, self._loop.time()

    def _apply(self, effects: list[Effect]) -> None:
        for e in effects:
            if type(e) is Send:
                self._sendto(e.addr, e.payload)
            elif type(e) is Stream:
                self._spawn(self._push_pull(e))
            elif type(e) is UserEvent:
                self._user_event(e)
            else:
                self._event(e)  # type: ignore[arg-type]
        self._reschedule()

    def _sendto(self, addr: Addr, payload: bytes) -> None:
        if self._udp is None or self._udp.is_closing():
            return
        data = codec.seal(payload, self.cfg.label, self.keyring, self._sender)
        try:
            self._udp.sendto(data, addr)
        except OSError:
            self.wire.send_errors += 1
            return
        self.wire.packets_sent += 1
        self.wire.bytes_sent += len(data)

    def _reschedule(self) -> None:
        if self.core is None or self._loop is None or self._stopping:
            return
        when = self.core.next_deadline()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer) if when != float("inf") else None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        core, now = self._ready()
        if int(now) % 60 == 0:
            self._sync_clock()
        try:
            self._apply(core.tick(now))
        except Exception:  # a bug must not stop the member's clock
            log.exception("gossip timer failed", extra={"node": self.name})
            self._reschedule()

    def _sync_clock(self) -> None:
        core, now = self._ready()
        core.clock_offset = time.time() - now

    def _event(self, e: MemberEvent) -> None:
        level = logging.WARNING if e.kind in (EventKind.DEAD, EventKind.CONFLICT) else logging.INFO
        if e.kind is not EventKind.UPDATE or log.isEnabledFor(logging.DEBUG):
            log.log(logging.DEBUG if e.kind is EventKind.UPDATE else level,
                    f"member {e.kind.value}",
                    extra={"member": e.name, "addr": f"{e.addr[0]}:{e.addr[1]}",
                           "incarnation": e.incarnation, "node": self.name})
        for h in self._handlers:
            try:
                h(e)
            except Exception:
                log.exception("membership event handler failed")
        for q in self._queues:
            if not q.full():
                q.put_nowait(e)

    def _user_event(self, e: UserEvent) -> None:
        log.info("user event", extra={"event": e.name, "ltime": e.ltime, "node": self.name,
                                      "bytes": len(e.payload)})
        for h in self._user_handlers:
            try:
                h(e)
            except Exception:
                log.exception("user event handler failed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- input -------------------------------------------------------------------------------------

    def _datagram(self, data: bytes, src: Addr) -> None:
        """Queue a datagram (per source: ``Inbox``); they are handled in bounded turns."""
        if self.core is None or self._loop is None or self._stopping:
            return
        self.wire.packets_received += 1
        self.wire.bytes_received += len(data)
        inbox = self._inbox
        before = inbox.dropped
        inbox.put(src, data)
        if inbox.dropped != before:
            self.wire.dropped["flood"] = self.wire.dropped.get("flood", 0) + 1
        if not self._draining:
            self._draining = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Handle queued datagrams for ``TURN_BUDGET`` at most, then let the loop run the
        rest (timers, streams, the agent) before the next turn."""
        self._draining = False
        if self._stopping or self._loop is None:
            return
        end = time.perf_counter() + TURN_BUDGET
        inbox = self._inbox
        while (got := inbox.get()) is not None:
            self._handle(got[1], got[0])
            if time.perf_counter() >= end:
                break
        if len(inbox) and not self._stopping:
            self._draining = True
            self._loop.call_soon(self._drain)

    def _handle(self, data: bytes, src: Addr) -> None:
        if self.core is None or self._loop is None:
            return
        try:
            payload = codec.open_envelope(data, self.cfg.label, self.keyring)
            self._apply(self.core.receive_packet(src, payload, self._loop.time()))
        except ProtocolError as e:
            self._dropped(e, src, data)
        except Exception:  # a bug in handling one packet must not stop the member
            self.wire.dropped["internal"] = self.wire.dropped.get("internal", 0) + 1
            log.exception("gossip packet handling failed", extra={"node": self.name})
            self._reschedule()

    def _dropped(self, e: ProtocolError, src: Addr, data: bytes = b"") -> None:
        reason = e.reason
        self.wire.dropped[reason] = self.wire.dropped.get(reason, 0) + 1
        who = codec.envelope_sender(data) or self._name_at(src)
        key = (reason, src[0], who)
        refused = self.refused.get(key)
        if refused is None:
            if len(self.refused) >= 256:  # many sources: forget the oldest, rather than grow
                del self.refused[min(self.refused, key=lambda k: self.refused[k].last)]
            refused = self.refused[key] = Refused(who, f"{src[0]}:{src[1]}", reason)
        refused.packets += 1
        refused.last = time.time()
        refused.error = str(e)
        now = time.monotonic()
        if now - refused.logged >= 60:
            refused.logged = now
            if reason == "decrypt" and who:
                msg = f"member {who!r} sends gossip no installed key opens (a wrong key?)"
            else:
                msg = "dropped gossip input"
            log.warning(msg, extra={"reason": reason, "member": who or "unknown",
                                    "source": f"{src[0]}:{src[1]}", "error": str(e),
                                    "node": self.name})

    @property
    def _sender(self) -> str:
        """Our name for the envelope: only when encrypting, where a receiver with other keys
        needs it to say who is misconfigured (plaintext packets name their sender inside)."""
        return self.name if self.keyring is not None else ""

    def _name_at(self, src: Addr) -> str:
        """The member we know at ``src``'s host and port ("" if none)."""
        return self.core.name_at(src) if self.core is not None else ""

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readexactly(4)
        n = codec.frame_length(head, self.cfg.max_stream_frame)
        return await reader.readexactly(n)

    async def _decode(self, data: bytes) -> PushPull:
        """A frame's push-pull, decoded in slices of ``DECODE_SLICE`` that let the loop run
        others in between (several frames decoding at once each take their slice in a turn
        of the loop: a fixed number of records per slice, 256 large ones, held it for tens
        of milliseconds)."""
        payload = codec.open_envelope(data, self.cfg.label, self.keyring)
        steps = codec.push_pull_steps(payload, self.core.limits if self.core else
                                      codec.Limits.of(self.cfg), DECODE_BATCH)
        clock = time.perf_counter
        while True:
            end = clock() + DECODE_SLICE
            try:
                while clock() < end:
                    next(steps)
            except StopIteration as done:
                msg: PushPull = done.value
                return msg
            await asyncio.sleep(0)

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        src = (str(peer[0]), int(peer[1]))
        data = b""
        if self._streams_in >= self.cfg.max_streams_in:
            self.wire.dropped["busy"] = self.wire.dropped.get("busy", 0) + 1
            writer.close()
            return
        self._streams_in += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # stop() ends it (closing the server leaves it open)
        try:
            async with asyncio.timeout(self.cfg.stream_timeout):
                data = await self._read_frame(reader)
                self.wire.streams_received += 1
                self.wire.bytes_received += len(data) + 4
                msg = await self._decode(data)
                core, now = self._ready()
                reply, effects = core.stream_request(src, msg, now)
                out = codec.frame(codec.seal(codec.encode(reply), self.cfg.label, self.keyring, self._sender))
                writer.write(out)
                self.wire.bytes_sent += len(out)
                await writer.drain()
                self._apply(effects)
        except ProtocolError as e:
            self._dropped(e, src, data)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, RuntimeError):
            self.wire.stream_failures += 1
        except asyncio.CancelledError:
            # stopping: end as a handler that returns (Python 3.11's stream server logs a
            # cancelled handler as an error)
            if not self._stopping:
                raise
        finally:
            if task is not None:
                self._tasks.discard(task)
            self._streams_in -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _push_pull(self, stream: Stream) -> None:
        reply: PushPull | None = None
        self.wire.streams_sent += 1
        writer: asyncio.StreamWriter | None = None
        data = b""
        try:
            async with asyncio.timeout(self.cfg.stream_timeout):
                reader, writer = await asyncio.open_connection(*stream.addr)
                out = codec.frame(codec.seal(codec.encode(stream.message), self.cfg.label, self.keyring,
                                             self._sender))
                writer.write(out)
                self.wire.bytes_sent += len(out)
                await writer.drain()
                data = await self._read_frame(reader)
                self.wire.bytes_received += len(data) + 4
                reply = await self._decode(data)
        except ProtocolError as e:
            self._dropped(e, stream.addr, data)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            self.wire.stream_failures += 1
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        if self._stopping or self.core is None or self._loop is None:
            return
        if reply is None and stream.purpose == "join":
            log.info("join: no answer from seed", extra={
                "seed": f"{stream.addr[0]}:{stream.addr[1]}", "node": self.name})
        self._apply(self.core.stream_done(stream, reply, self._loop.time()))
