"""Retry waits of failed lookups (seed §6: "before retrying a lookup that has failed, a DOTS
client MUST wait a time period that is appropriate for the encountered error (e.g.,
NXDOMAIN, timeout, etc.)").

One ``RetryWaits`` per procedure, keyed by what was looked up (``dhcp eth0/ipv4``,
``s-naptr example.net eth0/ipv6``...). The wait comes from the failure kind, is at least
the RFC 2308 negative-caching TTL for NXDOMAIN / NODATA, doubles while the same failure
repeats (up to a maximum), and is never under one second. Pure: time is an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.discovery.lookups import FailureKind, LookupFailure

DEFAULT_RETRY_WAITS: Mapping[FailureKind, float] = MappingProxyType({
    FailureKind.NXDOMAIN: 300.0,
    FailureKind.NODATA: 300.0,
    FailureKind.SERVFAIL: 60.0,
    FailureKind.REFUSED: 300.0,
    FailureKind.TIMEOUT: 30.0,
    FailureKind.NO_REPLY: 60.0,
    FailureKind.MALFORMED: 300.0,
    FailureKind.UNAVAILABLE: 60.0,
    FailureKind.UNVALIDATED: 300.0,
})
MINIMUM_RETRY_WAIT = 1.0


@dataclass(slots=True)
class Wait:
    not_before: float
    kind: FailureKind
    failures: int


class RetryWaits:
    def __init__(self, waits: Mapping[FailureKind, float], maximum: float) -> None:
        self.waits = waits
        self.maximum = maximum
        self._waits: dict[str, Wait] = {}

    def current(self, key: str, now: float) -> Wait | None:
        """The wait ``key`` is in at ``now``, or None when it may be looked up."""
        wait = self._waits.get(key)
        return wait if wait is not None and now < wait.not_before else None

    def failed(self, key: str, failure: LookupFailure, now: float) -> float:
        """Record a failure; returns when ``key`` may be looked up again."""
        previous = self._waits.get(key)
        failures = previous.failures + 1 if previous and previous.kind is failure.kind else 1
        wait = float(self.waits.get(failure.kind, DEFAULT_RETRY_WAITS[failure.kind]))
        if failure.negative_ttl is not None and failure.kind in (FailureKind.NXDOMAIN,
                                                                 FailureKind.NODATA):
            wait = max(wait, float(failure.negative_ttl))  # RFC 2308 negative caching
        wait = min(wait * (1 << min(failures - 1, 20)), max(self.maximum, wait))
        wait = max(wait, MINIMUM_RETRY_WAIT)  # seed §6: never retried at once
        self._waits[key] = Wait(now + wait, failure.kind, failures)
        return now + wait

    def succeeded(self, key: str) -> None:
        self._waits.pop(key, None)
