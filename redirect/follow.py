"""Client-side rules for following a redirect (RFC 9132 §4.6), as pure logic.

The client role feeds it every 5.03 + ``redirected-signal`` and every server it contacts;
it answers where to go, when to go back to the provisioned servers, and when a redirect
must be ignored as a loop.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from gateway.dots.model import RedirectedSignal
from redirect.policy import UNTIL_FURTHER_NOTICE

#: RFC 9132 §4.6: a redirect to a server contacted in the last 5 minutes is a loop.
LOOP_WINDOW = 300.0
_HISTORY = 64


class Verdict(enum.Enum):
    FOLLOW = "follow"
    IGNORE_LOOP = "ignore-loop"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    server: str  # alt-server (FQDN) to contact, or the one refused
    addresses: tuple[str, ...] = ()
    until: float | None = None  # None: until further notice


class RedirectFollower:
    def __init__(self) -> None:
        self._contacted: OrderedDict[str, float] = OrderedDict()
        self.current: Decision | None = None

    def contacted(self, server: str, now: float) -> None:
        """Record a server we talked to (name or address, as the caller identifies it)."""
        self._contacted.pop(server, None)
        self._contacted[server] = now
        while len(self._contacted) > _HISTORY:
            self._contacted.popitem(last=False)

    def on_redirect(self, redirect: RedirectedSignal, max_age: int | None,
                    now: float) -> Decision:
        """What to do with a redirect. The request that got it has failed either way; a
        FOLLOW means resend it to the alternate server (RFC 9132 §4.6)."""
        names = (redirect.alt_server, *(str(a) for a in redirect.alt_server_record))
        for name in names:
            seen = self._contacted.get(name)
            if seen is not None and now - seen < LOOP_WINDOW:
                return Decision(Verdict.IGNORE_LOOP, redirect.alt_server)
        ttl = 60 if max_age is None else max_age  # CoAP's default Max-Age
        until = None if ttl >= UNTIL_FURTHER_NOTICE else now + ttl
        decision = Decision(Verdict.FOLLOW, redirect.alt_server,
                            tuple(str(a) for a in redirect.alt_server_record), until)
        self.current = decision
        return decision

    def should_return(self, now: float, *, under_attack: bool) -> bool:
        """Back to the provisioned servers once the TTL expires, except during an attack."""
        if self.current is None or self.current.until is None or under_attack:
            return False
        if now >= self.current.until:
            self.current = None
            return True
        return False
