"""The web UI's sessions: a token typed once, kept on the server, behind an opaque cookie.

The browser holds only a random session id in an ``HttpOnly; SameSite=Strict`` cookie
(``Secure`` over HTTPS): the token never reaches a URL, a log line or a script. Each
session has its own CSRF token, which every form that acts carries and ``csrf_ok``
checks. Sessions end when idle for ``IDLE``, at ``LIFETIME`` in any case, or at logout;
at most ``MAX_SESSIONS`` are kept (the least recently used go first). Pure: the caller
passes the time and the random source.
"""

from __future__ import annotations

import base64
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "orch_session"
MAX_SESSIONS = 10_000
"""Sessions kept at once: logins past it push out the least recently used."""
IDLE = 8 * 3600.0
"""Seconds a session lasts unused (a working day)."""
LIFETIME = 24 * 3600.0
"""Seconds a session lasts at most, used or not: a token revoked in the store is refused at
once anyway, since every call passes the gate with it."""
MAX_FLASH = 5
"""Messages a session keeps for the next page it shows."""


@dataclass(slots=True)
class Session:
    id: str
    secret: str
    """The access token ("" on a cluster without tokens)."""
    name: str
    """The token's name, shown in the page's corner."""
    csrf: str
    created: float
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)
    """(kind, message) to show on the next page: ``ok`` or ``error``."""

    def say(self, kind: str, message: str) -> None:
        self.flash = [*self.flash, (kind, message)][-MAX_FLASH:]

    def take_flash(self) -> list[tuple[str, str]]:
        out, self.flash = self.flash, []
        return out


def _random_id(randbytes: Callable[[int], bytes]) -> str:
    return base64.urlsafe_b64encode(randbytes(32)).rstrip(b"=").decode()


class Sessions:
    def __init__(self, randbytes: Callable[[int], bytes], *, max_sessions: int = MAX_SESSIONS,
                 idle: float = IDLE, lifetime: float = LIFETIME) -> None:
        self._rand = randbytes
        self.max_sessions, self.idle, self.lifetime = max_sessions, idle, lifetime
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, secret: str, name: str, now: float) -> Session:
        s = Session(id=_random_id(self._rand), secret=secret, name=name,
                    csrf=_random_id(self._rand), created=now, seen=now)
        self._by_id[s.id] = s
        while len(self._by_id) > self.max_sessions:
            self._by_id.popitem(last=False)
        return s

    def get(self, session_id: str, now: float) -> Session | None:
        """The live session with this id (None: unknown, idle too long, or too old)."""
        s = self._by_id.get(session_id)
        if s is None:
            return None
        if now - s.seen > self.idle or now - s.created > self.lifetime:
            del self._by_id[session_id]
            return None
        s.seen = now
        self._by_id.move_to_end(session_id)
        return s

    def drop(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def drop_secret(self, secret: str) -> None:
        """End every session of a token (it was refused: revoked or unknown)."""
        for sid in [k for k, s in self._by_id.items() if s.secret == secret]:
            del self._by_id[sid]


def csrf_ok(session: Session, sent: str) -> bool:
    """Whether a form carried this session's CSRF token (compared in constant time)."""
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), sent.encode())
