"""Signal-channel telemetry (RFC 9244): ``/tm-setup`` and ``/tm`` state and validation.

Pure core, like the mitigation store: it takes decoded bodies and returns response bodies,
codes and the changes to save; it never touches a socket, a clock or the disk. Telemetry
setup (telemetry configuration, total pipe capacity, baselines: §7) and pre-or-ongoing-
mitigation telemetry (§8) belong to a client (its cuid), not to a session, and have no
lifetime (§7: "valid till the DOTS server ceases to service a DOTS client domain").

Bodies stay CBOR objects (integer keys, as ``gateway.dots.codec`` keeps RFC 9244's keys:
opaque); this module checks what the RFC asks a server to check and keeps the rest whole,
so a GET returns what the client said (the checks and overlap rules are
``gateway.dots.telemetry_checks``). Changes are planned first (``plan_*``), saved by the
caller, then ``apply``-ed: a success code leaves only after the durable write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from gateway.dots.codec import (
    decimal_from_cbor,
    decimal_to_cbor,
    decode_cbor,
    encode_cbor,
    extension_tree_from_json,
    extension_value_from_json,
    tree_from_cbor,
    tree_to_json,
)
from gateway.dots.codes import Code, ConflictCause
from gateway.dots.errors import (
    DotsProtocolError,
    InvalidValue,
    MalformedPayload,
    MissingAttribute,
    NotFound,
    ServiceUnavailable,
    UnacceptableConfig,
)
from gateway.dots.message import DotsResponse
from gateway.dots.model import PortRange, Scope, parse_prefix
from gateway.dots.telemetry_checks import (
    ALIAS,
    BASELINE,
    BASELINE_KIND,
    CONFIG,
    CURRENT_CONFIG,
    FQDN,
    HIGH,
    INTERVAL,
    LOW,
    LOWER_PORT,
    MAX_CONFIG,
    MID_P,
    MIN_CONFIG,
    NOTIFY_INTERVAL,
    PIPE,
    PIPE_KIND,
    PORTS,
    PRE,
    PREFIX,
    PROTOCOL,
    QUERY_TYPE,
    SAMPLE,
    SCOPE_TELEMETRY,
    SERVER_ORIGINATED,
    SETUP_KIND,
    SETUP_MESSAGE,
    TARGET,
    TARGET_KEYS,
    TELEMETRY,
    TELEMETRY_MESSAGE,
    TMID,
    TSID,
    UNIT,
    UNIT_CLASSES,
    UNIT_CONFIG,
    UNIT_STATUS,
    UPPER_PORT,
    URI,
    check_baseline,
    check_bounded,
    check_pipe,
    check_targets,
    check_units,
    setups_overlap,
    stored_pipe,
    targets_overlap,
    without_overlap,
)

#: Per client: beyond these a PUT of a new id is answered 5.03 (§8.3 lets a server restrict
#: them); a well-behaved client needs a handful (§7.2.1, §7.3.1 ask it to reuse one).
MAX_SETUPS = 64
MAX_PRE_MITIGATION = 256
_RETRY_AFTER = 60


@dataclass(frozen=True, slots=True)
class Limits:
    """What this server accepts in 'current-config' (answered in a GET of ``/tm-setup``)."""

    max_interval: int = 7  # month (RFC 9244 'interval')
    min_interval: int = 1  # 5-minutes
    max_sample: int = 8  # hour
    min_sample: int = 1  # second
    max_percentile: Decimal = Decimal("100.00")
    min_percentile: Decimal = Decimal("0.00")
    max_notify_interval: int = 3600
    min_notify_interval: int = 1
    #: We relay and keep telemetry; we detect nothing ourselves (§7.1.1).
    server_originated: bool = False


#: §7.1.2: 10th, 50th and 90th percentiles unless the client configures others.
DEFAULT_CONFIG: dict[int, Any] = {
    LOW: decimal_to_cbor(Decimal("10.00")),
    MID_P: decimal_to_cbor(Decimal("50.00")),
    HIGH: decimal_to_cbor(Decimal("90.00")),
    SERVER_ORIGINATED: False,
}


class TelemetryConflict(DotsProtocolError):
    """4.09: a newer request of the client already covers this one (lower tsid/tmid)."""

    code = Code.CONFLICT


#: Keys of RFC 9132's conflict-information, as they stand inside a telemetry entry.
_CONFLICT_INFORMATION, _CONFLICT_STATUS, _CONFLICT_CAUSE = 17, 18, 19
#: RFC 9132 §10.6.3 value 1: this request is not installed, the other one stays.
_REQUEST_INACTIVE_OTHER_ACTIVE = 1


class DomainConflict(TelemetryConflict):
    """4.09: another client of the same domain already installed this pipe or baseline
    (RFC 9244 §7.2, §7.3). Unlike a stale tsid of the same client, the RFC asks for the
    conflict-information in the body (application/dots+cbor), in the telemetry entry of
    the refused tsid, as go-dots sends it; the diagnostic goes to the log only."""

    def __init__(self, diagnostic: str, tsid: int, cause: ConflictCause) -> None:
        super().__init__(diagnostic)
        self.tsid = tsid
        self.cause = cause

    def to_response(self) -> DotsResponse:
        info = {_CONFLICT_STATUS: _REQUEST_INACTIVE_OTHER_ACTIVE,
                _CONFLICT_CAUSE: int(self.cause)}
        body = _setup_message({}, [{TSID: self.tsid, _CONFLICT_INFORMATION: info}])
        return DotsResponse.with_body(self.code, body)


# --- decoding -------------------------------------------------------------------------------


def decode_body(payload: bytes, kind: int) -> Mapping[int, Any]:
    """A request body -> the container under ``kind`` (203 or 208); 4.00 otherwise."""
    if not payload:
        raise MalformedPayload("a telemetry PUT needs a body (RFC 9244 §7.1.2, §8.2)")
    tree = tree_from_cbor(decode_cbor(payload), kinds=frozenset({kind}))
    node = tree[kind]
    if not isinstance(node, dict):
        raise MalformedPayload("the telemetry container must be a map")
    return node


def body_to_json(payload: bytes) -> dict[str, Any]:
    """A telemetry body (setup or telemetry) in the RFC's JSON notation."""
    tree = tree_from_cbor(decode_cbor(payload), kinds=frozenset({SETUP_MESSAGE,
                                                                  TELEMETRY_MESSAGE}))
    return tree_to_json(tree)


