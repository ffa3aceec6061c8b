"""Signal-channel telemetry (RFC 9244): ``/tm-setup`` and ``/tm`` state and validation.

Pure core, like the mitigation store: it takes decoded bodies and returns response bodies,
codes and the changes to save; it never touches a socket, a clock or the disk. Telemetry
setup (telemetry configuration, total pipe capacity, baselines: §7) and pre-or-ongoing-
mitigation telemetry (§8) belong to a client (its cuid), not to a session, and have no
lifetime (§7: "valid till the DOTS server ceases to service a DOTS client domain").

Bodies stay CBOR objects (integer keys, as ``gateway.dots.codec`` keeps RFC 9244's keys:
opaque); this module checks what the RFC asks a server to check and keeps the rest whole,
so a GET returns what the client said. Changes are planned first (``plan_*``), saved by the
caller, then ``apply``-ed: a success code leaves only after the durable write.
"""

from __future__ import annotations

import ipaddress
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
from gateway.dots.codes import Code
from gateway.dots.errors import (
    DotsProtocolError,
    InvalidValue,
    MalformedPayload,
    MissingAttribute,
    NotFound,
    ServiceUnavailable,
    UnacceptableConfig,
)

# RFC 9244 Table 3 keys (gateway.dots.keys has the whole table).
TSID, TELEMETRY, LOW, MID_P, HIGH = 128, 129, 130, 131, 132
UNIT_CONFIG, UNIT, UNIT_STATUS, PIPE, LINK_ID, PRE = 133, 134, 135, 136, 137, 138
ID, BASELINE, CURRENT_CONFIG, MAX_CONFIG, MIN_CONFIG, UNIT_CLASSES = 163, 174, 175, 176, 177, 178
SERVER_ORIGINATED, NOTIFY_INTERVAL, TMID, INTERVAL, SAMPLE = 179, 180, 181, 182, 183
MID_LIST, TARGET, CAPACITY, QUERY_TYPE = 186, 189, 190, 201
SETUP_MESSAGE, TELEMETRY_MESSAGE = 203, 208
# Mitigation-request and efficacy-update telemetry in a scope entry (§9.1).
SCOPE_TELEMETRY = frozenset({204, 205, 206, 207})
# RFC 9132 target keys, reused inside 'target' and 'baseline' (§7.3, §8.1.1).
_PREFIX, _PORTS, _LOWER, _UPPER, _PROTOCOL, _FQDN, _URI, _ALIAS = 6, 7, 8, 9, 10, 11, 12, 13
_TARGET_KEYS = frozenset({_PREFIX, _PORTS, _PROTOCOL, _FQDN, _URI, _ALIAS})

CONFIG, PIPE_KIND, BASELINE_KIND = "telemetry-config", "pipe", "baseline"
_SETUP_KIND = {CURRENT_CONFIG: CONFIG, PIPE: PIPE_KIND, BASELINE: BASELINE_KIND}

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
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


