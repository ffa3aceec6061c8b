"""Whether an established session may go on: credential expiry and re-checks on reload.

A session is admitted by its handshake; what admitted it can end later. ``Standing`` keeps
the deadline of every session's peer certificate (the role closes a session when its
certificate expires) and counts the sessions closed because their standing ended, by
reason. ``recheck`` applies new trust to every established session on a reload or a new
CRL: a session whose credential was withdrawn (``gateway.credentials.Trust.problem``), whose
``[[clients]]`` rule is gone, or that is no longer a trusted gateway is closed, with one log
line each; one that gained trust gets it at once.

Asyncio glue only, like the rest of the role; must not import the role at run time.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gateway.dots.authz import Authorizer
from gateway.dots.errors import NotAuthorized
from gateway.dots.message import Requester
from gateway.transport.secure_session import PeerCredential

if TYPE_CHECKING:
    from gateway.server.role import ServerRole
    from gateway.server.session import SignalSession

log = logging.getLogger(__name__)

#: Reasons a session is closed for (the ``reason`` label of
#: ``dots_gateway_sessions_withdrawn_total``).
REASONS = ("psk_withdrawn", "certificate_revoked", "certificate_expired", "ca_withdrawn",
           "client_withdrawn", "trust_withdrawn")

CredentialCheck = Callable[[PeerCredential], "tuple[str, str] | None"]


class Standing:
    """Certificate deadlines of the role's sessions, and the closures counted by reason."""

    def __init__(self) -> None:
        self._expiry: list[tuple[float, int]] = []  # (expires_at, session id), lazily
        self._watched: set[int] = set()  # the ids whose heap entry is current
        #: Sessions closed because their standing ended, by reason (``REASONS``).
        self.withdrawn: dict[str, int] = dict.fromkeys(REASONS, 0)

    def watch(self, session_id: int, expires_at: float) -> None:
        self._watched.add(session_id)
        heapq.heappush(self._expiry, (expires_at, session_id))

    def forget(self, session_id: int) -> None:
        """A session closed: its entry goes (the heap is rebuilt when mostly stale)."""
        self._watched.discard(session_id)
        if len(self._expiry) > 2 * len(self._watched) + 64:
            self._expiry = [e for e in self._expiry if e[1] in self._watched]
            heapq.heapify(self._expiry)

    def expired(self, now: float) -> list[int]:
        """Watched sessions whose certificate expired by ``now``."""
        due = []
        while self._expiry and self._expiry[0][0] <= now:
            session_id = heapq.heappop(self._expiry)[1]
            if session_id in self._watched:
                self._watched.discard(session_id)
                due.append(session_id)
        return due

    def count(self, reason: str) -> None:
        self.withdrawn[reason] = self.withdrawn.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """One session closed by a re-check (for the reload's report)."""

    peer: str
    client: str
    reason: str
    detail: str


def recheck(role: ServerRole, credential_problem: CredentialCheck, *,
            trusted_gateways: frozenset[str], authorizer: Authorizer | None) -> list[Withdrawn]:
    """Install the new trusted gateways and client rules in ``role``, then close every
    session that may not go on under them or under ``credential_problem``."""
    before = role.core.authorizer
    role.trusted_gateways = trusted_gateways
    role.core.authorizer = authorizer
    closed: list[Withdrawn] = []
    for session in list(role.sessions.values()):
        if session.closed:
            continue
        problem = (credential_problem(session.conn.peer)
                   or _authorization_problem(role, session, before, authorizer))
        if problem is not None:
            reason, detail = problem
            role.withdraw(session, reason, detail)
            closed.append(Withdrawn(str(session.conn.remote), session.identity, reason, detail))
    return closed


def _authorization_problem(role: ServerRole, session: SignalSession,
                           before: Authorizer | None, after: Authorizer | None
                           ) -> tuple[str, str] | None:
    old = session.dots.requester
    new = role.requester(session.conn.peer)
    if old.trusted_gateway and not new.trusted_gateway:
        return "trust_withdrawn", "it is no longer a trusted gateway"
    if _matches(before, old) and not _matches(after, new):
        return "client_withdrawn", "no [[clients]] rule matches it any more"
    if new != old:  # trust granted: effective from its next request
        session.dots.requester = replace(old, trusted_gateway=new.trusted_gateway)
    return None


def _matches(authorizer: Authorizer | None, requester: Requester) -> bool:
    if authorizer is None:
        return True
    try:
        authorizer.rule_for(requester)
    except NotAuthorized:
        return False
    return True
