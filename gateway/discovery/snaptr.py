"""S-NAPTR resolution for DOTS (RFC 3958; seed §6; RFC 8973 §6), as a pure lookup plan.

For a domain: NAPTR records whose service field is ``DOTS`` with protocol tag
``signal.udp``, ``signal.tcp`` or ``data.tcp``, in NAPTR order/preference (dnspython's
processing order); a record without flags points to more NAPTRs (followed with the same
tag), ``S`` to SRV records (priority/weight order, dnspython again), ``A`` to address
records. The result is the seed's table: order, protocol, address, port, tag, plus the
target name, the smallest TTL along the chain, and the DNSSEC status of the answers it
was built from (the worst of them: one unvalidated answer makes the row unvalidated).

No DOTS NAPTR at the domain means discovery failed for that domain (seed §6); the failure
kind (NXDOMAIN, NODATA, SERVFAIL, timeout...) decides the retry wait, which ``procedure``
enforces. The lookup is bounded: at most ``MAX_QUERIES`` queries and ``MAX_DEPTH`` NAPTR
hops, so a looping zone cannot keep it busy.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import cast

import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV

from gateway.discovery.candidates import DnssecStatus, Family, IPAddress, Transport
from gateway.discovery.lookups import (
    DnsAnswer,
    DnsQuery,
    DnsResult,
    FailureKind,
    LookupFailure,
    address_rdtype,
)

APP_SERVICE = "dots"  # seed §6 / RFC 8973 §9.4: the application service tag
MAX_QUERIES = 48
MAX_DEPTH = 4


@dataclass(frozen=True, slots=True)
class SnaptrRow:
    """One line of the seed's table (seed §6): order, protocol, address, port, tag."""

    order: int
    transport: Transport
    address: IPAddress
    port: int
    target: str  # the host name the address came from
    ttl: int  # smallest TTL along the NAPTR -> SRV -> A/AAAA chain
    dnssec: DnssecStatus = DnssecStatus.UNCHECKED  # the worst along the chain


@dataclass(frozen=True, slots=True)
class SnaptrResult:
    domain: str
    rows: tuple[SnaptrRow, ...]
    failure: LookupFailure | None  # set when rows is empty: why
    notes: tuple[str, ...] = ()  # sub-lookups that failed without failing the whole


def parse_services(services: bytes) -> tuple[str, frozenset[Transport]] | None:
    """``b"DOTS:signal.udp:signal.tcp"`` -> ("dots", {signal.udp, signal.tcp}).

    RFC 3958 §6.5: the application service, then protocol tags, ':'-separated, compared
    without case. Unknown tags are ignored; None when the field is not text at all.
    """
    try:
        text = services.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if not text:
        return "", frozenset()
    app, *protocols = text.split(":")
    tags = frozenset(Transport(p) for p in protocols if p in {t.value for t in Transport})
    return app, tags


#: One row before numbering: transport, address, port, target, TTL, DNSSEC status.
RawRow = tuple[Transport, IPAddress, int, str, int, DnssecStatus]


def worst(*statuses: DnssecStatus) -> DnssecStatus:
    return DnssecStatus.combine(statuses)


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _dns(
    name: str, rdtype: str, servers: tuple[IPAddress, ...], interface: str | None,
    budget: _Budget, cache: dict[tuple[str, str], DnsResult],
) -> Generator[DnsQuery, DnsResult, DnsResult]:
    """One query, answered from this run's cache when asked before (the seed's example
    reaches ``signal.example.net`` twice)."""
    key = (name.lower(), rdtype)
    if key in cache:
        return cache[key]
    if not budget.take():
        return LookupFailure(FailureKind.MALFORMED, f"more than {MAX_QUERIES} queries needed")
    result = yield DnsQuery(name, rdtype, servers, interface)
    cache[key] = result
    return result


def addresses_of(
    target: str, family: Family, servers: tuple[IPAddress, ...], interface: str | None,
    budget: _Budget, cache: dict[tuple[str, str], DnsResult],
) -> Generator[DnsQuery, DnsResult, tuple[list[IPAddress], int, DnssecStatus] | LookupFailure]:
    """A or AAAA records of ``target`` (the slot's family only): addresses, their TTL and
    the DNSSEC status of the answer."""
    result = yield from _dns(target, address_rdtype(family), servers, interface, budget, cache)
    if isinstance(result, LookupFailure):
        return result
    parsed: list[IPAddress] = []
    for rdata in result.rdataset:
        try:
            parsed.append(ip_address(rdata.address))
        except (AttributeError, ValueError):
            continue  # not an address record: a confused server, ignore the record
    if not parsed:
        return LookupFailure(FailureKind.NODATA, f"no {address_rdtype(family)} for {target}")
    return parsed, result.ttl, result.dnssec


def srv_rows(
    owner: str, transport: Transport, family: Family, servers: tuple[IPAddress, ...],
    interface: str | None, budget: _Budget, cache: dict[tuple[str, str], DnsResult],
    notes: list[str], ttl: int, status: DnssecStatus,
) -> Generator[DnsQuery, DnsResult, list[RawRow]]:
    """SRV records at ``owner`` in RFC 2782 order (dnspython's weighted processing order),
    each target's addresses. A target of "." means "no service here" (RFC 2782)."""
    result = yield from _dns(owner, "SRV", servers, interface, budget, cache)
    if isinstance(result, LookupFailure):
        notes.append(f"SRV {owner}: {result}")
        return []
    rows: list[RawRow] = []
    ttl = min(ttl, result.ttl)
    status = worst(status, result.dnssec)
    for rdata in result.rdataset.processing_order():
        srv = cast(dns.rdtypes.IN.SRV.SRV, rdata)
        target = srv.target.to_text(omit_final_dot=True)
        if not target or target == "." or srv.port == 0:
            continue
        found = yield from addresses_of(target, family, servers, interface, budget, cache)
        if isinstance(found, LookupFailure):
            notes.append(f"{address_rdtype(family)} {target}: {found}")
            continue
        addresses, address_ttl, address_status = found
        for address in addresses:
            rows.append((transport, address, srv.port, target, min(ttl, address_ttl),
                         worst(status, address_status)))
    return rows


