"""Numbers from the IANA registries the signal channel uses (RFC 9132 §10, RFC 7252 §12).

Enumerations carry their YANG labels, because the JSON form of a DOTS message uses the
label and the CBOR form uses the number (RFC 9132 Table 5).
"""

from __future__ import annotations

import enum

#: CoAP Content-Format of ``application/dots+cbor`` (RFC 9132 §10.4).
CONTENT_FORMAT_DOTS_CBOR = 271
#: CoAP Content-Format of ``text/plain; charset=utf-8`` (diagnostic payloads, RFC 7252 §5.5.2).
CONTENT_FORMAT_TEXT = 0
#: The optional CBOR tag that may prefix a whole DOTS object (RFC 9132 §10.5).
CBOR_TAG_DOTS = 271
#: Default signal-channel port for UDP and TCP (RFC 9132 §3, §10.1).
DEFAULT_PORT = 4646
#: CoAP Hop-Limit option number (RFC 8768).
OPTION_HOP_LIMIT = 16
#: Largest value of Max-Age; in DOTS it means "never expires" (RFC 9132 §4.5.3, §4.6).
MAX_AGE_INFINITE = 2**32 - 1


class LabelledEnum(enum.IntEnum):
    """An IANA enumeration whose members know their YANG label."""

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_label(cls, label: str) -> LabelledEnum:
        member = cls.__members__.get(label.upper().replace("-", "_"))
        if member is None or member.label != label:
            raise ValueError(f"unknown {cls.__name__} label {label!r}")
        return member


class Status(LabelledEnum):
    """'status' (key 16), RFC 9132 Table 3 / §10.6.2."""

    ATTACK_MITIGATION_IN_PROGRESS = 1
    ATTACK_SUCCESSFULLY_MITIGATED = 2
    ATTACK_STOPPED = 3
    ATTACK_EXCEEDED_CAPABILITY = 4
    DOTS_CLIENT_WITHDRAWN_MITIGATION = 5
    ATTACK_MITIGATION_TERMINATED = 6
    ATTACK_MITIGATION_WITHDRAWN = 7
    ATTACK_MITIGATION_SIGNAL_LOSS = 8


class ConflictStatus(LabelledEnum):
    """'conflict-status' (key 18), RFC 9132 §10.6.3."""

    REQUEST_INACTIVE_OTHER_ACTIVE = 1
    REQUEST_ACTIVE = 2
    ALL_REQUESTS_INACTIVE = 3


class ConflictCause(LabelledEnum):
    """'conflict-cause' (key 19), RFC 9132 §10.6.4, and RFC 9244's addition."""

    OVERLAPPING_TARGETS = 1
    CONFLICT_WITH_ACCEPTLIST = 2
    CUID_COLLISION = 3
    #: RFC 9244's IANA section adds 'overlapping-pipes' to "DOTS Signal Channel Conflict
    #: Cause Codes" (https://www.iana.org/assignments/dots) as the next free value, 4, for
    #: a total-pipe-capacity that overlaps another client's of the same domain (§7.2).
    #: go-dots sends 5 because its enum keeps an unregistered UNDEFINED at 4
    #: (dots_server/models/mitigation_scope.go: ... CUID_COLLISION, UNDEFINED,
    #: OVERLAPPING_PIPE_SCOPE), not because the registry says so.
    OVERLAPPING_PIPES = 4


class AttackStatus(LabelledEnum):
    """'attack-status' (key 29), RFC 9132 §10.6.5."""

    UNDER_ATTACK = 1
    ATTACK_SUCCESSFULLY_MITIGATED = 2


class Code(enum.IntEnum):
    """CoAP response codes DOTS uses (class * 32 + detail)."""

    CREATED = 65  # 2.01
    DELETED = 66  # 2.02
    VALID = 67  # 2.03
    CHANGED = 68  # 2.04
    CONTENT = 69  # 2.05
    BAD_REQUEST = 128  # 4.00
    UNAUTHORIZED = 129  # 4.01
    BAD_OPTION = 130  # 4.02
    FORBIDDEN = 131  # 4.03
    NOT_FOUND = 132  # 4.04
    METHOD_NOT_ALLOWED = 133  # 4.05
    REQUEST_ENTITY_INCOMPLETE = 136  # 4.08
    CONFLICT = 137  # 4.09
    PRECONDITION_FAILED = 140  # 4.12
    REQUEST_ENTITY_TOO_LARGE = 141  # 4.13
    UNSUPPORTED_CONTENT_FORMAT = 143  # 4.15
    UNPROCESSABLE_ENTITY = 150  # 4.22
    INTERNAL_SERVER_ERROR = 160  # 5.00
    BAD_GATEWAY = 162  # 5.02 (a gateway: the upstream answer was unusable)
    SERVICE_UNAVAILABLE = 163  # 5.03
    HOP_LIMIT_REACHED = 168  # 5.08

    @property
    def dotted(self) -> str:
        """The RFC's notation, e.g. ``4.09``."""
        return f"{self.value >> 5}.{self.value & 31:02d}"

    @property
    def is_success(self) -> bool:
        return 64 <= self.value < 96


class Method(enum.IntEnum):
    """CoAP request method codes (RFC 7252 §12.1.1); DOTS uses GET, PUT and DELETE."""

    GET = 1
    POST = 2
    PUT = 3
    DELETE = 4
    FETCH = 5
    PATCH = 6
    IPATCH = 7
