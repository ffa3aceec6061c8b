"""DNS-SD browsing for DOTS over unicast DNS (RFC 6763; seed §8.1; RFC 8973 §7), as a pure
lookup plan, and the mapping of mDNS results to the same rows.

Service names: RFC 8973's ``_dots-signal._udp``, ``_dots-signal._tcp``, ``_dots-data._tcp``
first, then the seed's ``_dots._signal._udp``, ``_dots._signal._tcp``, ``_dots._data._tcp``
(seed §8.1: "MUST be"). For each: PTR at ``<service>.<domain>`` -> instance names -> SRV
(RFC 2782 order) and TXT (RFC 8973 §7 defines no keys: a non-empty TXT is noted and
ignored) -> A/AAAA of the SRV target. The reference identifier of a row is the SRV target
(the name the server's certificate must carry). Bounded like ``snaptr``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from gateway.discovery.candidates import DnssecStatus, Family, IPAddress, Transport
from gateway.discovery.lookups import (
    DnsQuery,
    DnsResult,
    FailureKind,
    LookupFailure,
    MdnsService,
    address_rdtype,
)
from gateway.discovery.snaptr import _Budget, _dns, srv_rows

MAX_QUERIES = 64
MAX_INSTANCES = 16  # per service name: a flood of PTR records must not mean a flood of queries

# (service label, transport, naming): RFC 8973 §9.1 names before the seed's (seed §8.1).
SERVICES: tuple[tuple[str, Transport, str], ...] = (
    ("_dots-signal._udp", Transport.SIGNAL_UDP, "rfc8973"),
    ("_dots-signal._tcp", Transport.SIGNAL_TCP, "rfc8973"),
    ("_dots-data._tcp", Transport.DATA_TCP, "rfc8973"),
    ("_dots._signal._udp", Transport.SIGNAL_UDP, "seed"),
    ("_dots._signal._tcp", Transport.SIGNAL_TCP, "seed"),
    ("_dots._data._tcp", Transport.DATA_TCP, "seed"),
)


def transport_of(service_type: str) -> Transport | None:
    """``_dots-signal._udp.local.`` -> signal.udp (either naming); None for other services."""
    label = service_type.lower().rstrip(".")
    for name, transport, _ in SERVICES:
        if label == name or label.startswith(name + "."):
            return transport
    return None


@dataclass(frozen=True, slots=True)
class DnssdRow:
    service: str  # the service name the row was found under
    instance: str
    transport: Transport
    address: IPAddress
    port: int
    target: str  # SRV target: the reference identifier
    ttl: int
    dnssec: DnssecStatus | None = None  # None: from mDNS, which DNSSEC does not cover


@dataclass(frozen=True, slots=True)
class DnssdResult:
    domain: str
    rows: tuple[DnssdRow, ...]
    failure: LookupFailure | None
    notes: tuple[str, ...] = ()


def browse(
    domain: str,
    family: Family,
    *,
    servers: tuple[IPAddress, ...] = (),
    interface: str | None = None,
) -> Generator[DnsQuery, DnsResult, DnssdResult]:
    """Browse every DOTS service name in ``domain``; drive it with ``Plan``."""
    budget = _Budget(MAX_QUERIES)
    cache: dict[tuple[str, str], DnsResult] = {}
    notes: list[str] = []
    rows: list[DnssdRow] = []
    failures: list[LookupFailure] = []
    seen: set[tuple[Transport, IPAddress, int]] = set()
    for service, transport, _naming in SERVICES:
        owner = f"{service}.{domain.rstrip('.')}"
        ptr = yield from _dns(owner, "PTR", servers, interface, budget, cache)
        if isinstance(ptr, LookupFailure):
            failures.append(ptr)
            continue
        instances = sorted({r.target.to_text(omit_final_dot=True) for r in ptr.rdataset})
        if len(instances) > MAX_INSTANCES:
            notes.append(f"PTR {owner}: {len(instances)} instances, using {MAX_INSTANCES}")
        for instance in instances[:MAX_INSTANCES]:
            found = yield from srv_rows(
                instance, transport, family, servers, interface, budget, cache, notes, ptr.ttl,
                ptr.dnssec
            )
            txt = yield from _dns(instance, "TXT", servers, interface, budget, cache)
            if not isinstance(txt, LookupFailure) and any(
                s for rdata in txt.rdataset for s in rdata.strings
            ):
                notes.append(f"TXT {instance}: keys ignored (RFC 8973 §7 defines none)")
            for row_transport, address, port, target, ttl, status in found:
                if (row_transport, address, port) in seen:
                    continue
                seen.add((row_transport, address, port))
                rows.append(DnssdRow(service, instance, row_transport, address, port, target,
                                     ttl, status))
    failure = None
    if not rows:
        failure = _summary(domain, family, failures, notes)
    return DnssdResult(domain, tuple(rows), failure, tuple(dict.fromkeys(notes)))


def _summary(
    domain: str, family: Family, failures: list[LookupFailure], notes: list[str]
) -> LookupFailure:
    """One failure for "nothing found in this domain"; its kind is the most transient one
    seen (a timeout is retried sooner than an NXDOMAIN)."""
    for kind in (FailureKind.TIMEOUT, FailureKind.SERVFAIL, FailureKind.REFUSED):
        if any(f.kind is kind for f in failures):
            return LookupFailure(kind, f"no DOTS service instances in {domain}: {kind.value}")
    detail = f"no DOTS service instances with {address_rdtype(family)} addresses in {domain}"
    if notes:
        detail += f" ({'; '.join(notes[:3])})"
    negative = [f.negative_ttl for f in failures if f.negative_ttl is not None]
    return LookupFailure(FailureKind.NXDOMAIN if failures and all(
        f.kind is FailureKind.NXDOMAIN for f in failures) else FailureKind.NODATA,
        detail, min(negative) if negative else None)


def mdns_rows(services: tuple[MdnsService, ...], family: Family) -> list[DnssdRow]:
    """mDNS instances -> rows for one family, in service-name order then instance name."""
    rank = {name: i for i, (name, _, _) in enumerate(SERVICES)}

    def key(s: MdnsService) -> tuple[int, str]:
        label = s.service_type.lower().rstrip(".").removesuffix(".local")
        return rank.get(label, len(rank)), s.instance

    rows: list[DnssdRow] = []
    seen: set[tuple[Transport, IPAddress, int]] = set()
    for service in sorted(services, key=key):
        transport = transport_of(service.service_type)
        if transport is None or not 1 <= service.port <= 65535 or not service.server:
            continue
        for address in service.addresses:
            if Family.of(address) is not family or (transport, address, service.port) in seen:
                continue
            seen.add((transport, address, service.port))
            rows.append(DnssdRow(service.service_type, service.instance, transport, address,
                                 service.port, service.server.rstrip("."), service.ttl))
    return rows
