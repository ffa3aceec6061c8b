"""What a DOTS gateway relays, rewrites or keeps (RFC 8811 §2.2.3, RFC 9132 §4.4, RFC 8768).

A gateway is a DOTS server towards its clients and a DOTS client towards its upstream
server; nothing in DOTS marks a gateway, so these rules live here and the roles stay plain.

* ``upstream_path``: the mitigate Uri-Path sent upstream. A server-domain gateway inserts
  the ``cdid`` it derived from the client's credential and strips whatever ``cdid`` the
  client sent (§4.4.1.2); a client-domain gateway sends none.
* ``forward_hop_limit``: RFC 8768 §3 for the Hop-Limit option (insert 16, decrement, 5.08
  at 0); ``loop_report`` prepends this gateway to the 5.08 diagnostic on its way back.
* ``RelayTable``: the client mitigations the gateway is responsible for, so that it can
  re-establish them on another upstream server (failover) and after a restart. Records are
  keyed by (cuid, mid); ``take_changes`` hands the changed keys to the persistence layer.

Pure: the clock (wall time, because records outlive the process) is passed in.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from gateway.dots.codec import decode_message, encode_message
from gateway.dots.codes import CONTENT_FORMAT_TEXT, Code, ConflictCause, Status
from gateway.dots.conflict import ConflictingRequest
from gateway.dots.errors import DotsProtocolError, MalformedPayload
from gateway.dots.filters import carry_acl_list
from gateway.dots.message import DotsResponse
from gateway.dots.model import ConflictInformation, MitigationScope, Scope
from gateway.dots.uri import DotsPath, Resource, build_path

#: RFC 8768 §3: the initial value a proxy inserts when a request has no Hop-Limit.
DEFAULT_HOP_LIMIT = 16
#: cuid -> credential of clients seen without a mitigation on record; bounded, oldest out.
MAX_REMEMBERED_OWNERS = 100_000
#: RFC 9132 §4.4.1: lifetime -1 is "indefinite".
INDEFINITE = -1
#: The (state, status label) pairs records are counted as, shared (see ``RelayTable._count``).
_COUNTED: dict[tuple[str, str | None], tuple[str, str | None]] = {}
#: Rebuild the expiry heap when it holds more than this many entries per scheduled record
#: (refreshes leave their earlier entries behind)...
_HEAP_SLACK = 2
#: ...and at least this many in all (small tables are never worth the rebuild).
_HEAP_SLACK_MIN = 1024


class Domain(enum.StrEnum):
    """RFC 9132 §4.4.1.2 / RFC 9284 terminology for where the gateway sits."""

    SERVER = "server"  # run by the mitigation provider: inserts cdid
    CLIENT = "client"  # in the client's domain (e.g. CPE): no cdid


class HopLimitReached(DotsProtocolError):
    """RFC 8768 §3: the request went round too many proxies (a loop, most likely)."""

    code = Code.HOP_LIMIT_REACHED


def forward_hop_limit(received: int | None, initial: int = DEFAULT_HOP_LIMIT) -> int:
    """The Hop-Limit to send upstream for a request that arrived with ``received``.

    Raises ``HopLimitReached`` (5.08) when decrementing reaches 0; the gateway must then
    answer itself and not forward (RFC 8768 §3).
    """
    if received is None:
        return initial
    remaining = received - 1
    if remaining <= 0:
        raise HopLimitReached("hop limit reached")
    return remaining


def loop_report(identity: str, upstream: DotsResponse | None = None) -> DotsResponse:
    """A 5.08 whose diagnostic lists the gateways on the path, this one first (RFC 8768 §3,
    RFC 9132 §9: "the list of servers in the loop"). ``upstream``: the 5.08 being relayed."""
    previous = upstream.diagnostic.strip() if upstream is not None else ""
    if previous.startswith("hop limit reached:"):
        previous = previous.removeprefix("hop limit reached:").strip()
    listed = " ".join(p for p in (identity, previous) if p)
    return DotsResponse(Code.HOP_LIMIT_REACHED, f"hop limit reached: {listed}".encode(),
                        CONTENT_FORMAT_TEXT)


#: What a gateway relays upstream; config and hb are per hop (RFC 9132 §4.5, §4.7). RFC 9244
#: §5.2: telemetry follows RFC 9132 §4.4.1's gateway rules (cdid) like mitigate.
RELAYED = frozenset({Resource.MITIGATE, Resource.TM_SETUP, Resource.TM})


def upstream_path(path: DotsPath, cdid: str | None) -> tuple[str, ...]:
    """The Uri-Path for upstream: the client's cdid (if any) is always replaced."""
    if path.resource not in RELAYED:
        raise ValueError("only mitigate and telemetry requests are relayed")
    return build_path(path.resource, cdid=cdid, cuid=path.cuid, mid=path.mid, tsid=path.tsid,
                      tmid=path.tmid)


