"""The CBOR key table of the signal channel and the key ranges: every key of the IANA
"DOTS Signal Channel CBOR Key Values" registry (RFC 9132 §6 Table 5 and §10.6.1; RFC 9133;
RFC 9244 §12-13.1; RFC 9066; RFC 9362).

Each key knows its YANG/JSON name, its YANG type (``Kind``, from which its CBOR major type
follows), the RFC that registered it, where it may appear (``CHILDREN``/``PARENTS``) and
whether it is comprehension-required (by its range, RFC 9132 §10.6.1.1). Names carry the
module prefix where the RFCs' JSON examples and the registry do.

Keys of RFC 9132 are typed fields of ``gateway.dots.model``. The others are ``opaque``: the
codec checks where they stand and their CBOR major type, then keeps their whole value as
received, so a gateway relays them unchanged and ``dots-client`` shows them by name. A
server acts on RFC 9133's acl-list (``gateway.dots.filters`` reads it from the kept value);
RFC 9244's telemetry bodies are checked and kept by ``gateway.dots.telemetry`` (numbers
128-210 checked against the IANA table's order: see ``tests/unit/dots/test_cbor_registry.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.dots.codes import AttackStatus, ConflictCause, ConflictStatus, LabelledEnum, Status

MODULE = "ietf-dots-signal-channel"


class Kind(enum.Enum):
    CONTAINER = "container"
    LIST = "list"  # array of maps
    LEAF_LIST = "leaf-list"  # array of scalars of ``item`` kind
    STRING = "string"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    UINT64 = "uint64"
    LIFETIME = "lifetime"  # union of uint32 and int32 restricted to -1
    ENUM = "enumeration"
    BOOLEAN = "boolean"
    DECIMAL64 = "decimal64"  # fraction-digits 2, CBOR tag 4 [-2, mantissa]

    @property
    def majors(self) -> tuple[int, ...]:
        """The CBOR major types a value of this kind has (RFC 8949 §3.1; 6 is a tag)."""
        return _MAJORS[self]


_MAJORS = {
    Kind.CONTAINER: (5,),
    Kind.LIST: (4,),
    Kind.LEAF_LIST: (4,),
    Kind.STRING: (3,),
    Kind.UINT8: (0,),
    Kind.UINT16: (0,),
    Kind.UINT32: (0,),
    Kind.UINT64: (0,),
    Kind.LIFETIME: (0, 1),
    Kind.ENUM: (0,),
    Kind.BOOLEAN: (7,),
    Kind.DECIMAL64: (6,),
}


UINT_BOUNDS = {
    Kind.UINT8: 2**8 - 1,
    Kind.UINT16: 2**16 - 1,
    Kind.UINT32: 2**32 - 1,
    Kind.UINT64: 2**64 - 1,
}


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key: int
    name: str
    kind: Kind
    #: Element kind of a leaf-list.
    item: Kind | None = None
    #: The enumeration behind an ENUM leaf.
    enum: type[LabelledEnum] | None = None
    #: Table 5 gives JSON "String" for 64-bit numbers, enumerations, decimals and retry-timer.
    json_string: bool = False
    #: The RFC that registered the key.
    rfc: int = 9132
    #: The model has no typed field for it: its value is kept whole, as received.
    opaque: bool = False
    #: Labels of an enumeration we do not act on (value -> YANG label), for JSON.
    labels: Mapping[int, str] | None = None
    #: Where an opaque key may stand (None: top level); RFC 9132 keys are placed by CHILDREN.
    parents: frozenset[int | None] = frozenset()

    @property
    def short_name(self) -> str:
        return self.name.split(":", 1)[-1]

    @property
    def comprehension_required(self) -> bool:
        return not is_comprehension_optional(self.key)


def _k(key: int, name: str, kind: Kind, **kw: object) -> KeyInfo:
    return KeyInfo(key, name, kind, **kw)  # type: ignore[arg-type]


_TABLE = (
    _k(1, f"{MODULE}:mitigation-scope", Kind.CONTAINER),
    _k(2, "scope", Kind.LIST),
    _k(3, "cdid", Kind.STRING),
    _k(4, "cuid", Kind.STRING),
    _k(5, "mid", Kind.UINT32),
    _k(6, "target-prefix", Kind.LEAF_LIST, item=Kind.STRING),
    _k(7, "target-port-range", Kind.LIST),
    _k(8, "lower-port", Kind.UINT16),
    _k(9, "upper-port", Kind.UINT16),
    _k(10, "target-protocol", Kind.LEAF_LIST, item=Kind.UINT8),
    _k(11, "target-fqdn", Kind.LEAF_LIST, item=Kind.STRING),
    _k(12, "target-uri", Kind.LEAF_LIST, item=Kind.STRING),
    _k(13, "alias-name", Kind.LEAF_LIST, item=Kind.STRING),
    _k(14, "lifetime", Kind.LIFETIME),
    _k(15, "mitigation-start", Kind.UINT64, json_string=True),
    _k(16, "status", Kind.ENUM, enum=Status, json_string=True),
    _k(17, "conflict-information", Kind.CONTAINER),
    _k(18, "conflict-status", Kind.ENUM, enum=ConflictStatus, json_string=True),
    _k(19, "conflict-cause", Kind.ENUM, enum=ConflictCause, json_string=True),
    _k(20, "retry-timer", Kind.UINT32, json_string=True),
    _k(21, "conflict-scope", Kind.CONTAINER),
    _k(22, "acl-list", Kind.LIST),
    _k(23, "acl-name", Kind.STRING),
    _k(24, "acl-type", Kind.STRING),
    _k(25, "bytes-dropped", Kind.UINT64, json_string=True),
    _k(26, "bps-dropped", Kind.UINT64, json_string=True),
    _k(27, "pkts-dropped", Kind.UINT64, json_string=True),
    _k(28, "pps-dropped", Kind.UINT64, json_string=True),
    _k(29, "attack-status", Kind.ENUM, enum=AttackStatus, json_string=True),
    _k(30, f"{MODULE}:signal-config", Kind.CONTAINER),
    _k(31, "sid", Kind.UINT32),
    _k(32, "mitigating-config", Kind.CONTAINER),
    _k(33, "heartbeat-interval", Kind.CONTAINER),
    _k(34, "max-value", Kind.UINT16),
    _k(35, "min-value", Kind.UINT16),
    _k(36, "current-value", Kind.UINT16),
    _k(37, "missing-hb-allowed", Kind.CONTAINER),
    _k(38, "max-retransmit", Kind.CONTAINER),
    _k(39, "ack-timeout", Kind.CONTAINER),
    _k(40, "ack-random-factor", Kind.CONTAINER),
    _k(41, "max-value-decimal", Kind.DECIMAL64, json_string=True),
    _k(42, "min-value-decimal", Kind.DECIMAL64, json_string=True),
    _k(43, "current-value-decimal", Kind.DECIMAL64, json_string=True),
    _k(44, "idle-config", Kind.CONTAINER),
    _k(45, "trigger-mitigation", Kind.BOOLEAN),
    _k(46, f"{MODULE}:redirected-signal", Kind.CONTAINER),
    _k(47, "alt-server", Kind.STRING),
    _k(48, "alt-server-record", Kind.LEAF_LIST, item=Kind.STRING),
    _k(49, f"{MODULE}:heartbeat", Kind.CONTAINER),
    _k(50, "probing-rate", Kind.CONTAINER),
    _k(51, "peer-hb-status", Kind.BOOLEAN),
)

# --- keys of later RFCs, which we know but do not act on --------------------------------------

_SCOPE, _MITIGATING_CONFIG, _IDLE_CONFIG = 2, 32, 44
_TOP: frozenset[int | None] = frozenset({None})

#: RFC 8783 §4.3 'activation-type', as RFC 9133 carries it in the signal channel.
ACTIVATION_TYPE_LABELS = {1: "activate-when-mitigating", 2: "immediate", 3: "deactivate"}
# RFC 9244 §11.1 typedefs (the YANG module's enumerations).
_ATTACK_SEVERITY = {1: "none", 2: "low", 3: "medium", 4: "high", 5: "unknown"}
_UNIT = {
    i: f"{scale}{kind}-ps" for i, (scale, kind) in enumerate(
        ((scale, kind) for scale in ("", "kilo", "mega", "giga", "tera", "peta", "exa", "zetta")
         for kind in ("packet", "bit", "byte")), start=1)}
_INTERVAL = {1: "5-minutes", 2: "10-minutes", 3: "30-minutes", 4: "hour", 5: "day", 6: "week",
             7: "month"}
_SAMPLE = {1: "second", 2: "5-seconds", 3: "30-seconds", 4: "minute", 5: "5-minutes",
           6: "10-minutes", 7: "30-minutes", 8: "hour"}
_QUERY_TYPE = {1: "target-prefix", 2: "target-port", 3: "target-protocol", 4: "target-fqdn",
               5: "target-uri", 6: "target-alias", 7: "mid", 8: "source-prefix",
               9: "source-port", 10: "source-icmp-type", 11: "content"}


def _x(key: int, name: str, kind: Kind, rfc: int, parents: frozenset[int | None] | None = None,
       **kw: object) -> KeyInfo:
    return KeyInfo(key, name, kind, rfc=rfc, opaque=True,
                   parents=parents if parents is not None else frozenset(),
                   **kw)  # type: ignore[arg-type]


_TM = "ietf-dots-telemetry"
# RFC 9244 Table 3 (comprehension-optional, 128-255). Its attributes nest in many
# combinations below the entry points (203/208 top level, 204-207 in a scope); the table
# places the inner ones anywhere inside a telemetry subtree, which is kept whole anyway.
_TELEMETRY = (
    (128, "tsid", Kind.UINT32, {}),
    (129, "telemetry", Kind.LIST, {}),
    (130, "low-percentile", Kind.DECIMAL64, {"json_string": True}),
    (131, "mid-percentile", Kind.DECIMAL64, {"json_string": True}),
    (132, "high-percentile", Kind.DECIMAL64, {"json_string": True}),
    (133, "unit-config", Kind.LIST, {}),
    (134, "unit", Kind.ENUM, {"labels": _UNIT, "json_string": True}),
    (135, "unit-status", Kind.BOOLEAN, {}),
    (136, "total-pipe-capacity", Kind.LIST, {}),
    (137, "link-id", Kind.STRING, {}),
    (138, "pre-or-ongoing-mitigation", Kind.LIST, {}),
    (139, "total-traffic-normal", Kind.LIST, {}),
    (140, "low-percentile-g", Kind.UINT64, {"json_string": True}),
    (141, "mid-percentile-g", Kind.UINT64, {"json_string": True}),
    (142, "high-percentile-g", Kind.UINT64, {"json_string": True}),
    (143, "peak-g", Kind.UINT64, {"json_string": True}),
    (144, "total-attack-traffic", Kind.LIST, {}),
    (145, "total-traffic", Kind.LIST, {}),
    (146, "total-connection-capacity", Kind.LIST, {}),
    *((key, name, Kind.UINT64, {"json_string": True}) for key, name in enumerate((
        "connection", "connection-client", "embryonic", "embryonic-client", "connection-ps",
        "connection-client-ps", "request-ps", "request-client-ps", "partial-request-max",
        "partial-request-client-max"), start=147)),
    (157, "total-attack-connection", Kind.CONTAINER, {}),
    (158, "connection-c", Kind.CONTAINER, {}),
    (159, "embryonic-c", Kind.CONTAINER, {}),
    (160, "connection-ps-c", Kind.CONTAINER, {}),
    (161, "request-ps-c", Kind.CONTAINER, {}),
    (162, "attack-detail", Kind.LIST, {}),
    (163, "id", Kind.UINT32, {}),
    (164, "attack-id", Kind.UINT32, {}),
    (165, "attack-description", Kind.STRING, {}),
    (166, "attack-severity", Kind.ENUM, {"labels": _ATTACK_SEVERITY, "json_string": True}),
    (167, "start-time", Kind.UINT64, {"json_string": True}),
    (168, "end-time", Kind.UINT64, {"json_string": True}),
    (169, "source-count", Kind.CONTAINER, {}),
    (170, "top-talker", Kind.CONTAINER, {}),
    (171, "spoofed-status", Kind.BOOLEAN, {}),
    (172, "partial-request-c", Kind.CONTAINER, {}),
    (173, "total-attack-connection-protocol", Kind.LIST, {}),
    (174, "baseline", Kind.LIST, {}),
    (175, "current-config", Kind.CONTAINER, {}),
    (176, "max-config-values", Kind.CONTAINER, {}),
    (177, "min-config-values", Kind.CONTAINER, {}),
    (178, "supported-unit-classes", Kind.CONTAINER, {}),
    (179, "server-originated-telemetry", Kind.BOOLEAN, {}),
    (180, "telemetry-notify-interval", Kind.UINT16, {}),
    (181, "tmid", Kind.UINT32, {}),
    (182, "measurement-interval", Kind.ENUM, {"labels": _INTERVAL, "json_string": True}),
    (183, "measurement-sample", Kind.ENUM, {"labels": _SAMPLE, "json_string": True}),
    (184, "talker", Kind.LIST, {}),
    (185, "source-prefix", Kind.STRING, {}),
    (186, "mid-list", Kind.LEAF_LIST, {"item": Kind.UINT32}),
    (187, "source-port-range", Kind.LIST, {}),
    (188, "source-icmp-type-range", Kind.LIST, {}),
    (189, "target", Kind.CONTAINER, {}),
    (190, "capacity", Kind.UINT64, {"json_string": True}),
    (191, "protocol", Kind.UINT8, {}),
    (192, "total-traffic-normal-per-protocol", Kind.LIST, {}),
    (193, "total-traffic-normal-per-port", Kind.LIST, {}),
    (194, "total-connection-capacity-per-port", Kind.LIST, {}),
    (195, "total-traffic-protocol", Kind.LIST, {}),
    (196, "total-traffic-port", Kind.LIST, {}),
    (197, "total-attack-traffic-protocol", Kind.LIST, {}),
    (198, "total-attack-traffic-port", Kind.LIST, {}),
    (199, "total-attack-connection-port", Kind.LIST, {}),
    (200, "port", Kind.UINT16, {}),
    (201, "supported-query-type", Kind.LEAF_LIST,
     {"item": Kind.ENUM, "labels": _QUERY_TYPE, "json_string": True}),
    (202, "vendor-id", Kind.UINT32, {}),
    (203, f"{_TM}:telemetry-setup", Kind.CONTAINER, {}),
    (204, f"{_TM}:total-traffic", Kind.LIST, {}),
    (205, f"{_TM}:total-attack-traffic", Kind.LIST, {}),
    (206, f"{_TM}:total-attack-connection", Kind.CONTAINER, {}),
    (207, f"{_TM}:attack-detail", Kind.LIST, {}),
    (208, f"{_TM}:telemetry", Kind.CONTAINER, {}),
    (209, "current-g", Kind.UINT64, {"json_string": True}),
    (210, "description-lang", Kind.STRING, {}),
)
#: Containers and lists of RFC 9244: the inner telemetry attributes stand inside these.
TELEMETRY_NODES: frozenset[int | None] = frozenset(
    key for key, _, kind, _ in _TELEMETRY if kind in (Kind.CONTAINER, Kind.LIST))


def _telemetry_parents(key: int) -> frozenset[int | None]:
    if key in (203, 208):
        return _TOP  # the bodies of /tm-setup and /tm (RFC 9244 §6-§7)
    if 204 <= key <= 207:
        return frozenset({_SCOPE})  # mitigation requests and status (RFC 9244 §7.3, §8)
    return TELEMETRY_NODES


_CH = "ietf-dots-call-home"
_RT = "ietf-dots-robust-trans"
_CONFIG_SETS: frozenset[int | None] = frozenset({_MITIGATING_CONFIG, _IDLE_CONFIG})
_ICMP_RANGES: frozenset[int | None] = frozenset({32770, 188})

EXTENSION_TABLE: tuple[KeyInfo, ...] = (
    # RFC 9133 §5 Table 1 and §7 (comprehension-required); its acl-name reuses key 23.
    _x(52, "activation-type", Kind.ENUM, 9133, frozenset({53}),
       labels=ACTIVATION_TYPE_LABELS, json_string=True),
    _x(53, "ietf-dots-signal-control:acl-list", Kind.LIST, 9133, frozenset({_SCOPE})),
    *(_x(key, name, kind, 9244, _telemetry_parents(key), **kw)  # type: ignore[arg-type]
      for key, name, kind, kw in _TELEMETRY),
    # RFC 9066 (Call Home): source attributes in a mitigation request's scope.
    _x(32768, f"{_CH}:source-prefix", Kind.LEAF_LIST, 9066, frozenset({_SCOPE}),
       item=Kind.STRING),
    _x(32769, f"{_CH}:source-port-range", Kind.LIST, 9066, frozenset({_SCOPE})),
    _x(32770, f"{_CH}:source-icmp-type-range", Kind.LIST, 9066, frozenset({_SCOPE})),
    _x(32771, "lower-type", Kind.UINT8, 9066, _ICMP_RANGES),
    _x(32772, "upper-type", Kind.UINT8, 9066, _ICMP_RANGES),
    # RFC 9362 (robust block transmission): session-configuration parameters.
    *(_x(key, f"{_RT}:{name}", Kind.CONTAINER, 9362, _CONFIG_SETS)
      for key, name in enumerate(("max-payloads", "non-max-retransmit", "non-timeout",
                                  "non-receive-timeout", "non-probing-wait",
                                  "non-partial-wait"), start=32776)),
)

KEYS: dict[int, KeyInfo] = {info.key: info for info in _TABLE + EXTENSION_TABLE}
BY_NAME: dict[str, KeyInfo] = {info.name: info for info in _TABLE + EXTENSION_TABLE}


# Key numbers by YANG name, so code reads like the RFC: ``K.MID``.
class K(enum.IntEnum):
    MITIGATION_SCOPE = 1
    SCOPE = 2
    CDID = 3
    CUID = 4
    MID = 5
    TARGET_PREFIX = 6
    TARGET_PORT_RANGE = 7
    LOWER_PORT = 8
    UPPER_PORT = 9
    TARGET_PROTOCOL = 10
    TARGET_FQDN = 11
    TARGET_URI = 12
    ALIAS_NAME = 13
    LIFETIME = 14
    MITIGATION_START = 15
    STATUS = 16
    CONFLICT_INFORMATION = 17
    CONFLICT_STATUS = 18
    CONFLICT_CAUSE = 19
    RETRY_TIMER = 20
    CONFLICT_SCOPE = 21
    ACL_LIST = 22
    ACL_NAME = 23
    ACL_TYPE = 24
    BYTES_DROPPED = 25
    BPS_DROPPED = 26
    PKTS_DROPPED = 27
    PPS_DROPPED = 28
    ATTACK_STATUS = 29
    SIGNAL_CONFIG = 30
    SID = 31
    MITIGATING_CONFIG = 32
    HEARTBEAT_INTERVAL = 33
    MAX_VALUE = 34
    MIN_VALUE = 35
    CURRENT_VALUE = 36
    MISSING_HB_ALLOWED = 37
    MAX_RETRANSMIT = 38
    ACK_TIMEOUT = 39
    ACK_RANDOM_FACTOR = 40
    MAX_VALUE_DECIMAL = 41
    MIN_VALUE_DECIMAL = 42
    CURRENT_VALUE_DECIMAL = 43
    IDLE_CONFIG = 44
    TRIGGER_MITIGATION = 45
    REDIRECTED_SIGNAL = 46
    ALT_SERVER = 47
    ALT_SERVER_RECORD = 48
    HEARTBEAT = 49
    PROBING_RATE = 50
    PEER_HB_STATUS = 51
    ACTIVATION_TYPE = 52  # RFC 9133
    CONTROL_ACL_LIST = 53  # RFC 9133 'ietf-dots-signal-control:acl-list'


_TARGETS = frozenset(
    {
        K.TARGET_PREFIX,
        K.TARGET_PORT_RANGE,
        K.TARGET_PROTOCOL,
        K.TARGET_FQDN,
        K.TARGET_URI,
        K.ALIAS_NAME,
    }
)
_INT_PARAM = frozenset({K.MAX_VALUE, K.MIN_VALUE, K.CURRENT_VALUE})
_DEC_PARAM = frozenset({K.MAX_VALUE_DECIMAL, K.MIN_VALUE_DECIMAL, K.CURRENT_VALUE_DECIMAL})
_CONFIG_SET = frozenset(
    {
        K.HEARTBEAT_INTERVAL,
        K.MISSING_HB_ALLOWED,
        K.PROBING_RATE,
        K.MAX_RETRANSMIT,
        K.ACK_TIMEOUT,
        K.ACK_RANDOM_FACTOR,
    }
)

#: Which known keys may appear directly inside each container or list entry (RFC 9132 §5.1
#: tree). ``None`` is the top level of a message. cuid, cdid and sid are listed where older
#: versions carried them so that their presence gets a precise diagnostic, not "misplaced".
CHILDREN: dict[int | None, frozenset[int]] = {
    None: frozenset({K.MITIGATION_SCOPE, K.SIGNAL_CONFIG, K.REDIRECTED_SIGNAL, K.HEARTBEAT}),
    K.MITIGATION_SCOPE: frozenset({K.SCOPE, K.CUID, K.CDID}),
    K.SCOPE: _TARGETS
    | {
        K.LIFETIME,
        K.TRIGGER_MITIGATION,
        K.MID,
        K.MITIGATION_START,
        K.STATUS,
        K.CONFLICT_INFORMATION,
        K.BYTES_DROPPED,
        K.BPS_DROPPED,
        K.PKTS_DROPPED,
        K.PPS_DROPPED,
        K.ATTACK_STATUS,
        K.CUID,
        K.CDID,
    },
    K.TARGET_PORT_RANGE: frozenset({K.LOWER_PORT, K.UPPER_PORT}),
    K.CONFLICT_INFORMATION: frozenset(
        {K.CONFLICT_STATUS, K.CONFLICT_CAUSE, K.RETRY_TIMER, K.CONFLICT_SCOPE}
    ),
    K.CONFLICT_SCOPE: _TARGETS | {K.ACL_LIST, K.MID},
    K.ACL_LIST: frozenset({K.ACL_NAME, K.ACL_TYPE}),
    K.SIGNAL_CONFIG: frozenset({K.MITIGATING_CONFIG, K.IDLE_CONFIG, K.SID}),
    K.MITIGATING_CONFIG: _CONFIG_SET,
    K.IDLE_CONFIG: _CONFIG_SET,
    K.HEARTBEAT_INTERVAL: _INT_PARAM,
    K.MISSING_HB_ALLOWED: _INT_PARAM,
    K.PROBING_RATE: _INT_PARAM,
    K.MAX_RETRANSMIT: _INT_PARAM,
    K.ACK_TIMEOUT: _DEC_PARAM,
    K.ACK_RANDOM_FACTOR: _DEC_PARAM,
    K.REDIRECTED_SIGNAL: frozenset({K.ALT_SERVER, K.ALT_SERVER_RECORD}),
    K.HEARTBEAT: frozenset({K.PEER_HB_STATUS}),
    # RFC 9133's acl-list entries: acl-name (reused key 23) and activation-type.
    K.CONTROL_ACL_LIST: frozenset({K.ACL_NAME, K.ACTIVATION_TYPE}),
    # RFC 9066's source-port-range reuses lower-port/upper-port; RFC 9362's parameters
    # reuse the value keys of RFC 9132 (integers, or decimals for the timers).
    32769: frozenset({K.LOWER_PORT, K.UPPER_PORT}),
    32776: _INT_PARAM,
    32777: _INT_PARAM,
    **dict.fromkeys((32778, 32779, 32780, 32781), _DEC_PARAM),
}
for _info in EXTENSION_TABLE:
    for _parent in _info.parents:
        CHILDREN[_parent] = CHILDREN.get(_parent, frozenset()) | {_info.key}

#: Where each key may stand (the inverse of CHILDREN); None is the top level.
PARENTS: dict[int, frozenset[int | None]] = {
    key: frozenset(p for p, children in CHILDREN.items() if key in children) for key in KEYS
}
#: The top-level containers that make a message of RFC 9132 (the ones the model types).
MESSAGE_KINDS = frozenset({K.MITIGATION_SCOPE, K.SIGNAL_CONFIG, K.REDIRECTED_SIGNAL,
                           K.HEARTBEAT})


def is_comprehension_optional(key: int) -> bool:
    """Whether an unknown ``key`` may be ignored (RFC 9132 §6, §10.6.1.1 ranges).

    1-127 and 256-16383 are comprehension-required; 128-255 (changed by RFC 9132 for
    telemetry) and 16384-65535 are comprehension-optional. Anything outside 1-65535 is not
    a valid key at all and is treated as required, so it is rejected.
    """
    return 128 <= key <= 255 or 16384 <= key <= 65535