def resolve(
    domain: str,
    family: Family,
    *,
    servers: tuple[IPAddress, ...] = (),
    interface: str | None = None,
    tags: Iterable[Transport] = tuple(Transport),
) -> Generator[DnsQuery, DnsResult, SnaptrResult]:
    """The S-NAPTR lookup of ``domain``; drive it with ``Plan``."""
    budget = _Budget(MAX_QUERIES)
    cache: dict[tuple[str, str], DnsResult] = {}
    notes: list[str] = []
    wanted = frozenset(tags)
    first = yield from _dns(domain, "NAPTR", servers, interface, budget, cache)
    if isinstance(first, LookupFailure):
        return SnaptrResult(domain, (), LookupFailure(
            first.kind, f"NAPTR {domain}: {first.detail or first.kind.value}", first.negative_ttl))
    records = _matching(first, wanted)
    if not records:
        # Seed §6: "If no DOTS-specific S-NAPTR records can be retrieved, the discovery
        # procedure fails for this domain name".
        return SnaptrResult(domain, (), LookupFailure(
            FailureKind.NODATA, f"no DOTS NAPTR records at {domain}"))
    raw: list[RawRow] = []
    for record, record_tags in records:
        raw += yield from _follow(
            record, record_tags, family, servers, interface, budget, cache, notes, first.ttl,
            first.dnssec, 0
        )
    rows: list[SnaptrRow] = []
    seen: set[tuple[Transport, IPAddress, int]] = set()
    for transport, address, port, target, ttl, status in raw:
        if (transport, address, port) in seen:
            continue
        seen.add((transport, address, port))
        rows.append(SnaptrRow(len(rows) + 1, transport, address, port, target, ttl, status))
    failure: LookupFailure | None = None
    if not rows:
        failure = LookupFailure(
            FailureKind.NODATA,
            f"DOTS NAPTR records at {domain} led to no {address_rdtype(family)} addresses"
            + (f" ({'; '.join(dict.fromkeys(notes))})" if notes else ""),
        )
    return SnaptrResult(domain, tuple(rows), failure, tuple(dict.fromkeys(notes)))


def _matching(
    answer: DnsAnswer, wanted: frozenset[Transport]
) -> list[tuple[dns.rdtypes.IN.NAPTR.NAPTR, frozenset[Transport]]]:
    """DOTS records in NAPTR order then preference (dnspython's processing order), each with
    the tags it serves."""
    out = []
    for rdata in answer.rdataset.processing_order():
        record = cast(dns.rdtypes.IN.NAPTR.NAPTR, rdata)
        parsed = parse_services(record.service)
        if parsed is None:
            continue
        app, record_tags = parsed
        flags = record.flags.lower()
        if app == APP_SERVICE and record_tags & wanted:
            out.append((record, record_tags & wanted))
        elif not app and not flags:
            # RFC 3958 §2.2.2: a non-terminal record may leave the service field empty;
            # the tags come from the record that led here.
            out.append((record, wanted))
    return out


def _follow(
    record: dns.rdtypes.IN.NAPTR.NAPTR, tags: frozenset[Transport], family: Family,
    servers: tuple[IPAddress, ...], interface: str | None, budget: _Budget,
    cache: dict[tuple[str, str], DnsResult], notes: list[str], ttl: int,
    status: DnssecStatus, depth: int,
) -> Generator[DnsQuery, DnsResult, list[RawRow]]:
    replacement = record.replacement.to_text(omit_final_dot=True)
    flags = record.flags.lower()
    ordered_tags = [t for t in Transport if t in tags]
    rows: list[RawRow] = []
    if flags == b"s":
        for tag in ordered_tags:
            rows += yield from srv_rows(
                replacement, tag, family, servers, interface, budget, cache, notes, ttl, status
            )
    elif flags == b"a":
        found = yield from addresses_of(replacement, family, servers, interface, budget, cache)
        if isinstance(found, LookupFailure):
            notes.append(f"{address_rdtype(family)} {replacement}: {found}")
        else:
            addresses, address_ttl, address_status = found
            for tag in ordered_tags:
                rows += [(tag, a, tag.default_port, replacement, min(ttl, address_ttl),
                          worst(status, address_status)) for a in addresses]
    elif not flags:
        if depth >= MAX_DEPTH:
            notes.append(f"NAPTR {replacement}: more than {MAX_DEPTH} non-terminal hops")
            return rows
        result = yield from _dns(replacement, "NAPTR", servers, interface, budget, cache)
        if isinstance(result, LookupFailure):
            notes.append(f"NAPTR {replacement}: {result}")
            return rows
        for child, child_tags in _matching(result, tags):
            rows += yield from _follow(child, child_tags, family, servers, interface, budget,
                                       cache, notes, min(ttl, result.ttl),
                                       worst(status, result.dnssec), depth + 1)
    else:
        notes.append(f"NAPTR {replacement}: flag {flags.decode('ascii', 'replace')!r} ignored")
    return rows