@dataclass(frozen=True, slots=True)
class Plan:
    """A change computed but not applied: ``apply`` it once ``changes`` are saved."""

    cuid: str
    state: ClientTelemetry
    changes: tuple[Change, ...]
    code: Code


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
                       cdid: str | None = None) -> Plan:
        """PUT /tm-setup/cuid/tsid (§7.1.2, §7.2.1, §7.3.1): 2.01 for a new tsid, 2.04."""
        node = decode_body(payload, SETUP_MESSAGE)
        kind, entry = self._checked_setup(node)
        old = self._client(cuid)
        state = old.copy()
        changes: list[Change] = []
        for other_tsid, other in sorted(old.setups.items()):
            if other_tsid == tsid or other.kind != kind:
                continue
            if not _setups_overlap(kind, entry, other.entry):
                continue
            if other_tsid > tsid:
                raise TelemetryConflict(
                    f"tsid {tsid} is older than the installed tsid {other_tsid} with the same "
                    f"{kind} scope: tsid values increase with each new setup (RFC 9244 §7.1.2)")
            remaining = _without_overlap(kind, other.entry, entry)
            if remaining is None:  # §7.1.2: the lower tsid MUST be deleted
                del state.setups[other_tsid]
                changes.append(Change(cuid, "setup", other_tsid, other.cdid, None))
            else:
                state.setups[other_tsid] = Setup(kind, remaining, other.cdid)
                changes.append(Change(cuid, "setup", other_tsid, other.cdid,
                                      encode_cbor(remaining)))
        created = tsid not in old.setups
        if created and len(state.setups) >= MAX_SETUPS:
            raise ServiceUnavailable(f"this client has {len(state.setups)} telemetry setups, "
                                     f"the limit; reuse or delete a tsid", _RETRY_AFTER)
        stored = stored_pipe(entry) if kind == PIPE_KIND else entry
        state.setups[tsid] = Setup(kind, stored, cdid)
        changes.append(Change(cuid, "setup", tsid, cdid, encode_cbor(stored)))
        return Plan(cuid, state, tuple(changes), Code.CREATED if created else Code.CHANGED)

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
        kinds = [key for key in entry if key in _SETUP_KIND]
        if len(kinds) != 1:
            raise InvalidValue(
                "a telemetry setup carries exactly one of current-config, total-pipe-capacity "
                f"or baseline (RFC 9244 §7: a mix is refused); found {len(kinds)}")
        kind = _SETUP_KIND[kinds[0]]
        if kind == CONFIG:
            self._check_config(entry[CURRENT_CONFIG])
        elif kind == PIPE_KIND:
            _check_pipe(entry[PIPE])
        else:
            _check_baseline(entry[BASELINE])
        return kind, dict(entry)

    def _check_config(self, config: Any) -> None:
        limits = self.limits
        if not isinstance(config, dict) or not config:
            raise MissingAttribute("current-config needs at least one attribute (RFC 9244 "
                                   "§7.1.2)")
        _bounded(config, INTERVAL, "measurement-interval", limits.min_interval,
                 limits.max_interval)
        _bounded(config, SAMPLE, "measurement-sample", limits.min_sample, limits.max_sample)
        _bounded(config, NOTIFY_INTERVAL, "telemetry-notify-interval",
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
            _check_units(config[UNIT_CONFIG])

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
        _check_targets(target, "target", allow_mid_list=True)
        old = self._client(cuid)
        state = old.copy()
        changes: list[Change] = []
        for other_tmid, other in sorted(old.pre.items()):
            if other_tmid == tmid or not _targets_overlap(target, other.entry[TARGET]):
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
        return Plan(cuid, state, tuple(changes), Code.CHANGED)  # §8.2: 2.04

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

    def restore(self, rows: Iterable[tuple[str, str, int, str | None, bytes]]) -> int:
        """Load saved rows (cuid, kind, ident, cdid, body); returns how many were kept.
        A row that no longer decodes raises ``DotsProtocolError`` for the caller to skip."""
        count = 0
        for cuid, kind, ident, cdid, body in rows:
            entry = decode_cbor(body)
            if not isinstance(entry, dict):
                raise MalformedPayload(f"saved telemetry {kind} {ident} is not a map")
            client = self.clients.setdefault(cuid, ClientTelemetry())
            if kind == "setup":
                kinds = [_SETUP_KIND[k] for k in entry if k in _SETUP_KIND]
                if len(kinds) != 1:
                    raise MalformedPayload(f"saved telemetry setup {ident} has no setup type")
                client.setups[ident] = Setup(kinds[0], entry, cdid)
            else:
                client.pre[ident] = PreMitigation(entry, cdid)
            count += 1
        return count


# --- checks ---------------------------------------------------------------------------------


def _setup_message(head: Mapping[int, Any], entries: list[dict[int, Any]]) -> bytes:
    return encode_cbor({SETUP_MESSAGE: {**head, TELEMETRY: entries}})


def _uint(value: Any, name: str, bound: int = _UINT32_MAX) -> int:
    if type(value) is not int or not 0 <= value <= bound:
        raise MalformedPayload(f"{name} must be an unsigned integer <= {bound}")
    return value


def _bounded(config: Mapping[int, Any], key: int, name: str, low: int, high: int) -> None:
    if key not in config:
        return
    value = _uint(config[key], name, 2**16 - 1)
    if not low <= value <= high:
        raise UnacceptableConfig(f"{name} {value} is outside {low}-{high} (RFC 9244 §7.1.2)")


def _check_units(units: Any) -> None:
    if not isinstance(units, list) or not units:
        raise MalformedPayload("unit-config must be a non-empty list")
    seen: dict[int, bool] = {}
    for item in units:
        if not isinstance(item, dict) or UNIT not in item or UNIT_STATUS not in item:
            raise MissingAttribute("a unit-config entry needs 'unit' and 'unit-status'")
        unit = _uint(item[UNIT], "unit")
        if unit not in (1, 2, 3):
            raise InvalidValue(f"unit-config unit {unit} is not a unit class (packet-ps 1, "
                               "bit-ps 2, byte-ps 3)")
        if type(item[UNIT_STATUS]) is not bool:
            raise MalformedPayload("unit-status must be a boolean")
        if seen.get(unit, item[UNIT_STATUS]) != item[UNIT_STATUS]:
            raise InvalidValue(f"unit-config gives unit {unit} conflicting statuses "
                               "(RFC 9244 §7.1.2)")
        seen[unit] = item[UNIT_STATUS]


def _check_pipe(links: Any) -> None:
    if not isinstance(links, list) or not links:
        raise MissingAttribute("total-pipe-capacity needs at least one link")
    keys = set()
    for link in links:
        if not isinstance(link, dict):
            raise MalformedPayload("a total-pipe-capacity entry must be a map")
        for key, name in ((LINK_ID, "link-id"), (CAPACITY, "capacity"), (UNIT, "unit")):
            if key not in link:
                raise MissingAttribute(f"a total-pipe-capacity entry needs '{name}' "
                                       "(RFC 9244 §7.2)")
        if not isinstance(link[LINK_ID], str) or not link[LINK_ID]:
            raise InvalidValue("link-id must be a non-empty string")
        _uint(link[CAPACITY], "capacity", _UINT64_MAX)
        _uint(link[UNIT], "unit")
        key = (link[LINK_ID], link[UNIT])
        if key in keys:
            raise InvalidValue(f"link {link[LINK_ID]!r} is listed twice with the same unit")
        keys.add(key)
    if all(link[CAPACITY] == 0 for link in links):
        # §7.2.1: deleting every link is a DELETE, not a PUT of zeros.
        raise InvalidValue("every link has capacity 0; use DELETE to remove all links "
                           "(RFC 9244 §7.2.1)")


def _check_baseline(baselines: Any) -> None:
    if not isinstance(baselines, list) or not baselines:
        raise MissingAttribute("baseline needs at least one entry")
    ids = set()
    for item in baselines:
        if not isinstance(item, dict) or ID not in item:
            raise MissingAttribute("a baseline entry needs its 'id' (RFC 9244 §7.3)")
        ident = _uint(item[ID], "baseline id")
        if ident in ids:
            raise InvalidValue(f"baseline id {ident} is listed twice")
        ids.add(ident)
        _check_targets(item, "baseline", allow_mid_list=False, required=False)


def _check_targets(node: Mapping[int, Any], where: str, *, allow_mid_list: bool,
                   required: bool = True) -> None:
    present = [k for k in node if k in _TARGET_KEYS or (allow_mid_list and k == MID_LIST)]
    if required and not present:
        raise MissingAttribute(f"{where} names no target (target-prefix, target-port-range, "
                               "target-protocol, target-fqdn, target-uri, alias-name or "
                               "mid-list)")
    for key in present:
        values = node[key]
        if not isinstance(values, list) or not values:
            raise InvalidValue(f"{where}: key {key} must be a non-empty list (RFC 9244 §5.3)")
    for text in node.get(_PREFIX, ()):
        _network(text, where)
    for key in (_FQDN, _URI, _ALIAS):
        for text in node.get(key, ()):
            if not isinstance(text, str) or not text:
                raise InvalidValue(f"{where}: key {key} values must be non-empty strings")
    for ident in node.get(MID_LIST, ()) if allow_mid_list else ():
        _uint(ident, f"{where}: mid-list value")
    for protocol in node.get(_PROTOCOL, ()):
        _uint(protocol, f"{where}: target-protocol value", 255)
    for ports in node.get(_PORTS, ()):
        if not isinstance(ports, dict) or _LOWER not in ports:
            raise InvalidValue(f"{where}: a target-port-range entry needs lower-port")
        lower = _uint(ports[_LOWER], f"{where}: lower-port", 2**16 - 1)
        upper = _uint(ports.get(_UPPER, lower), f"{where}: upper-port", 2**16 - 1)
        if upper < lower:
            raise InvalidValue(f"{where}: upper-port {upper} is below lower-port {lower}")


def _network(text: Any, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise InvalidValue(f"{where}: target-prefix values must be strings")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise InvalidValue(f"{where}: {text!r} is not an IP prefix") from None


def _targets_overlap(a: Mapping[int, Any], b: Mapping[int, Any]) -> bool:
    """§7.3.1, §8.2: a common address or prefix, FQDN, URI, alias or mid."""
    nets_a = [_network(t, "target") for t in a.get(_PREFIX, ())]
    nets_b = [_network(t, "target") for t in b.get(_PREFIX, ())]
    if any(x.version == y.version and x.overlaps(y) for x in nets_a for y in nets_b):
        return True
    for key in (_FQDN, _URI, _ALIAS, MID_LIST):
        if set(a.get(key, ())) & set(b.get(key, ())):
            return True
    return False


def _pipe_links(entry: Mapping[int, Any]) -> set[str]:
    return {link[LINK_ID] for link in entry[PIPE]}


def _baseline_ids(entry: Mapping[int, Any]) -> set[int]:
    return {item[ID] for item in entry[BASELINE]}


def _setups_overlap(kind: str, new: Mapping[int, Any], old: Mapping[int, Any]) -> bool:
    if kind == CONFIG:
        return True  # §7.1.2: a higher tsid overrides the configuration
    if kind == PIPE_KIND:
        return bool(_pipe_links(new) & _pipe_links(old))
    if _baseline_ids(new) & _baseline_ids(old):
        return True
    return any(_targets_overlap(x, y) for x in new[BASELINE] for y in old[BASELINE])


def _without_overlap(kind: str, old: Mapping[int, Any],
                     new: Mapping[int, Any]) -> dict[int, Any] | None:
    """What of an older setup a newer one leaves standing (None: nothing): links and
    baselines the new one does not cover (§7.2.1 Figure 15, §7.3.1)."""
    if kind == CONFIG:
        return None
    if kind == PIPE_KIND:
        links = _pipe_links(new)
        kept = [link for link in old[PIPE] if link[LINK_ID] not in links]
        return {**old, PIPE: kept} if kept else None
    ids = _baseline_ids(new)
    kept = [item for item in old[BASELINE] if item[ID] not in ids
            and not any(_targets_overlap(item, n) for n in new[BASELINE])]
    return {**old, BASELINE: kept} if kept else None


def stored_pipe(entry: Mapping[int, Any]) -> dict[int, Any]:
    """Links with capacity 0 are deletions (§7.2.1): not kept."""
    return {**entry, PIPE: [link for link in entry[PIPE] if link[CAPACITY] != 0]}
