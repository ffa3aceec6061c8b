"""The requests the pure discovery code asks the I/O adapters to perform, their results, and
``Plan``, which runs a multi-step lookup written as a generator.

A lookup (an S-NAPTR chain, a DNS-SD browse, a whole per-slot procedure) is a generator that
yields a request (``DnsQuery``, ``DhcpQuery``, ``MdnsBrowse``) and receives its result; a
``Plan`` wraps it in the ``next_request()`` / ``query_result()`` shape of dnspython's
``_Resolution``, so a short async loop (``engine``) or a test drives it. Failures are values
(``LookupFailure`` with a ``FailureKind``), not exceptions: the kind decides how long to wait
before retrying (seed §6). Pure: dnspython's rdata classes only, no resolver, no sockets.
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import dns.rdataset

from gateway.discovery.candidates import DnssecStatus, Family, IPAddress, Slot
from gateway.discovery.dhcp_options import DhcpInfo
from gateway.discovery.errors import DiscoveryUsageError


class FailureKind(enum.StrEnum):
    """Why a lookup gave nothing; each kind has its own retry wait (seed §6: "MUST wait a
    time period that is appropriate for the encountered error (e.g., NXDOMAIN, timeout)")."""

    NXDOMAIN = "nxdomain"  # the name does not exist
    NODATA = "nodata"  # the name exists, no record of that type (e.g. no DOTS NAPTR)
    SERVFAIL = "servfail"
    REFUSED = "refused"
    TIMEOUT = "timeout"  # no answer from a DNS server in time
    NO_REPLY = "no-reply"  # no DHCP reply in time
    MALFORMED = "malformed"  # an answer we could not use
    UNVALIDATED = "unvalidated"  # discovery.dnssec = "require" and DNSSEC did not validate it
    UNAVAILABLE = "unavailable"  # local problem: no address on the interface, port in use


class DnssecMode(enum.StrEnum):
    """``discovery.dnssec``: what discovery does with answers that are not validated."""

    OFF = "off"  # no validation; candidates are "unchecked"
    PREFER = "prefer"  # validate; use unvalidated answers too, marked, logged and counted
    REQUIRE = "require"  # validate; an unvalidated answer is a failed lookup


class DnssecValidator(enum.StrEnum):
    """``discovery.dnssec_validator``: who validates."""

    LOCAL = "local"  # in process, from ``dnssec_trust_anchors``
    RESOLVER = "resolver"  # the AD bit of the DNS server asked (trusts the path to it)


@dataclass(frozen=True, slots=True)
class LookupFailure:
    kind: FailureKind
    detail: str = ""
    negative_ttl: int | None = None  # RFC 2308: from the SOA of a negative answer

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.detail}" if self.detail else self.kind.value


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """Resolve ``name``/``rdtype``; ``servers`` empty means the system's resolvers."""

    name: str
    rdtype: str  # "NAPTR", "SRV", "A", "AAAA", "PTR", "TXT"
    servers: tuple[IPAddress, ...] = ()
    interface: str | None = None  # the interface the servers were learned on (RFC 9284 §5)


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    rdataset: dns.rdataset.Rdataset
    dnssec: DnssecStatus = DnssecStatus.UNCHECKED
    dnssec_detail: str = ""  # why it is not secure

    @property
    def ttl(self) -> int:
        return int(self.rdataset.ttl)


DnsResult = DnsAnswer | LookupFailure


@dataclass(frozen=True, slots=True)
class DhcpQuery:
    """Send DHCPINFORM (IPv4) or Information-request (IPv6) on the slot's interface."""

    slot: Slot


DhcpResult = DhcpInfo | LookupFailure


@dataclass(frozen=True, slots=True)
class MdnsService:
    """One DNS-SD instance seen over mDNS (answers to our queries or unsolicited
    announcements, seed §8.2)."""

    service_type: str  # "_dots-signal._udp.local."
    instance: str  # full instance name
    server: str  # SRV target host name
    port: int
    addresses: tuple[IPAddress, ...]
    ttl: int


@dataclass(frozen=True, slots=True)
class MdnsBrowse:
    """Browse the DOTS service types in ``local.`` on the slot's interface for ``duration``
    seconds, returning the cached instances at once when there are some."""

    slot: Slot
    service_types: tuple[str, ...]
    duration: float


MdnsResult = tuple[MdnsService, ...] | LookupFailure

Request = DnsQuery | DhcpQuery | MdnsBrowse
Result = DnsResult | DhcpResult | MdnsResult


def address_rdtype(family: Family) -> str:
    return "A" if family is Family.V4 else "AAAA"


Q = TypeVar("Q")
A = TypeVar("A")
R = TypeVar("R")


@dataclass(slots=True)
class Plan(Generic[Q, A, R]):
    """Runs a generator that yields requests (Q) and receives results (A), returning R.

    ``next_request()`` hands out the pending request once; ``query_result(result)`` feeds the
    answer and advances to the next request or to the end (``done``, ``result``). At most
    one request is outstanding: every step of a plan depends on the previous answer.
    """

    _gen: Generator[Q, A, R]
    _pending: Q | None = None
    _handed_out: bool = False
    done: bool = False
    result: R | None = None
    steps: int = field(default=0)

    def __post_init__(self) -> None:
        self._advance(None)

    def next_request(self) -> Q | None:
        if self._pending is None or self._handed_out:
            return None
        self._handed_out = True
        return self._pending

    @property
    def outstanding(self) -> Q | None:
        return self._pending if self._handed_out else None

    def query_result(self, result: A) -> None:
        if self._pending is None:
            raise DiscoveryUsageError("query_result() with no request outstanding")
        self._advance(result)

    def _advance(self, result: Any) -> None:
        self.steps += 1
        try:
            self._pending = self._gen.send(result)
        except StopIteration as stop:
            self._pending = None
            self.done = True
            self.result = stop.value
        self._handed_out = False
