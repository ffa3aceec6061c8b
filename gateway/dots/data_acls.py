"""Filtering rules of the DOTS data channel: ACLs, their ACEs and the capabilities document
(RFC 8783 §7, with the matches of RFC 8519 as RFC 8783 restricts them).

``read_acl`` turns one ``acl`` entry of a request into its normalized JSON (names and
values checked, read-only nodes refused, the ACL type checked against its matches, the
layer-4 container against the layer-3 protocol); ``CAPABILITIES`` is what this server
answers at ``.../capabilities`` (§7.1) and is exactly what ``read_acl`` accepts. Pure: no
I/O, no clock.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from gateway.dots.data_nodes import Node, RestconfError, bad, entry_name
from gateway.dots.model import IPNetwork

ACL_TYPES = ("ipv4-acl-type", "ipv6-acl-type")
#: RFC 8783 §7.3 (activation-type): default activate-when-mitigating.
ACTIVATION_TYPES = ("activate-when-mitigating", "immediate", "deactivate")
DEFAULT_ACTIVATION = "activate-when-mitigating"
#: RFC 8783 §7.3: 'accept' and 'drop'; 'reject' is not supported by DOTS servers.
FORWARDING = ("accept", "drop")
_ACL_PREFIX = "ietf-access-control-list"
OPERATORS = ("lte", "gte", "eq", "neq")  # RFC 8519 packet-fields:operator
BITMASK_OPERATORS = ("match", "not", "any")  # RFC 8783 bitmask operator
FRAGMENT_TYPES = ("df", "isf", "ff", "lf")
IPV4_FLAGS = ("reserved", "fragment", "more")
TCP_FLAGS = ("cwr", "ece", "urg", "ack", "psh", "rst", "syn", "fin")
#: The layer-3 protocol number a layer-4 container implies.
L4_PROTOCOLS = {"tcp": {6}, "udp": {17}, "icmp": {1, 58}}
#: ACEs in one ACL at most; more is refused 413 too-big (the daemon may lower it).
MAX_ACES = 256

CAPABILITIES: dict[str, Any] = {
    "address-family": ["ipv4", "ipv6"],
    "forwarding-actions": list(FORWARDING),
    "rate-limit": True,
    "transport-protocols": [1, 6, 17, 58],
    "ipv4": {"dscp": True, "ecn": True, "length": True, "ttl": True, "protocol": True,
             "ihl": True, "flags": True, "offset": True, "identification": True,
             "source-prefix": True, "destination-prefix": True, "fragment": True},
    "ipv6": {"dscp": True, "ecn": True, "length": True, "ttl": True, "protocol": True,
             "destination-prefix": True, "source-prefix": True, "flow-label": True,
             "fragment": True},
    "tcp": {"sequence-number": True, "acknowledgement-number": True, "data-offset": True,
            "reserved": True, "flags": True, "window-size": True, "urgent-pointer": True,
            "options": True, "flags-bitmask": True, "source-port": True,
            "destination-port": True, "port-range": True},
    "udp": {"length": True, "source-port": True, "destination-port": True,
            "port-range": True},
    "icmp": {"type": True, "code": True, "rest-of-header": True},
}


def read_acl(value: Any, list_path: str, *, max_aces: int = MAX_ACES) -> dict[str, Any]:
    """One ``acl`` entry of the list at ``list_path`` (``.../acls/acl``), normalized; raises
    ``RestconfError`` naming the node at fault."""
    node = Node(value, list_path)
    name = entry_name(node.required("name"), node.at("name"))
    node.path = f"{list_path}={name}"
    node.forbid("pending-lifetime")
    out: dict[str, Any] = {"name": name}
    acl_type = node.choice("type", ACL_TYPES, prefix=_ACL_PREFIX)
    if acl_type is not None:
        out["type"] = acl_type
    out["activation-type"] = node.choice("activation-type", ACTIVATION_TYPES,
                                         prefix="ietf-dots-data-channel") or DEFAULT_ACTIVATION
    aces_node = node.child("aces", required=True)
    assert aces_node is not None
    aces: list[dict[str, Any]] = []
    for item in aces_node.array("ace", max_items=max_aces, required=True):
        ace = _read_ace(item, aces_node.at("ace"), acl_type)
        if any(a["name"] == ace["name"] for a in aces):
            raise bad(f"{aces_node.at('ace')}={ace['name']}", "repeats the key name")
        aces.append(ace)
    aces_node.finish()
    out["aces"] = {"ace": aces}
    node.finish()
    return out


def destination_networks(acl: dict[str, Any]) -> list[IPNetwork]:
    """The destination prefixes the ACL's ACEs match (checked against the client's domain)."""
    out: list[IPNetwork] = []
    for ace in acl["aces"]["ace"]:
        matches = ace.get("matches", {})
        for family, leaf in (("ipv4", "destination-ipv4-network"),
                             ("ipv6", "destination-ipv6-network")):
            text = matches.get(family, {}).get(leaf)
            if text is not None:
                out.append(ipaddress.ip_network(text))
    return out


def _read_ace(value: Any, list_path: str, acl_type: str | None) -> dict[str, Any]:
    node = Node(value, list_path)
    name = entry_name(node.required("name"), node.at("name"))
    node.path = f"{list_path}={name}"
    node.forbid("statistics")
    out: dict[str, Any] = {"name": name}
    matches = node.child("matches")
    if matches is not None:
        out["matches"] = _read_matches(matches, acl_type)
    actions = node.child("actions", required=True)
    assert actions is not None
    forwarding = actions.choice("forwarding", FORWARDING, required=True, prefix=_ACL_PREFIX)
    action: dict[str, Any] = {"forwarding": forwarding}
    if actions.has("rate-limit"):
        action["rate-limit"] = _rate_limit(actions.raw("rate-limit"), actions.at("rate-limit"))
        if forwarding != "accept":  # RFC 8783 §7.3: rate-limit goes with 'accept'
            raise bad(actions.at("rate-limit"), "is only allowed with forwarding 'accept'")
    actions.finish()
    out["actions"] = action
    node.finish()
    return out


def _rate_limit(value: Any, path: str) -> str:
    # decimal64 with 2 fraction digits: a JSON string per RFC 7951 §6.1; a number is accepted.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad(path, "must be a decimal64 (a string such as \"20.00\")")
    try:
        number = float(value)
    except ValueError:
        raise bad(path, f"must be a decimal number, got {value!r}") from None
    if not 0 <= number < 2**63 / 100 or number != number:
        raise bad(path, f"must be a non-negative rate in bytes per second, got {value!r}")
    return f"{number:.2f}"


def _read_matches(node: Node, acl_type: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    l3 = [name for name in ("ipv4", "ipv6") if node.has(name)]
    l4 = [name for name in ("tcp", "udp", "icmp") if node.has(name)]
    for group in (l3, l4):  # each is a YANG choice: one case at most
        if len(group) > 1:
            raise bad(node.at(group[1]), f"cannot be given with {group[0]} (one choice)")
    for family in l3:
        if acl_type is not None and acl_type != f"{family}-acl-type":
            raise bad(node.at(family), f"does not match the ACL type {acl_type}")
        sub = node.child(family)
        assert sub is not None
        out[family] = _read_l3(sub, 4 if family == "ipv4" else 6)
    if l4:
        protocol = out[l3[0]].get("protocol") if l3 else None
        if protocol is not None and protocol not in L4_PROTOCOLS[l4[0]]:
            raise bad(node.at(l4[0]), f"does not match the layer-3 protocol {protocol}")
        sub = node.child(l4[0])
        assert sub is not None
        out[l4[0]] = _READ_L4[l4[0]](sub)
    node.finish()
    return out


def _read_l3(node: Node, version: int) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        if value is not None:
            out[name] = value

    put("dscp", node.uint("dscp", 6))
    put("ecn", node.uint("ecn", 2))
    put("length", node.uint("length", 16))
    put("ttl", node.uint("ttl", 8))
    put("protocol", node.uint("protocol", 8))
    if version == 4:
        put("ihl", node.uint("ihl", 8, lo=5, hi=60))  # RFC 8519: uint8 range 5..60
        put("flags", node.bits("flags", IPV4_FLAGS))
        put("offset", node.uint("offset", 16))
        put("identification", node.uint("identification", 16))
    else:
        if isinstance(node.data.get("flow-label"), int):
            # A bare label, as go-dots sends it: kept as given (RFC 8783 has the container).
            put("flow-label", node.uint("flow-label", 20))
        else:
            flow = node.child("flow-label")
            if flow is not None:
                out["flow-label"] = _range_or_operator(flow, "flow-label", 20)
    for side in ("destination", "source"):
        put(f"{side}-ipv{version}-network", node.prefix(f"{side}-ipv{version}-network", version))
    fragment = node.child("fragment")
    if fragment is not None:
        item = {"operator": fragment.choice("operator", BITMASK_OPERATORS) or "match",
                "type": fragment.bits("type", FRAGMENT_TYPES, required=True)}
        fragment.finish()
        out["fragment"] = item
    node.finish()
    return out


def _range_or_operator(node: Node, leaf: str, bits: int) -> dict[str, Any]:
    """RFC 8519's range-or-operator: lower-/upper-<leaf> or operator + <leaf>."""
    lower, upper = f"lower-{leaf}", f"upper-{leaf}"
    key = "port" if leaf == "port" else "label"
    if node.has(lower) or node.has(upper):
        if node.has("operator") or node.has(key):
            raise bad(node.path, f"gives both a range ({lower}) and an operator ({key})")
        low = node.uint(lower, bits, required=True)
        high = node.uint(upper, bits)
        if high is not None and high < low:  # type: ignore[operator]
            raise bad(node.at(upper), f"must not be below {lower} ({low})")
        out: dict[str, Any] = {lower: low} | ({} if high is None else {upper: high})
    else:
        out = {"operator": node.choice("operator", OPERATORS) or "eq",
               key: node.uint(key, bits, required=True)}
    node.finish()
    return out


