"""The discovery mechanisms (seed §5, §7-10), each one step of a slot's run, sans I/O.

``Mechanisms`` owns what each mechanism does within one run of one slot (interface x
family): manual ``[[upstream]]`` entries (resolved when given by name), DHCP (options 142 /
148, RFC 8973; a name-only entry is resolved), S-NAPTR (RFC 8973 §3.2), DNS-SD over unicast
DNS and mDNS, and configured anycast addresses. A step is a generator that yields lookups
(``gateway.discovery.lookups`` requests) and returns ``(candidates, reason)``. Steps apply
the trust allow-list (RFC 8973 §8.1), turn TTLs and DHCP refresh times into validity
deadlines, and keep the retry wait of every lookup (seed §6): a lookup inside its wait is
not sent, and its end is noted in the ``Run`` so that the procedure re-runs the slot then.

The order of the mechanisms, the slots' states and timers are the procedure's
(``gateway.discovery.procedure``). Pure: no sockets, clock or asyncio; time is that of the
procedure's latest input, read through the ``now`` callable it passes.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import TYPE_CHECKING

from gateway.discovery import dnssd, snaptr
from gateway.discovery.candidates import (
    SIGNAL_TRANSPORTS,
    Candidate,
    DnssecStatus,
    Family,
    IdentifierType,
    IPAddress,
    Mechanism,
    Slot,
    Transport,
    TrustList,
)
from gateway.discovery.dhcp_options import DhcpInfo
from gateway.discovery.errors import DiscoveryUsageError
from gateway.discovery.lookups import (
    DhcpQuery,
    DnsAnswer,
    DnsQuery,
    FailureKind,
    LookupFailure,
    MdnsBrowse,
    Request,
    Result,
    address_rdtype,
)
from gateway.discovery.retry import RetryWaits

if TYPE_CHECKING:
    from gateway.discovery.procedure import ProcedureSettings

#: One mechanism's step: yields lookups, returns (candidates, reason).
Step = Generator[Request, Result, tuple[list[Candidate], str]]


@dataclass(slots=True)
class Run:
    """What one run of one slot has learned so far."""

    slot: Slot
    started_at: float
    dhcp: DhcpInfo | None = None
    retry_at: list[float] = field(default_factory=list)


class Mechanisms:
    """The steps of the seed's mechanisms for a procedure (see the module docstring)."""

    def __init__(self, settings: ProcedureSettings, retry: RetryWaits,
                 now: Callable[[], float]) -> None:
        self.settings = settings
        self.trust = TrustList(settings.trusted_domains)
        self._retry = retry
        self._clock = now

    def step(self, mechanism: Mechanism, run: Run) -> Step:
        """The step of ``mechanism`` in ``run``."""
        steps = {
            Mechanism.MANUAL: self._manual,
            Mechanism.DHCP: self._dhcp,
            Mechanism.SNAPTR: self._snaptr,
            Mechanism.DNSSD: self._dnssd,
            Mechanism.MDNS: self._mdns,
            Mechanism.ANYCAST: self._anycast,
        }
        return steps[mechanism](run)

    # Each mechanism returns (candidates, reason); the reason explains an empty list and
    # notes what was skipped when the list is not empty.

    def _manual(self, run: Run) -> Step:
        family = run.slot.family
        servers = [s for s in self.settings.manual
                   if s.host is not None or (s.address is not None
                                             and Family.of(s.address) is family)]
        if not self.settings.manual:
            return [], "no [[upstream]] configured"
        if not servers:
            return [], f"no [[upstream]] entry for IPv{family.value}"
        out: list[Candidate] = []
        notes: list[str] = []
        for server in servers:
            transport = server.transport
            if server.address is not None:
                if Family.of(server.address) is not family:
                    continue
                # Seed §5: configured addresses come with a configured reference identifier;
                # the host name, when also given, is only that identifier (not resolved).
                ri = server.reference_identifier or server.host
                assert ri is not None  # config enforces it
                out.append(self._candidate(run, Mechanism.MANUAL, transport, server.address,
                                           server.port, ri, None, f"[[upstream]] {server.name}"))
                continue
            assert server.host is not None
            found = yield from self._resolve(run, server.host, self.settings.dns_servers)
            if isinstance(found, str):
                notes.append(f"{server.name}: {found}")
                continue
            addresses, expires_at, status = found
            ri = server.reference_identifier or server.host
            for address in addresses:
                out.append(self._candidate(run, Mechanism.MANUAL, transport, address,
                                           server.port, ri, expires_at,
                                           f"[[upstream]] {server.name} ({server.host})",
                                           dnssec=status))
        return out, "; ".join(notes) if notes else ("" if out else "no usable entry")

    def _dhcp(self, run: Run) -> Step:
        key = f"dhcp {run.slot}"
        waiting = self._waiting(run, key)
        if waiting:
            return [], waiting
        result = yield DhcpQuery(run.slot)
        if isinstance(result, LookupFailure):
            self._failed(run, key, result)
            return [], f"no usable DHCP reply: {result}"
        if not isinstance(result, DhcpInfo):
            raise DiscoveryUsageError(f"DhcpQuery answered with {type(result).__name__}")
        self._retry.succeeded(key)
        run.dhcp = result
        refresh = result.refresh if result.refresh else self.settings.dhcp_refresh
        expires_at = run.started_at + max(float(refresh), self.settings.min_validity)
        out: list[Candidate] = []
        notes = [f"problems in the reply: {'; '.join(result.problems)}"] if result.problems else []
        option_name = "option 142" if run.slot.family is Family.V6 else "option 148"
        for server in result.servers:
            if self.trust.active and (server.name is None or not self.trust.trusts(server.name)):
                # RFC 8973 §8.1: a rogue DHCP server must not choose our upstream.
                notes.append(f"DHCP server {server.name or 'without a name'} is not in "
                             "trusted_domains; ignored")
                continue
            if server.resolve_name:
                assert server.name is not None
                # Seed §9.1.3: RI only -> resolve the name, and it is the reference identifier.
                found = yield from self._resolve(run, server.name, self._dns_servers(run))
                if isinstance(found, str):
                    notes.append(f"RI {server.name}: {found}")
                    continue
                addresses, ttl_expiry, status = found
                for address in addresses:
                    for transport in SIGNAL_TRANSPORTS:
                        out.append(self._candidate(
                            run, Mechanism.DHCP, transport, address, transport.default_port,
                            server.name, min(expires_at, ttl_expiry or expires_at),
                            f"DHCP RI {server.name} (resolved)", dnssec=status))
                continue
            for address in server.addresses:
                # Seed §9.1.3: with RI and ADDRESS both, the name is only the reference
                # identifier and MUST NOT be passed to a resolver: it is not.
                ri, ri_type = server.reference_identifier(address)
                for transport in SIGNAL_TRANSPORTS:
                    out.append(self._candidate(
                        run, Mechanism.DHCP, transport, address, transport.default_port, ri,
                        expires_at, f"DHCP {option_name}" + (f" + RI {server.name}"
                                                             if server.name else ""),
                        ri_type))
        if not out and not notes:
            notes.append("the reply carried no DOTS options")
        return out, "; ".join(notes)

    def _snaptr(self, run: Run) -> Step:
        domains = self._domains(run)
        if not domains:
            return [], "no domain: DHCP gave none and no default_domain is configured"
        notes: list[str] = []
        family = run.slot.family
        for domain in domains:
            if not self.trust.trusts(domain):
                notes.append(f"{domain}: not in trusted_domains")
                continue
            key = f"s-naptr {domain} {run.slot}"
            waiting = self._waiting(run, key)
            if waiting:
                notes.append(f"{domain}: {waiting}")
                continue
            result = yield from snaptr.resolve(domain, family, servers=self._dns_servers(run),
                                               interface=run.slot.interface)
            if result.failure is not None:
                self._failed(run, key, result.failure)
                notes.append(f"{domain}: {result.failure}")
                continue  # seed §6: other known domains MAY be tried at once
            self._retry.succeeded(key)
            out = [
                # RFC 8973 §8.2: the reference identifier is the domain of the S-NAPTR lookup.
                self._candidate(run, Mechanism.SNAPTR, row.transport, row.address, row.port,
                                domain, self._ttl_expiry(run, row.ttl),
                                f"NAPTR {domain} order {row.order} -> {row.target}",
                                dnssec=row.dnssec)
                for row in result.rows
            ]
            return out, "; ".join(notes)
        return [], "; ".join(notes)

    def _dnssd(self, run: Run) -> Step:
        domains = self._domains(run)
        if not domains:
            return [], "no domain: DHCP gave none and no default_domain is configured"
        notes: list[str] = []
        family = run.slot.family
        for domain in domains:
            key = f"dns-sd {domain} {run.slot}"
            waiting = self._waiting(run, key)
            if waiting:
                notes.append(f"{domain}: {waiting}")
                continue
            result = yield from dnssd.browse(domain, family, servers=self._dns_servers(run),
                                             interface=run.slot.interface)
            if result.failure is not None:
                self._failed(run, key, result.failure)
                notes.append(f"{domain}: {result.failure}")
                continue
            self._retry.succeeded(key)
            out = self._dnssd_candidates(run, Mechanism.DNSSD, result.rows, notes)
            if out:
                return out, "; ".join(notes)
        return [], "; ".join(notes)

    def _mdns(self, run: Run) -> Step:
        key = f"mdns {run.slot}"
        waiting = self._waiting(run, key)
        if waiting:
            return [], waiting
        types = tuple(f"{name}.local." for name, _, _ in dnssd.SERVICES)
        result = yield MdnsBrowse(run.slot, types, self.settings.mdns_browse_time)
        if isinstance(result, LookupFailure):
            self._failed(run, key, result)
            return [], str(result)
        if not isinstance(result, tuple):
            raise DiscoveryUsageError(f"MdnsBrowse answered with {type(result).__name__}")
        notes: list[str] = []
        rows = dnssd.mdns_rows(result, run.slot.family)
        out = self._dnssd_candidates(run, Mechanism.MDNS, rows, notes)
        if not out:
            failure = LookupFailure(FailureKind.NODATA, "no DOTS service instances in local."
                                    if not result else
                                    f"no usable IPv{run.slot.family.value} instance in local.")
            self._failed(run, key, failure)
            notes.insert(0, str(failure))
        else:
            self._retry.succeeded(key)
        return out, "; ".join(notes)

    def _anycast(self, run: Run) -> Step:
        # Seed §10: "the assigned anycast address(es) ... for each combination of interface
        # and address family". DOTS never got IANA addresses: these are configuration.
        if not self.settings.anycast:
            return [], "no anycast addresses configured"
        out = [
            self._candidate(run, Mechanism.ANYCAST, transport, server.address, server.port,
                            server.reference_identifier, None, "configured anycast address")
            for server in self.settings.anycast
            if Family.of(server.address) is run.slot.family
            for transport in SIGNAL_TRANSPORTS
        ]
        return out, "" if out else f"no IPv{run.slot.family.value} anycast address configured"
        yield  # a generator like the others  # pragma: no cover

    # --- helpers ---------------------------------------------------------------------------

    def _dnssd_candidates(self, run: Run, mechanism: Mechanism, rows: Sequence[dnssd.DnssdRow],
                          notes: list[str]) -> list[Candidate]:
        out = []
        for row in rows:
            if not self.trust.trusts(row.target):
                # RFC 8973 §8.1 / seed §11: a rogue advertisement must not choose our upstream.
                notes.append(f"{row.instance}: target {row.target} not in trusted_domains")
                continue
            out.append(self._candidate(run, mechanism, row.transport, row.address, row.port,
                                       row.target, self._ttl_expiry(run, row.ttl),
                                       f"{row.instance} -> {row.target}", dnssec=row.dnssec))
        return out

    def _candidate(self, run: Run, mechanism: Mechanism, transport: Transport,
                   address: IPAddress, port: int, ri: str, expires_at: float | None,
                   source: str, ri_type: IdentifierType = IdentifierType.DNS, *,
                   dnssec: DnssecStatus | None = None) -> Candidate:
        # The family of the address: DHCPv6 may carry IPv4-mapped ones (seed §9.1.2).
        return Candidate(mechanism, run.slot.interface, Family.of(address), transport, address,
                         port, ri.rstrip("."), ri_type, expires_at, source, dnssec)

    def _ttl_expiry(self, run: Run, ttl: int) -> float:
        """A DNS TTL as an absolute expiry, floored at ``min_validity``, and bounded by the
        validity of the DHCP information (domain, servers) the lookup used."""
        expires_at = run.started_at + max(float(ttl), self.settings.min_validity)
        if run.dhcp is not None and not self.settings.domains:
            refresh = run.dhcp.refresh or self.settings.dhcp_refresh
            expires_at = min(expires_at,
                             run.started_at + max(float(refresh), self.settings.min_validity))
        return expires_at

    def _domains(self, run: Run) -> tuple[str, ...]:
        """The override, else what DHCP gave on this interface, else the default (seed §7.1)."""
        if self.settings.domains:
            return self.settings.domains
        found = list(run.dhcp.domains) if run.dhcp is not None else []
        if self.settings.default_domain:
            found.append(self.settings.default_domain)
        return tuple(dict.fromkeys(d.rstrip(".") for d in found))

    def _dns_servers(self, run: Run) -> tuple[IPAddress, ...]:
        """The override, else the servers DHCP gave on the same interface (RFC 9284 §5: a
        provisioning domain's names are resolved with its own servers), else the system's."""
        if self.settings.dns_servers:
            return self.settings.dns_servers
        if run.dhcp is not None and run.dhcp.dns_servers:
            return run.dhcp.dns_servers
        return ()

    def _resolve(
        self, run: Run, name: str, servers: tuple[IPAddress, ...]
    ) -> Generator[Request, Result, tuple[list[IPAddress], float, DnssecStatus] | str]:
        """Addresses of ``name`` in the slot's family with their expiry and the answer's
        DNSSEC status, or why not."""
        rdtype = address_rdtype(run.slot.family)
        key = f"resolve {name} {rdtype}"
        waiting = self._waiting(run, key)
        if waiting:
            return waiting
        result = yield DnsQuery(name, rdtype, servers, run.slot.interface)
        if isinstance(result, LookupFailure):
            self._failed(run, key, result)
            return f"{rdtype} {name}: {result}"
        self._retry.succeeded(key)
        found = yield from _addresses_of_answer(name, result)
        if isinstance(found, str):
            return found
        addresses, ttl, status = found
        return addresses, self._ttl_expiry(run, ttl), status

    def _waiting(self, run: Run, key: str) -> str | None:
        """Why ``key`` may not be looked up now, or None. A skipped lookup still schedules
        the slot's next run for the end of its wait."""
        wait = self._retry.current(key, self._clock())
        if wait is None:
            return None
        run.retry_at.append(wait.not_before)
        return (f"not retried before +{wait.not_before - self._clock():.0f} s "
                f"(last failure: {wait.kind.value})")

    def _failed(self, run: Run, key: str, failure: LookupFailure) -> None:
        run.retry_at.append(self._retry.failed(key, failure, self._clock()))


def _addresses_of_answer(
    name: str, result: Result
) -> Generator[Request, Result, tuple[list[IPAddress], int, DnssecStatus] | str]:
    if not isinstance(result, DnsAnswer):
        return f"{name}: unexpected answer {type(result).__name__}"
    addresses: list[IPAddress] = []
    for rdata in result.rdataset:
        try:
            addresses.append(ip_address(rdata.address))
        except (AttributeError, ValueError):
            continue
    if not addresses:
        return f"{name}: no addresses in the answer"
    return addresses, result.ttl, result.dnssec
    yield  # pragma: no cover