def body_from_json(obj: Any) -> bytes:
    """JSON in the RFC's notation -> a telemetry body (for ``dots-client telemetry``)."""
    # The same check a server makes: exactly one telemetry container at the top.
    tree = extension_tree_from_json(obj, frozenset({SETUP_MESSAGE, TELEMETRY_MESSAGE}))
    return encode_cbor(tree)


def scope_telemetry(extensions: Iterable[tuple[int, Any]]) -> dict[int, Any]:
    """The RFC 9244 §9.1 attributes of a mitigation request or efficacy update."""
    return {key: value for key, value in extensions if key in SCOPE_TELEMETRY}


def scope_telemetry_json(extensions: Iterable[tuple[int, Any]]) -> dict[str, Any]:
    return tree_to_json(scope_telemetry(extensions))


def scope_telemetry_from_json(obj: Any) -> tuple[tuple[int, Any], ...]:
    """A JSON object of §8.1 attributes as they stand in a mitigation request's scope
    (``"ietf-dots-telemetry:total-attack-traffic": [...]``...) -> scope extensions."""
    if not isinstance(obj, dict) or not obj:
        raise MalformedPayload("expected a JSON object of telemetry attributes")
    out = []
    for name, value in obj.items():
        key, cbor = extension_value_from_json(name, value)
        if key not in SCOPE_TELEMETRY:
            raise MalformedPayload(f"{name!r} is not a telemetry attribute of a mitigation "
                                   "request (RFC 9244 §8.1: ietf-dots-telemetry:total-traffic, "
                                   "total-attack-traffic, total-attack-connection, "
                                   "attack-detail)")
        out.append((key, cbor))
    return tuple(out)


# --- state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """One installed ``tsid``: a 'telemetry' list entry without its tsid."""

    kind: str
    entry: Mapping[int, Any]
    cdid: str | None = None
    #: The client domain it belongs to, for conflicts between clients (``plan_setup_put``);
    #: None for rows saved before it was kept: then compared with none.
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class PreMitigation:
    """One active ``tmid``: a 'pre-or-ongoing-mitigation' entry without its tmid."""

    entry: Mapping[int, Any]
    cdid: str | None = None


@dataclass
class ClientTelemetry:
    setups: dict[int, Setup] = field(default_factory=dict)
    pre: dict[int, PreMitigation] = field(default_factory=dict)

    def copy(self) -> ClientTelemetry:
        return ClientTelemetry(dict(self.setups), dict(self.pre))


