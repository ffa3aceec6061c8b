"""The discovery procedure (seed §5), sans I/O: per interface x address family, run the
mechanisms in the seed's order and keep the ordered candidates, their validity timers and
the retry waits of failed lookups.

Order (seed §5, "Clients will prefer information received from the discovery methods in
the order listed"): explicit configuration (manual ``[[upstream]]``, then DHCP), service
resolution (S-NAPTR), DNS-SD (unicast DNS, then mDNS), anycast. The first mechanism that
yields candidates ends the run for that slot, unless ``collect_all``.

Drive it like ``heartbeat``: inputs are calls (``start``, ``rerun``, ``query_result``,
``handle_timer``), each with ``now``; outputs are pulled (``next_request`` -> I/O for the
driver to perform, ``next_event``, ``get_timer``). Each slot's run is a generator plan
(``lookups.Plan``) that yields one request at a time; slots run independently.

Timers: a slot with candidates re-runs when the earliest of them expires (DHCP refresh, DNS
TTL; RFC 8973 §4: "expiry of a validity timer"), never sooner than ``min_validity`` after
it was found, so a TTL of 0 cannot make it spin. A slot without candidates re-runs when the
earliest retry wait of its failed lookups ends. Every failed lookup (DHCP exchange, S-NAPTR
or DNS-SD domain, name resolution, mDNS browse) gets a wait chosen by its failure kind and
doubled while it keeps failing; within that wait the lookup is not sent again, even on
demand (seed §6: "before retrying a lookup that has failed, a DOTS client MUST wait a time
period that is appropriate for the encountered error"). Pure: no sockets, clock or asyncio.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address

from gateway.discovery import dnssd, snaptr
from gateway.discovery.candidates import (
    MECHANISM_ORDER,
    SIGNAL_TRANSPORTS,
    Candidate,
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
    Plan,
    Request,
    Result,
    address_rdtype,
)
from gateway.discovery.retry import DEFAULT_RETRY_WAITS, MINIMUM_RETRY_WAIT, RetryWaits

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class ManualServer:
    """One ``[[upstream]]`` entry. Seed §5: an address-only entry comes with a reference
    identifier (the config refuses it otherwise)."""

    name: str
    address: IPAddress | None
    host: str | None
    reference_identifier: str | None
    port: int
    transport: Transport


@dataclass(frozen=True, slots=True)
class AnycastServer:
    address: IPAddress
    reference_identifier: str
    port: int


@dataclass(frozen=True, slots=True)
class ProcedureSettings:
    mechanisms: tuple[Mechanism, ...] = MECHANISM_ORDER
    collect_all: bool = False
    manual: tuple[ManualServer, ...] = ()
    anycast: tuple[AnycastServer, ...] = ()
    domains: tuple[str, ...] = ()  # override (CLI --domain): used instead of DHCP's
    default_domain: str | None = None  # seed §7.1: used when nothing else gives a domain
    dns_servers: tuple[IPAddress, ...] = ()  # override of the DHCP-learned servers
    trusted_domains: tuple[str, ...] = ()  # RFC 8973 §8.1
    min_validity: float = 60.0
    dhcp_refresh: float = 3600.0  # validity of DHCP information without a lease/refresh time
    mdns_browse_time: float = 2.0
    retry_waits: Mapping[FailureKind, float] = field(default_factory=lambda: DEFAULT_RETRY_WAITS)
    retry_max: float = 3600.0

    def __post_init__(self) -> None:
        if any(wait < MINIMUM_RETRY_WAIT for wait in self.retry_waits.values()):
            raise DiscoveryUsageError("retry waits must be at least one second (seed §6)")
        if self.min_validity <= 0:
            raise DiscoveryUsageError("min_validity must be positive")


class SlotState(enum.Enum):
    IDLE = "idle"  # never run
    RUNNING = "running"  # a run is in progress
    RESOLVED = "resolved"  # has candidates; timer: earliest expiry
    EXHAUSTED = "exhausted"  # nothing found; timer: earliest retry


class Input(enum.Enum):
    START = "start"
    FOUND = "found"
    NOTHING = "nothing"
    EXPIRED = "expired"
    RETRY = "retry"
    RERUN = "rerun"


_TRANSITIONS: dict[tuple[SlotState, Input], SlotState] = {
    (SlotState.IDLE, Input.START): SlotState.RUNNING,
    (SlotState.IDLE, Input.RERUN): SlotState.RUNNING,
    (SlotState.RUNNING, Input.FOUND): SlotState.RESOLVED,
    (SlotState.RUNNING, Input.NOTHING): SlotState.EXHAUSTED,
    (SlotState.RESOLVED, Input.EXPIRED): SlotState.RUNNING,
    (SlotState.RESOLVED, Input.RERUN): SlotState.RUNNING,
    (SlotState.EXHAUSTED, Input.RETRY): SlotState.RUNNING,
    (SlotState.EXHAUSTED, Input.RERUN): SlotState.RUNNING,
}


@dataclass(frozen=True, slots=True)
class MechanismOutcome:
    """What one mechanism gave in one run: how many candidates, and why none if none."""

    mechanism: Mechanism
    found: int
    reason: str


@dataclass(frozen=True, slots=True)
class CandidatesFound:
    """Event: a slot's run ended with candidates (they replace the previous ones)."""

    slot: Slot
    candidates: tuple[Candidate, ...]
    outcomes: tuple[MechanismOutcome, ...]


