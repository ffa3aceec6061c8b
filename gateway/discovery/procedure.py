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
(``lookups.Plan``) that yields one request at a time; slots run independently. What each
mechanism does within a run (lookups, trust, validity, retry waits) is
``gateway.discovery.mechanisms``; this module owns the order, the slots' states and timers.

Timers: a slot with candidates re-runs when the earliest of them expires (DHCP refresh, DNS
TTL; RFC 8973 §4: "expiry of a validity timer"), never sooner than ``min_validity`` after
it was found, so a TTL of 0 cannot make it spin. A slot without candidates re-runs when the
earliest retry wait of its failed lookups ends. Every failed lookup (DHCP exchange, S-NAPTR
or DNS-SD domain, name resolution, mDNS browse) gets a wait chosen by its failure kind and
doubled while it keeps failing; within that wait the lookup is not sent again, even on
demand (seed §6: "before retrying a lookup that has failed, a DOTS client MUST wait a time
period that is appropriate for the encountered error"). Pure: no sockets, clock or asyncio.

DNSSEC (seed §11; ``settings.dnssec``): every DNS answer arrives here with the status the
resolver adapter gave it (``gateway.discovery.dnssec``). With ``require``, an answer that is
not secure becomes a failed lookup (``FailureKind.UNVALIDATED``, its own retry wait) before
the mechanism sees it: it can yield no candidate. With ``prefer`` it is used, and the run
logs one warning listing why each such answer was not validated; ``dnssec_stats`` counts the
candidates built from unvalidated data (by mechanism and status) and the answers refused.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.discovery.candidates import (
    MECHANISM_ORDER,
    Candidate,
    DnssecStatus,
    IPAddress,
    Mechanism,
    Slot,
    Transport,
)
from gateway.discovery.errors import DiscoveryUsageError
from gateway.discovery.lookups import (
    DnsAnswer,
    DnsQuery,
    DnssecMode,
    FailureKind,
    LookupFailure,
    Plan,
    Request,
    Result,
)
from gateway.discovery.mechanisms import Mechanisms, Run
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
    dnssec: DnssecMode = DnssecMode.OFF  # seed §11

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


@dataclass(frozen=True, slots=True)
class MechanismFinished:
    """Event: one mechanism of a slot's run is done (progress; the run may go on)."""

    slot: Slot
    outcome: MechanismOutcome


Event = CandidatesFound | NothingFound | ValidityExpired | MechanismFinished


@dataclass(slots=True)
class DnssecStats:
    """Counters for operators (``dots_gateway_discovery_*`` metrics, ``discover``)."""

    #: Candidates built from DNS answers DNSSEC did not validate, used anyway (``prefer``),
    #: by (mechanism, status); counted at each run that yields them.
    unvalidated_used: dict[tuple[str, str], int] = field(default_factory=dict)
    #: DNS answers refused because not validated (``require``), by status.
    rejected: dict[str, int] = field(default_factory=dict)


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
    unvalidated: list[str] = field(default_factory=list)  # this run's unvalidated answers
    #: The current run so far: candidates and outcomes of the mechanisms already done.
    run_found: list[Candidate] = field(default_factory=list)
    run_outcomes: list[MechanismOutcome] = field(default_factory=list)


class Procedure:
    """The seed §5 procedure for a set of slots (interface x family)."""

    def __init__(self, settings: ProcedureSettings, slots: Sequence[Slot], now: float) -> None:
        if len(set(slots)) != len(slots):
            raise DiscoveryUsageError("duplicate slots")
        self.settings = settings
        self._records = {slot: _SlotRecord(slot) for slot in slots}
        self._order = list(slots)
        self._retry = RetryWaits(settings.retry_waits, settings.retry_max)
        self._events: deque[Event] = deque()
        self._next_id = 1
        self._outstanding: dict[int, Slot] = {}
        self._now = now
        self._mechanisms = Mechanisms(settings, self._retry, lambda: self._now)
        self.dnssec_stats = DnssecStats()

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
        result = self._dnssec_policy(record, record.plan.outstanding, result)
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

    def running(self) -> list[Slot]:
        """The slots whose run has not ended, in the order given."""
        return [s for s in self._order if self._records[s].state is SlotState.RUNNING]

    def candidates_so_far(self) -> list[Candidate]:
        """Like ``candidates``, but a running slot gives what its current run found so far
        (not its previous run's): what a run cut short at a deadline reports."""
        out: list[Candidate] = []
        for slot in self._order:
            record = self._records[slot]
            out += record.run_found if record.state is SlotState.RUNNING else record.candidates
        return out

    def progress(self, slot: Slot) -> tuple[tuple[Candidate, ...], tuple[MechanismOutcome, ...]]:
        """A running slot's run so far: the candidates of the mechanisms already done (in
        preference order) and their outcomes; what a run cut short at a deadline keeps."""
        record = self._records[slot]
        return tuple(record.run_found), tuple(record.run_outcomes)

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(self._order)

    def retry_wait(self, key: str) -> tuple[float, FailureKind] | None:
        """(not_before, kind) of a lookup in its retry wait, for reports and tests."""
        wait = self._retry.current(key, self._now)
        return None if wait is None else (wait.not_before, wait.kind)

    # --- DNSSEC ------------------------------------------------------------------------------

    def _dnssec_policy(self, record: _SlotRecord, request: Request | None,
                       result: Result) -> Result:
        """Seed §11: with ``require`` an answer DNSSEC did not validate is a failed lookup;
        with ``prefer`` it is used and noted for the run's warning."""
        mode = self.settings.dnssec
        if (mode is DnssecMode.OFF or not isinstance(result, DnsAnswer)
                or result.dnssec is DnssecStatus.SECURE):
            return result
        what = (f"{request.rdtype} {request.name}" if isinstance(request, DnsQuery)
                else "answer")
        why = f"{what}: {result.dnssec.value}" + (
            f" ({result.dnssec_detail})" if result.dnssec_detail else "")
        if mode is DnssecMode.REQUIRE:
            stats = self.dnssec_stats.rejected
            stats[result.dnssec.value] = stats.get(result.dnssec.value, 0) + 1
            log.warning("discovery %s: DNSSEC: refused %s (discovery.dnssec = require)",
                        record.slot, why)
            return LookupFailure(FailureKind.UNVALIDATED, f"not validated by DNSSEC: {why}")
        record.unvalidated.append(why)
        return result

    def _count_unvalidated(self, record: _SlotRecord, found: Sequence[Candidate]) -> None:
        if self.settings.dnssec is DnssecMode.OFF:
            return
        used = [c for c in found if c.dnssec is not None and not c.validated]
        if not used:
            return
        stats = self.dnssec_stats.unvalidated_used
        for c in used:
            assert c.dnssec is not None
            key = (c.mechanism.value, c.dnssec.value)
            stats[key] = stats.get(key, 0) + 1
        log.warning("discovery %s: DNSSEC: using %d candidate(s) built from answers DNSSEC did "
                    "not validate (discovery.dnssec = prefer): %s", record.slot, len(used),
                    "; ".join(dict.fromkeys(record.unvalidated)) or "-")

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
        record.unvalidated = []
        record.plan = Plan(self._run(Run(record.slot, self._now), record))
        self._check_done(record)

    def _check_done(self, record: _SlotRecord) -> None:
        if record.plan is not None and record.plan.done:
            record.plan = None

    # --- the run ---------------------------------------------------------------------------

    def _run(self, run: Run, record: _SlotRecord) -> Generator[Request, Result, None]:
        found: list[Candidate] = []
        outcomes: list[MechanismOutcome] = []
        record.run_found, record.run_outcomes = found, outcomes
        enabled = set(self.settings.mechanisms)
        for mechanism in MECHANISM_ORDER:  # seed §5: the order is fixed, config only enables
            if mechanism not in enabled:
                continue
            if found and not self.settings.collect_all:
                outcomes.append(MechanismOutcome(mechanism, 0, "not tried: an earlier "
                                                 "mechanism found candidates"))
                continue
            candidates, reason = yield from self._mechanisms.step(mechanism, run)
            outcome = MechanismOutcome(mechanism, len(candidates), reason)
            outcomes.append(outcome)
            found += candidates
            self._events.append(MechanismFinished(run.slot, outcome))
        record.candidates = tuple(found)
        record.outcomes = tuple(outcomes)
        if found:
            self._count_unvalidated(record, found)
            self._fire(record, Input.FOUND)
            expiries = [c.expires_at for c in found if c.expires_at is not None]
            record.timer_at = min(expiries) if expiries else None
            self._events.append(CandidatesFound(run.slot, tuple(found), tuple(outcomes)))
        else:
            self._fire(record, Input.NOTHING)
            record.timer_at = min(run.retry_at) if run.retry_at else None
            self._events.append(NothingFound(run.slot, tuple(outcomes), record.timer_at))