def _ports(node: Node, out: dict[str, Any]) -> None:
    for side in ("source", "destination"):
        name = f"{side}-port-range-or-operator"
        sub = node.child(name)
        if sub is not None:
            out[name] = _range_or_operator(sub, "port", 16)


def _read_tcp(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, bits in (("sequence-number", 32), ("acknowledgement-number", 32),
                       ("data-offset", 4), ("reserved", 4), ("window-size", 16),
                       ("urgent-pointer", 16)):
        value = node.uint(name, bits)
        if value is not None:
            out[name] = value
    flags = node.bits("flags", TCP_FLAGS)
    if flags is not None:
        out["flags"] = flags
    options = _binary_or_uint32(node, "options", 40)
    if options is not None:
        out["options"] = options
    mask = node.child("flags-bitmask")
    if mask is not None:
        out["flags-bitmask"] = {"operator": mask.choice("operator", BITMASK_OPERATORS) or "match",
                                "bitmask": mask.uint("bitmask", 16, required=True)}
        mask.finish()
    _ports(node, out)
    node.finish()
    return out


def _read_udp(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    length = node.uint("length", 16)
    if length is not None:
        out["length"] = length
    _ports(node, out)
    node.finish()
    return out


def _read_icmp(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("type", "code"):
        value = node.uint(name, 8)
        if value is not None:
            out[name] = value
    rest = _binary_or_uint32(node, "rest-of-header", 64)
    if rest is not None:
        out["rest-of-header"] = rest
    node.finish()
    return out


def _binary_or_uint32(node: Node, name: str, max_bytes: int) -> str | int | None:
    """YANG binary (base64, RFC 8519), or the uint32 go-dots sends; kept as given."""
    if isinstance(node.data.get(name), int):
        return node.uint(name, 32)
    return node.binary(name, max_bytes=max_bytes)


_READ_L4 = {"tcp": _read_tcp, "udp": _read_udp, "icmp": _read_icmp}


def check_activation(value: str) -> str:
    """An activation-type from the signal channel (RFC 9133), or ``RestconfError``."""
    if value not in ACTIVATION_TYPES:
        raise RestconfError(400, "invalid-value", f"activation-type must be one of "
                            f"{', '.join(ACTIVATION_TYPES)}, got {value!r}")
    return value
