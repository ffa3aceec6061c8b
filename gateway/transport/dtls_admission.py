"""Who may start a DTLS handshake: the caps, the per-source rate, fairness between sources.

A pure policy object (no sockets, no OpenSSL, time passed in): the server asks it before it
sends a cookie and again when a ClientHello comes back with a valid one, and tells it when
a handshake starts and ends. Half-open handshakes (past the cookie, then silent) are the
cheap attack here, since each costs the server a handshake step and memory until its
deadline; so that a few busy sources cannot lock everyone else out:

- a source (remote address) holds at most ``max_handshakes_per_source`` at once;
- at the global cap, a source holding fewer than the source holding the most takes the
  oldest half-open handshake of that one (which is closed without a word);
- the handshake deadline shrinks as the table fills (``deadline``), from
  ``handshake_deadline`` at half full to ``handshake_deadline_min`` when full.

Imports nothing above gateway.transport.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.transport.endpoint import HANDSHAKE_NICE
from gateway.transport.secure_session import DEFAULT_DATAGRAM_SIZE

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_sessions: int = 20_000
    max_handshakes: int = 512
    handshake_deadline: float = 20.0
    #: DOTS sessions are quiet for long stretches (heartbeats may be disabled when idle),
    #: so the default is long; heartbeats normally detect dead peers first.
    idle_timeout: float = 6 * 3600.0
    handshakes_per_source_per_second: float = 20.0
    handshake_burst: int = 40
    tracked_sources: int = 8192
    datagram_size: int = DEFAULT_DATAGRAM_SIZE
    handshake_threads: int = 2
    handshake_nice: int = HANDSHAKE_NICE
    #: Concurrent handshakes per source address. A legitimate client has one at a time; a
    #: NAT in front of many has a few. 50 flooding sources at 8 stay under max_handshakes.
    max_handshakes_per_source: int = 8
    #: The deadline when the handshake table is full (see Admission.deadline). A real
    #: client's handshake takes a few round trips, at most ~2 s with one lost flight.
    handshake_deadline_min: float = 4.0


@dataclass(frozen=True)
class Verdict(Generic[T]):
    """``refusal`` names the limit that refused, or is None; ``evict`` is the half-open
    handshake to close so that this one fits (only when admitted at the global cap)."""

    refusal: str | None = None
    evict: T | None = None


#: Counter names in the server's Counters, by refusal.
SESSION_LIMIT = "session limit reached"
HANDSHAKE_LIMIT = "concurrent handshake limit reached"
SOURCE_LIMIT = "per-source concurrent handshake limit reached"
RATE_LIMIT = "per-source handshake rate exceeded"


class Admission(Generic[T]):
    """Pending handshakes by source, oldest first, and a token bucket per source."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._pending: dict[str, OrderedDict[T, None]] = {}
        self._count = 0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def handshaking(self) -> int:
        return self._count

    def pending_of(self, source: str) -> int:
        held = self._pending.get(source)
        return len(held) if held else 0

    def check(self, source: str, sessions: int, now: float, *, consume: bool) -> Verdict[T]:
        """May ``source`` start a handshake? ``consume``: it is starting one now (a valid
        cookie came back), so take a rate token and pick the handshake to evict, if any."""
        limits = self.limits
        if sessions >= limits.max_sessions:
            return Verdict(SESSION_LIMIT)
        held = self.pending_of(source)
        if held >= limits.max_handshakes_per_source:
            return Verdict(SOURCE_LIMIT)
        victim: T | None = None
        if self._count >= limits.max_handshakes:
            # Room for sources with fewer pending: take from the source holding the most,
            # never from an equal (that would only churn between equals).
            busiest, most = max(((s, len(h)) for s, h in self._pending.items()),
                                key=lambda pair: pair[1], default=(None, 0))
            if busiest is None or most <= held + 1:
                return Verdict(HANDSHAKE_LIMIT)
            if consume:
                victim = next(iter(self._pending[busiest]))
        if consume and not self._take_token(source, now):
            return Verdict(RATE_LIMIT)
        return Verdict(None, victim)

    def started(self, source: str, item: T) -> None:
        self._pending.setdefault(source, OrderedDict())[item] = None
        self._count += 1

    def ended(self, source: str, item: T) -> None:
        """The handshake finished, failed, timed out or was evicted (idempotent)."""
        held = self._pending.get(source)
        if held is None or item not in held:
            return
        del held[item]
        self._count -= 1
        if not held:
            del self._pending[source]

    def deadline(self) -> float:
        """The handshake deadline now: the configured one while the table is at most half
        full, then shrinking linearly to ``handshake_deadline_min`` at the cap, so that
        abandoned handshakes make room faster the more of them there are."""
        limits = self.limits
        full, low = limits.handshake_deadline, min(limits.handshake_deadline_min,
                                                   limits.handshake_deadline)
        load = self._count / max(limits.max_handshakes, 1)
        if load <= 0.5:
            return full
        return max(low, full - (full - low) * min(1.0, (load - 0.5) / 0.5))

    def _take_token(self, source: str, now: float) -> bool:
        rate, burst = self.limits.handshakes_per_source_per_second, self.limits.handshake_burst
        tokens, stamp = self._buckets.pop(source, (float(burst), now))
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.limits.tracked_sources:  # bounded, oldest first
            self._buckets.popitem(last=False)
        return allowed
