"""A server's two session deadlines without a pass over the whole session table (the DTLS
server's and the TLS server's).

The sweep used to look at every session once a second: ~8 ms at 3,000 sessions, so ~130 ms
at 50,000, a stall of the event loop every second that every answer waiting behind it pays
(issue 21's soak). Instead:

* Handshake deadline: every connection enters ``young`` when it is created. The deadline is
  the same for all at a given moment (``DtlsAdmission.deadline``; fixed for TLS), so the
  queue, in creation order, is in deadline order: a sweep pops only those whose time has come, and
  the ones that finished their handshake move on to the idle watch.
* Idle timeout: a heap of (when to look again, connection). Activity only moves
  ``last_activity``; a popped connection that was active is pushed again at
  ``last_activity + idle_timeout``, so each session is looked at about once per timeout.
  Closed sessions leave their entries behind; the heap is rebuilt from the live ones when
  it holds more than twice as many entries, so it stays proportional to the table.

Both hold weak references: a closed connection is freed at once, as before, not when its
deadline comes round (a handshake flood would otherwise keep every refused connection for
the handshake deadline, and churn every closed session for the idle timeout, 6 hours).
"""

from __future__ import annotations

import heapq
import itertools
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

#: Rebuild the idle heap when it holds more than this many entries per live session...
_SLACK = 2
#: ...and at least this many in all (small tables are never worth the rebuild).
_SLACK_MIN = 1024


class SessionDeadlines:
    __slots__ = ("_idle", "_seq", "_young")

    def __init__(self) -> None:
        self._young: deque[tuple[float, weakref.ref[Any]]] = deque()
        self._idle: list[tuple[float, int, weakref.ref[Any]]] = []
        self._seq = itertools.count()

    def started(self, conn: Any) -> None:
        """A new connection (its ``created_at`` is now: the queue stays in order)."""
        self._young.append((conn.created_at, weakref.ref(conn)))

    def past_handshake_deadline(self, now: float, deadline: float) -> Iterator[Any]:
        """Connections created ``deadline`` seconds ago or more, oldest first, each once:
        the caller closes those still in their handshake and ``watch_idle``s the others."""
        young = self._young
        while young and now - young[0][0] >= deadline:
            conn = young.popleft()[1]()
            if conn is not None:
                yield conn

    def look_again(self, conn: Any, now: float) -> None:
        """``conn``'s handshake gets another whole deadline from ``now``. ``now`` is no
        earlier than any creation time in the queue, so the queue stays in order."""
        self._young.append((now, weakref.ref(conn)))

    def watch_idle(self, conn: Any, at: float) -> None:
        heapq.heappush(self._idle, (at, next(self._seq), weakref.ref(conn)))

    def idle_candidates(self, now: float) -> Iterator[Any]:
        """Connections whose idle check is due (some closed or active since): the caller
        closes the idle ones and ``watch_idle``s the rest again."""
        idle = self._idle
        while idle and idle[0][0] <= now:
            conn = heapq.heappop(idle)[2]()
            if conn is not None:
                yield conn

    def compact(self, live: int, is_live: Callable[[Any], bool]) -> None:
        """Drop the entries of closed connections once they outnumber the live ones."""
        if len(self._idle) > max(_SLACK * live, _SLACK_MIN):
            self._idle = [entry for entry in self._idle
                          if (conn := entry[2]()) is not None and is_live(conn)]
            heapq.heapify(self._idle)

    def __len__(self) -> int:
        return len(self._young) + len(self._idle)