@dataclass(frozen=True, slots=True)
class NothingFound:
    """Event: a slot's run ended without candidates; ``retry_at`` None: only on demand."""

    slot: Slot
    outcomes: tuple[MechanismOutcome, ...]
    retry_at: float | None


@dataclass(frozen=True, slots=True)
class ValidityExpired:
    """Event: a slot's candidates expired; a new run has started."""

    slot: Slot


Event = CandidatesFound | NothingFound | ValidityExpired


@dataclass(slots=True)
class _SlotRecord:
    slot: Slot
    state: SlotState = SlotState.IDLE
    plan: Plan[Request, Result, None] | None = None
    request_id: int | None = None
    candidates: tuple[Candidate, ...] = ()
    outcomes: tuple[MechanismOutcome, ...] = ()
    timer_at: float | None = None
    runs: int = 0


@dataclass(slots=True)
class _Run:
    """What one run of one slot has learned so far."""

    slot: Slot
    started_at: float
    dhcp: DhcpInfo | None = None
    retry_at: list[float] = field(default_factory=list)


class Procedure:
    """The seed §5 procedure for a set of slots (interface x family)."""

    def __init__(self, settings: ProcedureSettings, slots: Sequence[Slot], now: float) -> None:
        if len(set(slots)) != len(slots):
            raise DiscoveryUsageError("duplicate slots")
        self.settings = settings
        self.trust = TrustList(settings.trusted_domains)
        self._records = {slot: _SlotRecord(slot) for slot in slots}
        self._order = list(slots)
        self._retry = RetryWaits(settings.retry_waits, settings.retry_max)
        self._events: deque[Event] = deque()
        self._next_id = 1
        self._outstanding: dict[int, Slot] = {}
        self._now = now

    # --- inputs ----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Run every slot that has never run."""
        self._now = now
        for record in self._records.values():
            if record.state is SlotState.IDLE:
                self._begin(record, Input.START)

    def rerun(self, now: float, slot: Slot | None = None) -> list[Slot]:
        """Run again on demand (one slot, or all that are not running). Lookups still inside
        their retry wait are skipped, with the reason recorded (seed §6 MUST)."""
        self._now = now
        started = []
        for record in self._records.values():
            if slot is not None and record.slot != slot:
                continue
            if record.state is SlotState.RUNNING:
                continue  # already running: its result will be fresh
            self._begin(record, Input.RERUN)
            started.append(record.slot)
        return started

    def query_result(self, request_id: int, result: Result, now: float) -> None:
        """The answer to a request handed out by ``next_request``."""
        slot = self._outstanding.pop(request_id, None)
        if slot is None:
            raise DiscoveryUsageError(f"no outstanding request {request_id}")
        self._now = now
        record = self._records[slot]
        record.request_id = None
        assert record.plan is not None
        record.plan.query_result(result)
        self._check_done(record)

    def handle_timer(self, now: float) -> None:
        self._now = now
        for record in self._records.values():
            if record.timer_at is None or now < record.timer_at:
                continue
            if record.state is SlotState.RESOLVED:
                self._events.append(ValidityExpired(record.slot))
                self._begin(record, Input.EXPIRED)
            elif record.state is SlotState.EXHAUSTED:
                self._begin(record, Input.RETRY)

    # --- outputs ---------------------------------------------------------------------------

    def next_request(self) -> tuple[int, Request] | None:
        """The next I/O to perform, with the id to answer it under."""
        for slot in self._order:
            record = self._records[slot]
            if record.plan is None or record.request_id is not None:
                continue
            request = record.plan.next_request()
            if request is None:
                continue
            request_id = self._next_id
            self._next_id += 1
            record.request_id = request_id
            self._outstanding[request_id] = slot
            return request_id, request
        return None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        timers = [r.timer_at for r in self._records.values() if r.timer_at is not None]
        return min(timers) if timers else None

    def state(self, slot: Slot) -> SlotState:
        return self._records[slot].state

    @property
    def busy(self) -> bool:
        """Some slot is still running (the CLI waits for this to become False)."""
        return any(r.state in (SlotState.RUNNING, SlotState.IDLE) for r in self._records.values())

    def candidates(self) -> list[Candidate]:
        """Every slot's candidates, slots in the order given, each in preference order."""
        return [c for slot in self._order for c in self._records[slot].candidates]

    def outcomes(self, slot: Slot) -> tuple[MechanismOutcome, ...]:
        return self._records[slot].outcomes

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(self._order)

    def retry_wait(self, key: str) -> tuple[float, FailureKind] | None:
        """(not_before, kind) of a lookup in its retry wait, for reports and tests."""
        wait = self._retry.current(key, self._now)
        return None if wait is None else (wait.not_before, wait.kind)

    # --- state machine ---------------------------------------------------------------------

    def _fire(self, record: _SlotRecord, event: Input) -> None:
        new = _TRANSITIONS.get((record.state, event))
        if new is None:
            raise DiscoveryUsageError(
                f"discovery {record.slot}: {event.value} is not allowed in state "
                f"{record.state.value}"
            )
        log.debug("discovery %s: %s -> %s", record.slot, record.state.value, new.value)
        record.state = new

    def _begin(self, record: _SlotRecord, event: Input) -> None:
        self._fire(record, event)
        record.runs += 1
        record.timer_at = None
        if record.request_id is not None:  # cannot happen: only finished slots restart
            self._outstanding.pop(record.request_id, None)
            record.request_id = None
        record.plan = Plan(self._run(_Run(record.slot, self._now), record))
        self._check_done(record)

    def _check_done(self, record: _SlotRecord) -> None:
        if record.plan is not None and record.plan.done:
            record.plan = None

    # --- the run ---------------------------------------------------------------------------

    def _run(self, run: _Run, record: _SlotRecord) -> Generator[Request, Result, None]:
        found: list[Candidate] = []
        outcomes: list[MechanismOutcome] = []
        steps = {
            Mechanism.MANUAL: self._manual,
            Mechanism.DHCP: self._dhcp,
            Mechanism.SNAPTR: self._snaptr,
            Mechanism.DNSSD: self._dnssd,
            Mechanism.MDNS: self._mdns,
            Mechanism.ANYCAST: self._anycast,
        }
        enabled = set(self.settings.mechanisms)
        for mechanism in MECHANISM_ORDER:  # seed §5: the order is fixed, config only enables
            if mechanism not in enabled:
                continue
            if found and not self.settings.collect_all:
                outcomes.append(MechanismOutcome(mechanism, 0, "not tried: an earlier "
                                                 "mechanism found candidates"))
                continue
            candidates, reason = yield from steps[mechanism](run)
            outcomes.append(MechanismOutcome(mechanism, len(candidates), reason))
            found += candidates
        record.candidates = tuple(found)
        record.outcomes = tuple(outcomes)
        if found:
            self._fire(record, Input.FOUND)
            expiries = [c.expires_at for c in found if c.expires_at is not None]
            record.timer_at = min(expiries) if expiries else None
            self._events.append(CandidatesFound(run.slot, tuple(found), tuple(outcomes)))
        else:
            self._fire(record, Input.NOTHING)
            record.timer_at = min(run.retry_at) if run.retry_at else None
            self._events.append(NothingFound(run.slot, tuple(outcomes), record.timer_at))

    # Each mechanism returns (candidates, reason); the reason explains an empty list and
    # notes what was skipped when the list is not empty.

    def _manual(self, run: _Run) -> Generator[Request, Result, tuple[list[Candidate], str]]:
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
            addresses, expires_at = found
            ri = server.reference_identifier or server.host
            for address in addresses:
                out.append(self._candidate(run, Mechanism.MANUAL, transport, address,
                                           server.port, ri, expires_at,
                                           f"[[upstream]] {server.name} ({server.host})"))
        return out, "; ".join(notes) if notes else ("" if out else "no usable entry")

    def _dhcp(self, run: _Run) -> Generator[Request, Result, tuple[list[Candidate], str]]:
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
                addresses, ttl_expiry = found
                for address in addresses:
                    for transport in SIGNAL_TRANSPORTS:
                        out.append(self._candidate(
                            run, Mechanism.DHCP, transport, address, transport.default_port,
                            server.name, min(expires_at, ttl_expiry or expires_at),
                            f"DHCP RI {server.name} (resolved)"))
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

    def _snaptr(self, run: _Run) -> Generator[Request, Result, tuple[list[Candidate], str]]:
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
                                f"NAPTR {domain} order {row.order} -> {row.target}")
                for row in result.rows
            ]
            return out, "; ".join(notes)
        return [], "; ".join(notes)

    def _dnssd(self, run: _Run) -> Generator[Request, Result, tuple[list[Candidate], str]]:
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

    def _mdns(self, run: _Run) -> Generator[Request, Result, tuple[list[Candidate], str]]:
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

    def _anycast(self, run: _Run) -> Generator[Request, Result, tuple[list[Candidate], str]]:
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

    def _dnssd_candidates(self, run: _Run, mechanism: Mechanism, rows: Sequence[dnssd.DnssdRow],
                          notes: list[str]) -> list[Candidate]:
        out = []
        for row in rows:
            if not self.trust.trusts(row.target):
                # RFC 8973 §8.1 / seed §11: a rogue advertisement must not choose our upstream.
                notes.append(f"{row.instance}: target {row.target} not in trusted_domains")
                continue
            out.append(self._candidate(run, mechanism, row.transport, row.address, row.port,
                                       row.target, self._ttl_expiry(run, row.ttl),
                                       f"{row.instance} -> {row.target}"))
        return out

    def _candidate(self, run: _Run, mechanism: Mechanism, transport: Transport,
                   address: IPAddress, port: int, ri: str, expires_at: float | None,
                   source: str, ri_type: IdentifierType = IdentifierType.DNS) -> Candidate:
        # The family of the address: DHCPv6 may carry IPv4-mapped ones (seed §9.1.2).
        return Candidate(mechanism, run.slot.interface, Family.of(address), transport, address,
                         port, ri.rstrip("."), ri_type, expires_at, source)

    def _ttl_expiry(self, run: _Run, ttl: int) -> float:
        """A DNS TTL as an absolute expiry, floored at ``min_validity``, and bounded by the
        validity of the DHCP information (domain, servers) the lookup used."""
        expires_at = run.started_at + max(float(ttl), self.settings.min_validity)
        if run.dhcp is not None and not self.settings.domains:
            refresh = run.dhcp.refresh or self.settings.dhcp_refresh
            expires_at = min(expires_at,
                             run.started_at + max(float(refresh), self.settings.min_validity))
        return expires_at

    def _domains(self, run: _Run) -> tuple[str, ...]:
        """The override, else what DHCP gave on this interface, else the default (seed §7.1)."""
        if self.settings.domains:
            return self.settings.domains
        found = list(run.dhcp.domains) if run.dhcp is not None else []
        if self.settings.default_domain:
            found.append(self.settings.default_domain)
        return tuple(dict.fromkeys(d.rstrip(".") for d in found))

    def _dns_servers(self, run: _Run) -> tuple[IPAddress, ...]:
        """The override, else the servers DHCP gave on the same interface (RFC 9284 §5: a
        provisioning domain's names are resolved with its own servers), else the system's."""
        if self.settings.dns_servers:
            return self.settings.dns_servers
        if run.dhcp is not None and run.dhcp.dns_servers:
            return run.dhcp.dns_servers
        return ()

    def _resolve(
        self, run: _Run, name: str, servers: tuple[IPAddress, ...]
    ) -> Generator[Request, Result, tuple[list[IPAddress], float] | str]:
        """Addresses of ``name`` in the slot's family with their expiry, or why not."""
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
        addresses, ttl = found
        return addresses, self._ttl_expiry(run, ttl)

    def _waiting(self, run: _Run, key: str) -> str | None:
        """Why ``key`` may not be looked up now, or None. A skipped lookup still schedules
        the slot's next run for the end of its wait."""
        wait = self._retry.current(key, self._now)
        if wait is None:
            return None
        run.retry_at.append(wait.not_before)
        return (f"not retried before +{wait.not_before - self._now:.0f} s "
                f"(last failure: {wait.kind.value})")

    def _failed(self, run: _Run, key: str, failure: LookupFailure) -> None:
        run.retry_at.append(self._retry.failed(key, failure, self._now))


def _addresses_of_answer(
    name: str, result: Result
) -> Generator[Request, Result, tuple[list[IPAddress], int] | str]:
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
    return addresses, result.ttl
    yield  # pragma: no cover
