"""Gossip messages. On the wire each is a msgpack array ``[code, field, ...]``.

Decoders ignore fields past the ones they know, so a newer peer may append
fields without breaking an older one.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple

from orch.net import Addr as Addr  # the gossip modules name addresses from here


class Code(IntEnum):
    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    SUSPECT = 5
    ALIVE = 6
    DEAD = 7
    STATE = 8
    PUSH_PULL = 9
    USER_EVENT = 10


class Status(IntEnum):
    """A member's status as one member sees it."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    def __str__(self) -> str:
        return self.name.lower()


class Ping(NamedTuple):
    seq: int
    target: str
    """Name of the member the ping is for (a ping reaching someone else is ignored)."""
    sender: str


class IndirectPing(NamedTuple):
    seq: int
    target: str
    host: str
    port: int
    nack: bool
    """Send a nack when the target does not answer in time (Lifeguard)."""
    sender: str


class Ack(NamedTuple):
    seq: int
    payload: bytes | None = None


class Nack(NamedTuple):
    seq: int


class Suspect(NamedTuple):
    incarnation: int
    name: str
    sender: str
    age_ms: int = 0
    """How long the sender's suspicion has already lasted (shared suspicion clock)."""


class Alive(NamedTuple):
    incarnation: int
    name: str
    host: str
    port: int
    state_version: int = 0
    """Version of the member's node state, so that a receiver that lags can ask for it."""


class Dead(NamedTuple):
    incarnation: int
    name: str
    sender: str
    """Equal to ``name`` when the member left on purpose."""


class StateDelta(NamedTuple):
    """Changes to a member's node state: ``changes`` maps keys to values, None deletes.

    Applies on top of ``prev_version``; ``prev_version == -1`` means the whole state.
    """

    name: str
    prev_version: int
    version: int
    changes: dict[str, Any]


class MemberRecord(NamedTuple):
    """One member in a push-pull exchange."""

    name: str
    host: str
    port: int
    incarnation: int
    status: int
    state_version: int
    state: dict[str, Any] | None
    """None: left out (the receiver asks the owner when it lags behind ``state_version``)."""


class PushPull(NamedTuple):
    """A state exchange over TCP: sent by the initiator and answered in kind.

    Full (``digest`` empty): every member with its node state. Digest-first (the periodic
    sync): the request holds the sender's own record and a digest of its whole view; the
    answer is empty when the digests match (the usual case in a quiet cluster), else every
    member without node states (each owner sends its own).
    """

    join: bool
    sender: str
    members: list[MemberRecord]
    digest: bytes = b""
    event_clock: int = 0
    """The sender's user-event Lamport clock (a joining member ignores events before it)."""


class UserEvent(NamedTuple):
    """An application event (``user_events``): also the effect that delivers it."""

    ltime: int
    name: str
    payload: bytes
    coalesce: bool = True
    """Consumers may deliver only the newest event of this name within a burst."""
    origin: str = ""
    """The member that fired it, as it says (gossip authenticates it only by the cluster's
    key); "" from members that do not say."""


Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | StateDelta | UserEvent
