"""Group commit for the server role: what depends on a save leaves once the save is durable.

A save is committed to the WAL at once (``gateway.server.persistence``); what depends on it,
the datagrams of a session (an answer may report the save) and the core's outputs
(mitigator commands, observer marks, heartbeats), is held here with the commit count it
needs durable, and released in order when an fsync covering that count has finished. The
fsync runs in a worker thread (``MitigationDatabase.durable``): the event loop goes on
serving, and what it commits meanwhile waits for the next fsync, which then covers all of it
(issue 21: the loop used to stand still for every fsync).

A mixin of ``ServerRole`` (asyncio glue, like the role); must not import the role.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.server.persistence import MitigationDatabase, PersistenceError

if TYPE_CHECKING:
    from gateway.server.session import SignalSession

log = logging.getLogger(__name__)


class GroupCommit:
    """Holds and releases; the role provides the attributes declared below."""

    database: MitigationDatabase | None
    clock: Callable[[], float]
    on_unsynced: Callable[[str], None]

    if TYPE_CHECKING:  # the role's (declared only: a stub here would shadow the observe mixin)
        def _dispatch(self, events: list[Any]) -> None: ...
        def _notify_due(self, session: SignalSession, now: float) -> None: ...
        def _arm(self, session: SignalSession) -> None: ...

    def _init_group_commit(self) -> None:
        #: What waits for an fsync, each with the commit count it needs durable (``send``,
        #: ``hold_events``): sessions with held datagrams (in ``SignalSession.held``), by
        #: id, and the core's events, in order.
        self._held_sessions: dict[int, SignalSession] = {}
        self._held_events: collections.deque[tuple[int, list[Any]]] = collections.deque()
        self._commit: asyncio.Task[None] | None = None  # ``_group_commit``, while it runs

    def hold_events(self, events: list[Any]) -> bool:
        """Hold the core's ``events`` if saves are not durable yet (or earlier events wait:
        they keep their order); False: nothing to wait for, dispatch them now."""
        database = self.database
        if database is None or not (database.unsynced or self._held_events):
            return False
        if events:
            self._held_events.append((database.committed, events))
            self._start_commit()
        return True

    def send(self, session: SignalSession, chunks: list[bytes]) -> None:
        """Send what ``session``'s layer produced, or hold it until every save committed so
        far is durable: a datagram may carry an answer that reports one, and nothing leaves
        ahead of what the session holds already (the order of its messages is kept)."""
        database = self.database
        if database is not None and (database.unsynced or session.held):
            session.held.append((database.committed, chunks))
            self._held_sessions[session.dots.id] = session
            self._start_commit()
            return
        session.transmit(chunks)

    def _start_commit(self) -> None:
        if self._commit is None:
            # Started next turn: the requests of this one share its fsync.
            self._commit = asyncio.ensure_future(self._group_commit())

    async def _group_commit(self) -> None:
        """Fsync (in a worker thread, the loop serving meanwhile) and release what each
        fsync covers, until nothing is held. A failed fsync stops the daemon
        (``on_unsynced``) with nothing of what was held sent."""
        database = self.database
        assert database is not None
        try:
            while self._held_sessions or self._held_events:
                try:
                    await database.durable()
                except PersistenceError as exc:
                    self.on_unsynced(str(exc))
                    return
                self._release()
        except Exception:  # a bug; what is still held goes with the next commit
            log.exception("releasing answers after an fsync failed")
        finally:
            self._commit = None

    def _release(self) -> None:
        """Run the held core outputs and send the held datagrams that durable saves cover,
        in the order they were held; then what the released sessions have due."""
        if self.database is None:
            return
        synced = self.database.synced
        held_events = self._held_events
        while held_events and held_events[0][0] <= synced:
            self._dispatch(held_events.popleft()[1])
        now = self.clock()
        for session_id, session in list(self._held_sessions.items()):
            held = session.held
            while held and held[0][0] <= synced and not session.closed:
                session.transmit(held.pop(0)[1])
            if session.closed:
                self._held_sessions.pop(session_id, None)
            elif not held:
                self._held_sessions.pop(session_id, None)
                self._notify_due(session, now)
                session.flush()
                self._arm(session)

    def durable(self) -> None:
        """Make every save so far durable on this thread (shutdown, a peer's Release: the
        connection closes next); then ``_release`` sends what waited for it."""
        if self.database is None or not self.database.unsynced:
            return
        try:
            self.database.make_durable()
        except PersistenceError as exc:
            self.on_unsynced(str(exc))

    def _flush_held(self) -> None:
        """At shutdown: make what is held durable on this thread and send it."""
        if self._held_sessions or self._held_events:
            self.durable()
            self._release()
        if self._commit is not None:
            self._commit.cancel()

    def _forget_held(self, session_id: int) -> None:
        self._held_sessions.pop(session_id, None)