def gateway_error(exc: DotsProtocolError) -> DotsResponse:
    """An error the gateway itself produced, marked so (the issue's operator requirement:
    a client must tell the gateway's refusals from the upstream server's)."""
    response = exc.to_response()
    if response.content_format == CONTENT_FORMAT_TEXT:
        return replace(response, payload=b"gateway: " + response.payload)
    return response  # 4.09 and friends carry CBOR bodies defined by the RFC


def single_scope(body: bytes) -> Scope:
    """The one scope of a mitigation request body (validated before it was relayed)."""
    message = decode_message(body)
    if not isinstance(message, MitigationScope) or len(message.scope) != 1:
        raise MalformedPayload("not a mitigation request body")
    return message.scope[0]


def with_scope_changes(body: bytes, **changes: object) -> bytes:
    """``body`` re-encoded with fields of its scope replaced; unknown keys survive (the
    codec keeps them), so a re-sent request says what the client said."""
    message = decode_message(body)
    assert isinstance(message, MitigationScope)
    scope = replace(message.scope[0], **changes)  # type: ignore[arg-type]
    return encode_message(replace(message, scope=(scope,)))


def carry_acl_list_body(previous: bytes, new: bytes) -> bytes:
    """The body to keep for re-sending a refresh ``new`` of the request ``previous``: the
    upstream server still applies the acl-list an earlier request set (RFC 9133 §3.2), so a
    re-install elsewhere must carry it too. Bodies that do not decode are kept as they are
    (the upstream server accepted ``new``; it is what we have)."""
    if previous == new:
        return new
    try:
        old_message, new_message = decode_message(previous), decode_message(new)
        if not (isinstance(old_message, MitigationScope) and isinstance(new_message,
                                                                       MitigationScope)):
            return new
        scope = carry_acl_list(new_message.scope[0], old_message.scope[0])
    except (DotsProtocolError, IndexError):
        return new
    if scope is new_message.scope[0]:
        return new
    return encode_message(replace(new_message, scope=(scope, *new_message.scope[1:])))