@dataclass(frozen=True, slots=True)
class Change:
    """One row to write: kind ``setup`` (ident tsid) or ``tm`` (ident tmid); body None:
    delete. The body is the CBOR of the entry, ``entry_from_row`` reads it back."""

    cuid: str
    kind: str
    ident: int
    cdid: str | None
    body: bytes | None
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A change computed but not applied: ``apply`` it once ``changes`` are saved."""

    cuid: str
    state: ClientTelemetry
    changes: tuple[Change, ...]
    code: Code
    #: The targets the PUT names (its 'target', its baselines' targets), as scopes, for the
    #: same authorization as a mitigation request's (the client's own prefixes and names).
    targets: tuple[Scope, ...] = ()


class TelemetryStore:
    """Every client's telemetry setup and pre-or-ongoing-mitigation telemetry."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.clients: dict[str, ClientTelemetry] = {}

    def _client(self, cuid: str) -> ClientTelemetry:
        return self.clients.get(cuid) or ClientTelemetry()

    def apply(self, plan: Plan) -> None:
        if plan.state.setups or plan.state.pre:
            self.clients[plan.cuid] = plan.state
        else:
            self.clients.pop(plan.cuid, None)

    # --- /tm-setup ---------------------------------------------------------------------------

    def plan_setup_put(self, cuid: str, tsid: int, payload: bytes,
                       cdid: str | None = None, domain: str | None = None) -> Plan:
        """PUT /tm-setup/cuid/tsid (§7.1.2, §7.2.1, §7.3.1): 2.01 for a new tsid, 2.04.
        ``domain`` names the client's domain (the server core passes the cdid a trusted
        gateway gave, else the credential of the session: every client behind a
        client-domain gateway shares the gateway's); default: the cdid."""
        domain = domain if domain is not None else cdid
        node = decode_body(payload, SETUP_MESSAGE)
        kind, entry = self._checked_setup(node)
        old = self._client(cuid)
        state = old.copy()
        changes: list[Change] = []
        for other_tsid, other in sorted(old.setups.items()):
            if other_tsid == tsid or other.kind != kind:
                continue
            if not setups_overlap(kind, entry, other.entry):
                continue
            if other_tsid > tsid:
                raise TelemetryConflict(
                    f"tsid {tsid} is older than the installed tsid {other_tsid} with the same "
                    f"{kind} scope: tsid values increase with each new setup (RFC 9244 §7.1.2)")
            remaining = without_overlap(kind, other.entry, entry)
            if remaining is None:  # §7.1.2: the lower tsid MUST be deleted
                del state.setups[other_tsid]
                changes.append(Change(cuid, "setup", other_tsid, other.cdid, None))
            else:
                state.setups[other_tsid] = Setup(kind, remaining, other.cdid, other.domain)
                changes.append(Change(cuid, "setup", other_tsid, other.cdid,
                                      encode_cbor(remaining), other.domain))
        if domain is not None and kind != CONFIG:
            self._check_domain(cuid, tsid, kind, entry, domain)
        created = tsid not in old.setups
        if created and len(state.setups) >= MAX_SETUPS:
            raise ServiceUnavailable(f"this client has {len(state.setups)} telemetry setups, "
                                     f"the limit; reuse or delete a tsid", _RETRY_AFTER)
        stored = stored_pipe(entry) if kind == PIPE_KIND else entry
        state.setups[tsid] = Setup(kind, stored, cdid, domain)
        changes.append(Change(cuid, "setup", tsid, cdid, encode_cbor(stored), domain))
        targets = tuple(target_scope(item) for item in entry.get(BASELINE, ())
                        if any(key in TARGET_KEYS for key in item))
        return Plan(cuid, state, tuple(changes), Code.CREATED if created else Code.CHANGED,
                    targets)

    def _check_domain(self, cuid: str, tsid: int, kind: str, entry: Mapping[int, Any],
                      domain: str) -> None:
        """RFC 9244 §7.2.1/§7.3.1: a pipe (same link-id) or baseline (same id or an
        overlapping target) that another client of the same domain installed is refused
        with 4.09, not replaced: the higher-tsid rule holds within one client only.
        Clients are of one domain when their cdid (RFC 9132 §4.4.1.2: what a server-domain
        gateway says of its client's domain) or, without one, the credential they came
        with (a client-domain gateway's, shared by every client behind it) is the same."""
        for other_cuid, other_client in sorted(self.clients.items()):
            if other_cuid == cuid:
                continue
            for other_tsid, other in sorted(other_client.setups.items()):
                if other.domain != domain or other.kind != kind:
                    continue
                if not setups_overlap(kind, entry, other.entry):
                    continue
                cause = (ConflictCause.OVERLAPPING_PIPES if kind == PIPE_KIND
                         else ConflictCause.OVERLAPPING_TARGETS)
                raise DomainConflict(
                    f"{kind} of tsid {tsid} overlaps tsid {other_tsid} of client "
                    f"{other_cuid} of the same client domain: "
                    f"{cause.label} (RFC 9244 §7.2, §7.3)", tsid, cause)

    def plan_setup_delete(self, cuid: str, tsid: int | None) -> Plan:
        """DELETE one tsid (§7.1.4) or all of them (§7.4): 2.02 even when there was none."""
        old = self._client(cuid)
        state = old.copy()
        doomed = list(old.setups) if tsid is None else [t for t in old.setups if t == tsid]
        changes = []
        for t in doomed:
            changes.append(Change(cuid, "setup", t, old.setups[t].cdid, None))
            del state.setups[t]
        return Plan(cuid, state, tuple(changes), Code.DELETED)

    def setup_body(self, cuid: str, tsid: int | None) -> bytes:
        """GET /tm-setup: capabilities and everything installed (§7.1.1), or one tsid
        (§7.1.3, 4.04 when unknown)."""
        setups = self._client(cuid).setups
        if tsid is not None:
            if tsid not in setups:
                raise NotFound(f"no telemetry setup with tsid {tsid} (RFC 9244 §7.1.3)")
            return _setup_message({}, [{TSID: tsid, **setups[tsid].entry}])
        entries = [{TSID: t, **s.entry} for t, s in sorted(setups.items())]
        if not any(s.kind == CONFIG for s in setups.values()):
            entries.insert(0, {CURRENT_CONFIG: dict(DEFAULT_CONFIG)})
        return _setup_message(self.capabilities(), entries)

    def capabilities(self) -> dict[int, Any]:
        limits = self.limits
        return {
            MAX_CONFIG: {INTERVAL: limits.max_interval, SAMPLE: limits.max_sample,
                         LOW: decimal_to_cbor(limits.max_percentile),
                         MID_P: decimal_to_cbor(limits.max_percentile),
                         HIGH: decimal_to_cbor(limits.max_percentile),
                         SERVER_ORIGINATED: limits.server_originated,
                         NOTIFY_INTERVAL: limits.max_notify_interval},
            MIN_CONFIG: {INTERVAL: limits.min_interval, SAMPLE: limits.min_sample,
                         LOW: decimal_to_cbor(limits.min_percentile),
                         MID_P: decimal_to_cbor(limits.min_percentile),
                         HIGH: decimal_to_cbor(limits.min_percentile),
                         NOTIFY_INTERVAL: limits.min_notify_interval},
            # packet-ps, bit-ps, byte-ps: all accepted (RFC 9244 'unit-class').
            UNIT_CLASSES: {UNIT_CONFIG: [{UNIT: u, UNIT_STATUS: True} for u in (1, 2, 3)]},
        }

    def _checked_setup(self, node: Mapping[int, Any]) -> tuple[str, dict[int, Any]]:
        for key in (MAX_CONFIG, MIN_CONFIG, UNIT_CLASSES, QUERY_TYPE):
            if key in node:
                raise InvalidValue(f"key {key} is server-to-client only (RFC 9244 §7.1.1)")
        entries = node.get(TELEMETRY)
        if not isinstance(entries, list) or not entries:
            raise MissingAttribute("telemetry-setup needs a non-empty 'telemetry' list")
        if len(entries) != 1:
            raise InvalidValue("one 'telemetry' entry per tsid: its setup type names what the "
                               "tsid installs (RFC 9244 §7)")
        entry = entries[0]
        if not isinstance(entry, dict):
            raise MalformedPayload("a 'telemetry' entry must be a map")
        if TSID in entry:
            raise InvalidValue("'tsid' must not appear in the body of a PUT (RFC 9244 §7.1.2)")
        kinds = [key for key in entry if key in SETUP_KIND]
        if len(kinds) != 1:
            raise InvalidValue(
                "a telemetry setup carries exactly one of current-config, total-pipe-capacity "
                f"or baseline (RFC 9244 §7: a mix is refused); found {len(kinds)}")
        kind = SETUP_KIND[kinds[0]]
        if kind == CONFIG:
            self._check_config(entry[CURRENT_CONFIG])
        elif kind == PIPE_KIND:
            check_pipe(entry[PIPE])
        else:
            check_baseline(entry[BASELINE])
        return kind, dict(entry)

    def _check_config(self, config: Any) -> None:
        limits = self.limits
        if not isinstance(config, dict) or not config:
            raise MissingAttribute("current-config needs at least one attribute (RFC 9244 "
                                   "§7.1.2)")
        check_bounded(config, INTERVAL, "measurement-interval", limits.min_interval,
                 limits.max_interval)
        check_bounded(config, SAMPLE, "measurement-sample", limits.min_sample, limits.max_sample)
        check_bounded(config, NOTIFY_INTERVAL, "telemetry-notify-interval",
                 limits.min_notify_interval, limits.max_notify_interval)
        percentiles = {}
        for key, name in ((LOW, "low-percentile"), (MID_P, "mid-percentile"),
                          (HIGH, "high-percentile")):
            if key in config:
                value = decimal_from_cbor(config[key], name)
                if not limits.min_percentile <= value <= limits.max_percentile:
                    raise UnacceptableConfig(
                        f"{name} {value} is outside {limits.min_percentile}-"
                        f"{limits.max_percentile} (RFC 9244 §7.1.2)")
                percentiles[key] = value
        ordered = [percentiles[k] for k in (LOW, MID_P, HIGH) if k in percentiles]
        # §7.1.2: equal values disable the upper one, '0.00' disables low; never decreasing.
        nonzero = [v for v in ordered if v]
        if nonzero != sorted(nonzero):
            raise InvalidValue("low-percentile <= mid-percentile <= high-percentile, unless "
                               "disabled with 0.00 (RFC 9244 §7.1.2)")
        if SERVER_ORIGINATED in config:
            if type(config[SERVER_ORIGINATED]) is not bool:
                raise MalformedPayload("server-originated-telemetry must be a boolean")
            if config[SERVER_ORIGINATED] and not limits.server_originated:
                raise UnacceptableConfig("this server does not originate telemetry "
                                         "(max-config-values says so; RFC 9244 §7.1.1)")
        if UNIT_CONFIG in config:
            check_units(config[UNIT_CONFIG])

    # --- /tm ---------------------------------------------------------------------------------

    def plan_tm_put(self, cuid: str, tmid: int, payload: bytes,
                    cdid: str | None = None) -> Plan:
        """PUT /tm/cuid/tmid (§8.2): 2.04; a lower tmid with an overlapping target is
        replaced, a higher one makes this request stale (4.09)."""
        node = decode_body(payload, TELEMETRY_MESSAGE)
        entries = node.get(PRE)
        if not isinstance(entries, list) or not entries:
            raise MissingAttribute("telemetry needs a non-empty 'pre-or-ongoing-mitigation' "
                                   "list (RFC 9244 §8.2)")
        if len(entries) != 1:
            raise InvalidValue("one 'pre-or-ongoing-mitigation' entry per tmid (RFC 9244 §8.2)")
        entry = entries[0]
        if not isinstance(entry, dict):
            raise MalformedPayload("a 'pre-or-ongoing-mitigation' entry must be a map")
        if TMID in entry:
            raise InvalidValue("'tmid' must not appear in the body of a PUT (RFC 9244 §8.2)")
        target = entry.get(TARGET)
        if not isinstance(target, dict) or not target:
            raise MissingAttribute("a pre-or-ongoing-mitigation entry needs a 'target' "
                                   "(RFC 9244 §8.2)")
        check_targets(target, "target", allow_mid_list=True)
        old = self._client(cuid)
        state = old.copy()
        changes: list[Change] = []
        for other_tmid, other in sorted(old.pre.items()):
            if other_tmid == tmid or not targets_overlap(target, other.entry[TARGET]):
                continue
            if other_tmid > tmid:
                raise TelemetryConflict(
                    f"tmid {tmid} is older than the active tmid {other_tmid} with an "
                    "overlapping target (RFC 9244 §8.2: the higher tmid wins)")
            del state.pre[other_tmid]  # §8.2: the lower tmid MUST be deleted
            changes.append(Change(cuid, "tm", other_tmid, other.cdid, None))
        if tmid not in old.pre and len(state.pre) >= MAX_PRE_MITIGATION:
            raise ServiceUnavailable(f"this client has {len(state.pre)} active tmids, the "
                                     "limit; delete some first", _RETRY_AFTER)
        state.pre[tmid] = PreMitigation(dict(entry), cdid)
        changes.append(Change(cuid, "tm", tmid, cdid, encode_cbor(dict(entry))))
        scopes = (target_scope(target),) if any(key in TARGET_KEYS for key in target) else ()
        return Plan(cuid, state, tuple(changes), Code.CHANGED, scopes)  # §8.2: 2.04

    def plan_tm_delete(self, cuid: str, tmid: int | None) -> Plan:
        """DELETE one tmid, or all of them without one (§8.2): 2.02."""
        old = self._client(cuid)
        state = old.copy()
        doomed = list(old.pre) if tmid is None else [t for t in old.pre if t == tmid]
        changes = []
        for t in doomed:
            changes.append(Change(cuid, "tm", t, old.pre[t].cdid, None))
            del state.pre[t]
        return Plan(cuid, state, tuple(changes), Code.DELETED)

    def tm_body(self, cuid: str, tmid: int | None) -> bytes:
        """GET /tm: one tmid (4.04 when unknown, §10) or all the client's (maybe none)."""
        pre = self._client(cuid).pre
        if tmid is not None:
            if tmid not in pre:
                raise NotFound(f"no active telemetry with tmid {tmid} (RFC 9244 §10)")
            chosen = [(tmid, pre[tmid])]
        else:
            chosen = sorted(pre.items())
        entries = [{TMID: t, **p.entry} for t, p in chosen]
        return encode_cbor({TELEMETRY_MESSAGE: {PRE: entries}})

    # --- persistence -------------------------------------------------------------------------

    def restore(self, rows: Iterable[tuple[str, str, int, str | None, bytes, str | None]]
                ) -> int:
        """Load saved rows (cuid, kind, ident, cdid, body, domain); returns how many were
        kept. A row that no longer decodes raises ``DotsProtocolError`` for the caller to
        skip."""
        count = 0
        for cuid, kind, ident, cdid, body, domain in rows:
            entry = decode_cbor(body)
            if not isinstance(entry, dict):
                raise MalformedPayload(f"saved telemetry {kind} {ident} is not a map")
            client = self.clients.setdefault(cuid, ClientTelemetry())
            if kind == "setup":
                kinds = [SETUP_KIND[k] for k in entry if k in SETUP_KIND]
                if len(kinds) != 1:
                    raise MalformedPayload(f"saved telemetry setup {ident} has no setup type")
                client.setups[ident] = Setup(kinds[0], entry, cdid, domain)
            else:
                client.pre[ident] = PreMitigation(entry, cdid)
            count += 1
        return count


