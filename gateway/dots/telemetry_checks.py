"""RFC 9244 telemetry: the key numbers and the checks and overlap rules of its bodies.

Pure helpers of ``gateway.dots.telemetry`` (which holds the state): what a value must be to
be accepted (4.00/4.22 with a diagnostic otherwise), and when two setups or two targets
overlap (§7.2.1, §7.3.1, §8.2). No I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from gateway.dots.errors import InvalidValue, MalformedPayload, MissingAttribute, UnacceptableConfig

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
PREFIX, PORTS, LOWER_PORT, UPPER_PORT, PROTOCOL, FQDN, URI, ALIAS = 6, 7, 8, 9, 10, 11, 12, 13
TARGET_KEYS = frozenset({PREFIX, PORTS, PROTOCOL, FQDN, URI, ALIAS})

CONFIG, PIPE_KIND, BASELINE_KIND = "telemetry-config", "pipe", "baseline"
SETUP_KIND = {CURRENT_CONFIG: CONFIG, PIPE: PIPE_KIND, BASELINE: BASELINE_KIND}

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


def check_uint(value: Any, name: str, bound: int = _UINT32_MAX) -> int:
    if type(value) is not int or not 0 <= value <= bound:
        raise MalformedPayload(f"{name} must be an unsigned integer <= {bound}")
    return value


def check_bounded(config: Mapping[int, Any], key: int, name: str, low: int, high: int) -> None:
    if key not in config:
        return
    value = check_uint(config[key], name, 2**16 - 1)
    if not low <= value <= high:
        raise UnacceptableConfig(f"{name} {value} is outside {low}-{high} (RFC 9244 §7.1.2)")


def check_units(units: Any) -> None:
    if not isinstance(units, list) or not units:
        raise MalformedPayload("unit-config must be a non-empty list")
    seen: dict[int, bool] = {}
    for item in units:
        if not isinstance(item, dict) or UNIT not in item or UNIT_STATUS not in item:
            raise MissingAttribute("a unit-config entry needs 'unit' and 'unit-status'")
        unit = check_uint(item[UNIT], "unit")
        if unit not in (1, 2, 3):
            raise InvalidValue(f"unit-config unit {unit} is not a unit class (packet-ps 1, "
                               "bit-ps 2, byte-ps 3)")
        if type(item[UNIT_STATUS]) is not bool:
            raise MalformedPayload("unit-status must be a boolean")
        if seen.get(unit, item[UNIT_STATUS]) != item[UNIT_STATUS]:
            raise InvalidValue(f"unit-config gives unit {unit} conflicting statuses "
                               "(RFC 9244 §7.1.2)")
        seen[unit] = item[UNIT_STATUS]


def check_pipe(links: Any) -> None:
    if not isinstance(links, list) or not links:
        raise MissingAttribute("total-pipe-capacity needs at least one link")
    keys = set()
    for link in links:
        if not isinstance(link, dict):
            raise MalformedPayload("a total-pipe-capacity entry must be a map")
        for required, name in ((LINK_ID, "link-id"), (CAPACITY, "capacity"), (UNIT, "unit")):
            if required not in link:
                raise MissingAttribute(f"a total-pipe-capacity entry needs '{name}' "
                                       "(RFC 9244 §7.2)")
        if not isinstance(link[LINK_ID], str) or not link[LINK_ID]:
            raise InvalidValue("link-id must be a non-empty string")
        check_uint(link[CAPACITY], "capacity", _UINT64_MAX)
        check_uint(link[UNIT], "unit")
        key = (link[LINK_ID], link[UNIT])
        if key in keys:
            raise InvalidValue(f"link {link[LINK_ID]!r} is listed twice with the same unit")
        keys.add(key)
    if all(link[CAPACITY] == 0 for link in links):
        # §7.2.1: deleting every link is a DELETE, not a PUT of zeros.
        raise InvalidValue("every link has capacity 0; use DELETE to remove all links "
                           "(RFC 9244 §7.2.1)")


def check_baseline(baselines: Any) -> None:
    if not isinstance(baselines, list) or not baselines:
        raise MissingAttribute("baseline needs at least one entry")
    ids = set()
    for item in baselines:
        if not isinstance(item, dict) or ID not in item:
            raise MissingAttribute("a baseline entry needs its 'id' (RFC 9244 §7.3)")
        ident = check_uint(item[ID], "baseline id")
        if ident in ids:
            raise InvalidValue(f"baseline id {ident} is listed twice")
        ids.add(ident)
        check_targets(item, "baseline", allow_mid_list=False, required=False)


def check_targets(node: Mapping[int, Any], where: str, *, allow_mid_list: bool,
                   required: bool = True) -> None:
    present = [k for k in node if k in TARGET_KEYS or (allow_mid_list and k == MID_LIST)]
    if required and not present:
        raise MissingAttribute(f"{where} names no target (target-prefix, target-port-range, "
                               "target-protocol, target-fqdn, target-uri, alias-name or "
                               "mid-list)")
    for key in present:
        values = node[key]
        if not isinstance(values, list) or not values:
            raise InvalidValue(f"{where}: key {key} must be a non-empty list (RFC 9244 §5.3)")
    for text in node.get(PREFIX, ()):
        _network(text, where)
    for key in (FQDN, URI, ALIAS):
        for text in node.get(key, ()):
            if not isinstance(text, str) or not text:
                raise InvalidValue(f"{where}: key {key} values must be non-empty strings")
    for ident in node.get(MID_LIST, ()) if allow_mid_list else ():
        check_uint(ident, f"{where}: mid-list value")
    for protocol in node.get(PROTOCOL, ()):
        check_uint(protocol, f"{where}: target-protocol value", 255)
    for ports in node.get(PORTS, ()):
        if not isinstance(ports, dict) or LOWER_PORT not in ports:
            raise InvalidValue(f"{where}: a target-port-range entry needs lower-port")
        lower = check_uint(ports[LOWER_PORT], f"{where}: lower-port", 2**16 - 1)
        upper = check_uint(ports.get(UPPER_PORT, lower), f"{where}: upper-port", 2**16 - 1)
        if upper < lower:
            raise InvalidValue(f"{where}: upper-port {upper} is below lower-port {lower}")


def _network(text: Any, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise InvalidValue(f"{where}: target-prefix values must be strings")
    try:
        return ipaddress.ip_network(text, strict=False)  # host bits: as on mitigate
    except ValueError:
        raise InvalidValue(f"{where}: {text!r} is not an IP prefix") from None


def targets_overlap(a: Mapping[int, Any], b: Mapping[int, Any]) -> bool:
    """§7.3.1, §8.2: a common address or prefix, FQDN, URI, alias or mid."""
    nets_a = [_network(t, "target") for t in a.get(PREFIX, ())]
    nets_b = [_network(t, "target") for t in b.get(PREFIX, ())]
    if any(x.version == y.version and x.overlaps(y) for x in nets_a for y in nets_b):
        return True
    for key in (FQDN, URI, ALIAS, MID_LIST):
        if set(a.get(key, ())) & set(b.get(key, ())):
            return True
    return False


def _pipe_links(entry: Mapping[int, Any]) -> set[str]:
    return {link[LINK_ID] for link in entry[PIPE]}


def _baseline_ids(entry: Mapping[int, Any]) -> set[int]:
    return {item[ID] for item in entry[BASELINE]}


def setups_overlap(kind: str, new: Mapping[int, Any], old: Mapping[int, Any]) -> bool:
    if kind == CONFIG:
        return True  # §7.1.2: a higher tsid overrides the configuration
    if kind == PIPE_KIND:
        return bool(_pipe_links(new) & _pipe_links(old))
    if _baseline_ids(new) & _baseline_ids(old):
        return True
    return any(targets_overlap(x, y) for x in new[BASELINE] for y in old[BASELINE])


def without_overlap(kind: str, old: Mapping[int, Any],
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
            and not any(targets_overlap(item, n) for n in new[BASELINE])]
    return {**old, BASELINE: kept} if kept else None


def stored_pipe(entry: Mapping[int, Any]) -> dict[int, Any]:
    """Links with capacity 0 are deletions (§7.2.1): not kept."""
    return {**entry, PIPE: [link for link in entry[PIPE] if link[CAPACITY] != 0]}
