"""Client-side rules for following a redirect (RFC 9132 §4.6), as pure logic.

The client role feeds it every 5.03 + ``redirected-signal`` and every server it contacts;
it answers where to go, when to go back to the provisioned servers, and when a redirect
must be ignored as a loop. Connecting, resending and re-registering are the role's
(``gateway.client.channel``); nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from gateway.dots.model import RedirectedSignal
from redirect.policy import UNTIL_FURTHER_NOTICE

#: RFC 9132 §4.6: a redirect to a server contacted in the last 5 minutes is a loop.
LOOP_WINDOW = 300.0
#: Redirects followed for one request before its 5.03 goes back to the caller. The loop
#: rule already stops cycles; this also stops a chain of ever new servers.
MAX_REDIRECTS = 3
#: CoAP's default Max-Age (RFC 7252 §5.10.5) when a redirect carries none.
DEFAULT_TTL = 60
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
    #: The TTL the decision was made with (Max-Age, or the CoAP default when absent).
    ttl: int = DEFAULT_TTL

    @property
    def names(self) -> tuple[str, ...]:
        """Every way the alternate server is named: alt-server and alt-server-record."""
        return (self.server, *self.addresses)


class RedirectFollower:
    """History of contacted servers and the redirect in force (``current``, None while the
    provisioned servers are in use)."""

    def __init__(self) -> None:
        self._contacted: OrderedDict[str, float] = OrderedDict()
        self.current: Decision | None = None

    def contacted(self, server: str, now: float) -> None:
        """Record a server we talked to (name or address, as the caller identifies it)."""
        self._contacted.pop(server, None)
        self._contacted[server] = now
        while len(self._contacted) > _HISTORY:
            self._contacted.popitem(last=False)

    def forget(self, names: Iterable[str]) -> None:
        """Drop servers from the history. Used when the TTL sends us back to the provisioned
        servers: being sent to the same alternate server again then is the server's
        instruction renewed, not a loop."""
        for name in names:
            self._contacted.pop(name, None)

    def recent(self, name: str, now: float) -> bool:
        seen = self._contacted.get(name)
        return seen is not None and now - seen < LOOP_WINDOW

    def on_redirect(self, redirect: RedirectedSignal, max_age: int | None,
                    now: float) -> Decision:
        """What to do with a redirect. The request that got it has failed either way; a
        FOLLOW means resend it to the alternate server (RFC 9132 §4.6) and makes it
        ``current``; an IGNORE_LOOP leaves ``current`` as it was."""
        names = (redirect.alt_server, *(str(a) for a in redirect.alt_server_record))
        for name in names:
            if self.recent(name, now):  # RFC 9132 §4.6 MUST ignore
                return Decision(Verdict.IGNORE_LOOP, redirect.alt_server,
                                tuple(str(a) for a in redirect.alt_server_record))
        ttl = DEFAULT_TTL if max_age is None else max_age
        until = None if ttl >= UNTIL_FURTHER_NOTICE else now + ttl
        decision = Decision(Verdict.FOLLOW, redirect.alt_server,
                            tuple(str(a) for a in redirect.alt_server_record), until, ttl)
        self.current = decision
        return decision

    def return_due_at(self, *, under_attack: bool) -> float | None:
        """When the client must be back on the provisioned servers, or None (no redirect in
        force, until further notice, or an attack: RFC 9132 §4.6 keeps the alternate
        server while an attack is active)."""
        if self.current is None or self.current.until is None or under_attack:
            return None
        return self.current.until

    def postpone(self, until: float) -> None:
        """The provisioned servers were unreachable: keep the alternate server until
        ``until`` and try again then."""
        if self.current is not None:
            self.current = replace(self.current, until=until)

    def should_return(self, now: float, *, under_attack: bool) -> bool:
        """Back to the provisioned servers once the TTL expires, except during an attack."""
        due = self.return_due_at(under_attack=under_attack)
        if due is not None and now >= due:
            self.current = None
            return True
        return False
