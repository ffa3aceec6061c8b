"""The server's own heartbeats (RFC 9132 §4.7), sent a slice per event-loop turn.

The core reports every session whose heartbeat is due at a timer tick (0.5 s). With 50,000
sessions at 30 s intervals that is ~830 heartbeats per tick, ~150-200 ms of sending on one
core, during which no request is read: that burst was the 50,000-session soak's heartbeat
answer p99 (issue 21). Sent ``PER_TURN`` at a time with the loop's I/O in between, a
request waits for one slice instead; the last heartbeat of a tick leaves a fraction of the
tick later, well inside the interval (the peer allows missing-hb-allowed of them).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

#: Heartbeats per loop turn: ~5 ms of sending on the 2026-12 test VM.
PER_TURN = 32


class HeartbeatPacer:
    """Queues ``(session_id, peer_hb_status)`` and calls ``send`` for them, ``PER_TURN`` per
    loop turn; ``send`` looks the session up (it may have closed meanwhile)."""

    def __init__(self, send: Callable[[int, bool], None]) -> None:
        self._send = send
        self._due: deque[tuple[int, bool]] = deque()
        self._handle: asyncio.Handle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, session_id: int, peer_hb_status: bool) -> None:
        self._due.append((session_id, peer_hb_status))

    def drain(self) -> None:
        """Send one slice now, and the rest on the following loop turns."""
        self._handle = None
        due, send = self._due, self._send
        for _ in range(min(len(due), PER_TURN)):
            send(*due.popleft())
        if due and self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self.drain)

    def start(self) -> None:
        """After ``add``s: the first slice leaves now unless a drain is already under way."""
        if self._due and self._handle is None:
            self.drain()

    def cancel(self) -> None:
        """At stop: heartbeats not yet sent are dropped with their sessions."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due.clear()
