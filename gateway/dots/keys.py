"""The CBOR key table of the signal channel (RFC 9132 §6, Table 5) and the key ranges.

Each key knows its YANG/JSON name, its YANG type (``Kind``), and, for containers and
lists, which child keys may appear inside it. Names of the four top-level containers carry
the module prefix, exactly as in the RFC's JSON examples.
"""

from __future__ import annotations

import enum
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

    @property
    def short_name(self) -> str:
        return self.name.split(":", 1)[-1]


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

KEYS: dict[int, KeyInfo] = {info.key: info for info in _TABLE}
BY_NAME: dict[str, KeyInfo] = {info.name: info for info in _TABLE}


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
}


def is_comprehension_optional(key: int) -> bool:
    """Whether an unknown ``key`` may be ignored (RFC 9132 §6, §10.6.1.1 ranges).

    1-127 and 256-16383 are comprehension-required; 128-255 (changed by RFC 9132 for
    telemetry) and 16384-65535 are comprehension-optional. Anything outside 1-65535 is not
    a valid key at all and is treated as required, so it is rejected.
    """
    return 128 <= key <= 255 or 16384 <= key <= 65535