def telemetry_counts(store: TelemetryStore) -> dict[tuple[str, ...], float]:
    """Setups by kind and active tmids, every label present (a gauge that reads 0 rather
    than vanishing when the last one goes)."""
    counts = dict.fromkeys((CONFIG, PIPE_KIND, BASELINE_KIND, "pre-mitigation"), 0.0)
    for client in store.clients.values():
        for setup in client.setups.values():
            counts[setup.kind] += 1
        counts["pre-mitigation"] += len(client.pre)
    return {(kind,): n for kind, n in counts.items()}


def target_scope(node: Mapping[int, Any]) -> Scope:
    """The RFC 9132 targets of a telemetry 'target' or baseline entry (checked already), as
    a scope: its constructor refuses what a mitigation request may not name (4.00)."""
    ports = tuple(PortRange(p[LOWER_PORT], p.get(UPPER_PORT)) for p in node.get(PORTS, ()))
    return Scope(target_prefix=tuple(parse_prefix(p) for p in node.get(PREFIX, ())),
                 target_port_range=ports,
                 target_protocol=tuple(node.get(PROTOCOL, ())),
                 target_fqdn=tuple(node.get(FQDN, ())), target_uri=tuple(node.get(URI, ())),
                 alias_name=tuple(node.get(ALIAS, ())))


# --- rendering -------------------------------------------------------------------------------


def _setup_message(head: Mapping[int, Any], entries: list[dict[int, Any]]) -> bytes:
    return encode_cbor({SETUP_MESSAGE: {**head, TELEMETRY: entries}})