@dataclass(slots=True)
class RelayedMitigation:
    """A client's mitigation request as the gateway relayed it (slots: a gateway may hold
    a million of them)."""

    cuid: str
    mid: int
    owner: str  # the downstream client's credential id (RFC 9132 App. B)
    cdid: str | None  # what was inserted upstream
    body: bytes  # the request body relayed (CBOR), kept to re-send it elsewhere
    trigger_mitigation: bool
    lifetime: int  # requested, seconds (-1 indefinite)
    #: Wall-clock expiry; None while indefinite or not yet accepted upstream.
    expires_at: float | None = None
    #: Accepted by an upstream server (2.01/2.04). Unconfirmed records exist only while
    #: the request is in flight, or after a crash in that window (checked on restart).
    confirmed: bool = False
    #: The upstream endpoint that last accepted it (None: not installed anywhere now).
    upstream: str | None = None
    #: The client asked to withdraw it; the DELETE has not reached an upstream yet.
    withdrawing: bool = False
    #: A preconfigured request the gateway activated upstream because the client's session
    #: was lost (see ``GatewayRelay`` and the README); refreshes are rewritten to match.
    activated_by_loss: bool = False
    #: Its status (RFC 9132 Table 3) as the upstream server last reported it, in the answer
    #: to a GET or a notification that passed through the gateway; None until one did.
    #: Not saved: after a restart the next GET or notification says it again.
    status: Status | None = None
    #: (state, status label) as ``RelayTable`` counts it for its metrics; None: not counted.
    counted: tuple[str, str | None] | None = field(default=None, init=False, repr=False,
                                                   compare=False)
    #: (cuid, mid), made once: the table's dict, sets and heap share this one tuple (a new
    #: one per use was 112 bytes per record kept, at a million records).
    key: tuple[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.key = (self.cuid, self.mid)

    def remaining_lifetime(self, now: float) -> int:
        """The lifetime to ask for when re-sending: what is left of the granted one."""
        if self.expires_at is None:
            return self.lifetime
        return max(1, int(self.expires_at - now + 0.999))

    def resend_body(self, now: float) -> bytes:
        """The body to re-install this request on another upstream server."""
        changes: dict[str, object] = {"lifetime": self.remaining_lifetime(now)}
        if self.activated_by_loss:
            changes["trigger_mitigation"] = True
        return with_scope_changes(self.body, **changes)


class RelayTable:
    """The client mitigations this gateway answers for (see the module docstring).

    Nothing here passes over the whole table on a timer (a gateway may hold a million
    records, issue 21): expiry is a heap of (expires_at, cuid, mid) looked at only when due,
    and the records in force (what ``active`` asks, for every upstream message) are a set of
    their own. Both follow the records through ``put``/``touch``/``accepted``/``remove``,
    which every change in place goes through (``touch``: "save it").
    """

    def __init__(self) -> None:
        self._records: dict[tuple[str, int], RelayedMitigation] = {}
        self._by_cuid: dict[str, set[int]] = {}
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._changed: set[tuple[str, int]] = set()
        #: (expires_at, cuid, mid); an entry is live while ``_expiry_at[key]`` equals it.
        self._expiry: list[tuple[float, str, int]] = []
        self._expiry_at: dict[tuple[str, int], float] = {}
        #: Keys of confirmed, not withdrawing, immediate (or activated) records.
        self._in_force: set[tuple[str, int]] = set()
        #: Records in force per cuid (the clients a mitigation is in force for).
        self._in_force_of: Counter[str] = Counter()
        #: Records by state and installed ones by upstream status (the metrics: a scrape
        #: must not walk a million records either).
        self._states: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[RelayedMitigation]:
        return iter(list(self._records.values()))

    def first(self, limit: int) -> list[RelayedMitigation]:
        """Up to ``limit`` records (the oldest first) without copying the whole table."""
        return list(itertools.islice(self._records.values(), max(0, limit)))

    def get(self, cuid: str, mid: int) -> RelayedMitigation | None:
        return self._records.get((cuid, mid))

    def of_cuid(self, cuid: str) -> list[RelayedMitigation]:
        return sorted((self._records[(cuid, mid)] for mid in self._by_cuid.get(cuid, ())),
                      key=lambda r: r.mid)

    def cuids(self) -> list[str]:
        return sorted(self._by_cuid)

    def active(self, now: float) -> bool:
        """Whether any relayed request is in force (the upstream session then uses the
        mitigating parameter set, RFC 9132 §4.5). Asked for every upstream message: looks
        only at the records in force, and stops at the first unexpired one (expired ones
        leave at the next ``expire``)."""
        for key in self._in_force:
            expires_at = self._records[key].expires_at
            if expires_at is None or expires_at > now:
                return True
        return False

    def is_mitigating(self, cuid: str, now: float) -> bool:
        # Unsorted and stopping at the first active one: it runs for every session of the
        # client on every timer sweep.
        for mid in self._by_cuid.get(cuid, ()):
            r = self._records[(cuid, mid)]
            if (r.confirmed and not r.withdrawing and (r.trigger_mitigation or r.activated_by_loss)
                    and (r.expires_at is None or r.expires_at > now)):
                return True
        return False

    # --- ownership (cuid collisions, RFC 9132 §4.4.1.1) ----------------------------------------

    def check_owner(self, cuid: str, credential: str) -> None:
        """Raise 4.09 (cuid-collision) when another client already uses ``cuid``.

        A client-domain gateway MUST resolve collisions itself, because the upstream server
        sees every client behind one credential; a server-domain one is RECOMMENDED to.
        """
        owner = self.owner_of(cuid)
        if owner is not None and owner != credential:
            raise ConflictingRequest(f"gateway: cuid {cuid} is in use by another DOTS client",
                                     ConflictInformation(ConflictCause.CUID_COLLISION))
        self._owners[cuid] = credential
        self._owners.move_to_end(cuid)
        while len(self._owners) > MAX_REMEMBERED_OWNERS:
            self._owners.popitem(last=False)

    def owner_of(self, cuid: str) -> str | None:
        mids = self._by_cuid.get(cuid)
        if mids:
            return self._records[(cuid, next(iter(mids)))].owner
        return self._owners.get(cuid)

    # --- changes -----------------------------------------------------------------------------

    def put(self, record: RelayedMitigation) -> None:
        previous = self._records.get(record.key)
        if previous is not None and previous is not record:
            self._count(previous, present=False)
        self._records[record.key] = record
        self._by_cuid.setdefault(record.cuid, set()).add(record.mid)
        self._changed.add(record.key)
        self._index(record)

    def touch(self, record: RelayedMitigation) -> None:
        """``record`` was changed in place: save it."""
        if self._records.get(record.key) is record:
            self._changed.add(record.key)
            self._index(record)

    def _index(self, record: RelayedMitigation) -> None:
        """Follow ``record``'s expiry and whether it is in force (see the class docstring)."""
        key = record.key
        self._count(record)
        self._set_in_force(key, record.confirmed and not record.withdrawing
                           and (record.trigger_mitigation or record.activated_by_loss))
        at = record.expires_at if record.confirmed else None
        if at is None:
            self._expiry_at.pop(key, None)  # its heap entry, if any, is dead now
        elif self._expiry_at.get(key) != at:
            self._expiry_at[key] = at
            heapq.heappush(self._expiry, (at, record.cuid, record.mid))
            if len(self._expiry) > max(_HEAP_SLACK_MIN, _HEAP_SLACK * len(self._expiry_at)):
                self._expiry = [(t, c, m) for (c, m), t in self._expiry_at.items()]
                heapq.heapify(self._expiry)

    def _set_in_force(self, key: tuple[str, int], in_force: bool) -> None:
        if in_force:
            if key not in self._in_force:
                self._in_force.add(key)
                self._in_force_of[key[0]] += 1
        elif key in self._in_force:
            self._in_force.discard(key)
            left = self._in_force_of[key[0]] - 1
            if left:
                self._in_force_of[key[0]] = left
            else:
                del self._in_force_of[key[0]]

    def _count(self, record: RelayedMitigation, *, present: bool = True) -> None:
        new = None
        if present:
            state = ("withdrawing" if record.withdrawing
                     else "installed" if record.confirmed else "pending")
            label = None
            if record.confirmed:
                label = record.status.label if record.status is not None else "unknown"
            new = _COUNTED.setdefault((state, label), (state, label))  # one tuple per kind
        old = record.counted
        if old == new:
            return
        if old is not None:
            self._states[old[0]] -= 1
            if old[1] is not None:
                self._statuses[old[1]] -= 1
        if new is not None:
            self._states[new[0]] += 1
            if new[1] is not None:
                self._statuses[new[1]] += 1
        record.counted = new

    def remove(self, cuid: str, mid: int) -> RelayedMitigation | None:
        record = self._records.pop((cuid, mid), None)
        if record is not None:
            self._count(record, present=False)
            self._set_in_force((cuid, mid), False)
            self._expiry_at.pop((cuid, mid), None)
            mids = self._by_cuid.get(cuid)
            if mids is not None:
                mids.discard(mid)
                if not mids:
                    del self._by_cuid[cuid]
            self._owners[cuid] = record.owner
            self._changed.add((cuid, mid))
        return record

    def accepted(self, record: RelayedMitigation, upstream: str, granted: int | None,
                 now: float) -> None:
        """The upstream server answered 2.01/2.04: the request is in force there."""
        lifetime = record.lifetime if granted is None else granted
        record.lifetime = lifetime
        record.expires_at = None if lifetime == INDEFINITE else now + lifetime
        record.confirmed = True
        record.upstream = upstream
        self.touch(record)

    def note_statuses(self, cuid: str, message: object) -> int:
        """An upstream answer or notification listing ``cuid``'s requests (a decoded
        ``MitigationScope``; anything else is ignored): keep each one's status for the
        metrics. Returns how many records were updated."""
        if not isinstance(message, MitigationScope):
            return 0
        noted = 0
        for scope in message.scope:
            record = (self._records.get((cuid, scope.mid)) if scope.mid is not None
                      else None)
            if record is not None and scope.status is not None:
                record.status = scope.status
                self._count(record)
                noted += 1
        return noted

    def note_status_payload(self, cuid: str, payload: bytes) -> int:
        """``note_statuses`` for a raw notification body (one that does not decode says
        nothing and changes nothing)."""
        if not payload:
            return 0
        try:
            message = decode_message(payload)
        except DotsProtocolError:
            return 0
        return self.note_statuses(cuid, message)

    def by_status(self) -> dict[str, int]:
        """Requests installed upstream by the status it last reported ('unknown' while it
        has said none yet); requests not accepted anywhere are not counted."""
        return {label: n for label, n in self._statuses.items() if n}

    def by_state(self) -> dict[str, int]:
        """Records by state: installed (accepted upstream), pending (in flight), withdrawing."""
        return {state: self._states[state] for state in ("installed", "pending", "withdrawing")}

    def in_force(self, now: float) -> int:
        """How many relayed requests are in force (``is_mitigating``'s test per record), at
        the cost of those whose expiry is due but not yet handled (``expire``), not of the
        table: the heap is walked only where it holds times <= ``now``."""
        return len(self._in_force) - len(self._due_in_force(now))

    def clients_in_force(self, now: float) -> int:
        """How many cuids have a relayed request in force (``is_mitigating`` true), at the
        same cost as ``in_force``."""
        due = Counter(cuid for cuid, _mid in self._due_in_force(now))
        return len(self._in_force_of) - sum(
            1 for cuid, n in due.items() if self._in_force_of[cuid] == n)

    def _due_in_force(self, now: float) -> set[tuple[str, int]]:
        """Records in force whose expiry is due but not yet handled: the heap is walked
        only where it holds times <= ``now``. A set: a record unconfirmed and confirmed
        again with the same expiry has two live heap entries."""
        heap, scheduled, stack = self._expiry, self._expiry_at, [0]
        due: set[tuple[str, int]] = set()
        while stack:
            i = stack.pop()
            if i < len(heap) and heap[i][0] <= now:
                at, cuid, mid = heap[i]
                if scheduled.get((cuid, mid)) == at and (cuid, mid) in self._in_force:
                    due.add((cuid, mid))
                stack += (2 * i + 1, 2 * i + 2)
        return due

    def expire(self, now: float) -> list[RelayedMitigation]:
        """Drop requests whose lifetime ran out (the upstream server drops them too). Costs
        what is due, not the table: a tick with nothing due looks at one heap entry."""
        gone = []
        heap, scheduled = self._expiry, self._expiry_at
        while heap and heap[0][0] <= now:
            at, cuid, mid = heapq.heappop(heap)
            if scheduled.get((cuid, mid)) != at:
                continue  # refreshed, removed or no longer confirmed since it was pushed
            del scheduled[(cuid, mid)]
            record = self.remove(cuid, mid)
            if record is not None:
                gone.append(record)
        return gone

    def next_expiry(self) -> float | None:
        heap, scheduled = self._expiry, self._expiry_at
        while heap and scheduled.get((heap[0][1], heap[0][2])) != heap[0][0]:
            heapq.heappop(heap)  # dead entries on top: drop them for good
        return heap[0][0] if heap else None

    def take_changes(self) -> list[tuple[tuple[str, int], RelayedMitigation | None]]:
        """Keys changed since the last call, with their record (None: removed)."""
        changed, self._changed = self._changed, set()
        return [(key, self._records.get(key)) for key in sorted(changed)]

    def restore(self, records: Iterable[RelayedMitigation]) -> None:
        """Load saved records (no change is recorded for them)."""
        for record in records:
            previous = self._records.get(record.key)
            if previous is not None and previous is not record:
                self._count(previous, present=False)
            self._records[record.key] = record
            self._by_cuid.setdefault(record.cuid, set()).add(record.mid)
            self._index(record)
