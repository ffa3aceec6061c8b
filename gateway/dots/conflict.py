"""Policy for overlapping mitigation requests from *different* clients (RFC 9132 §4.4.1.3).

The RFC leaves the choice to the operator ("accept all requests, reject all requests,
accept only one"). A resolver sees the new request and the overlapping active requests of
other clients and returns a decision; ``gateway.dots.mitigation_conflicts`` turns it into
codes and ``conflict-information``. Overlaps within one client are not policy: the mid decides.

``ConflictingRequest`` (the 4.09 with its CBOR body) lives here rather than with the other
errors: rendering it needs the codec, which itself raises the plain errors.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.dots.codec import encode_message
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code
from gateway.dots.errors import DotsProtocolError
from gateway.dots.message import DotsResponse
from gateway.dots.model import ConflictInformation, MitigationScope, Scope, Targets


class ConflictDecision(enum.Enum):
    #: 4.09 to the newcomer; existing mitigations continue. Protects the first requester.
    REJECT_NEW = "reject-new"
    #: 2.01 to the newcomer; both run, everyone is told about the conflict (status 2).
    ACCEPT_BOTH = "accept-both"
    #: 2.01 to the newcomer; the existing ones are deactivated (status 7, conflict-status 1).
    REPLACE_EXISTING = "replace-existing"


@dataclass(frozen=True, slots=True)
class ConflictingMitigation:
    """What a resolver may look at of an existing, overlapping mitigation."""

    cuid: str
    mid: int
    overlap: Targets
    remaining_lifetime: int  # -1 = indefinite


ConflictResolver = Callable[[Scope, Sequence[ConflictingMitigation]], ConflictDecision]


def fixed_policy(decision: ConflictDecision) -> ConflictResolver:
    """A resolver that always takes the same decision (what the config file selects)."""

    def resolve(_new: Scope, _existing: Sequence[ConflictingMitigation]) -> ConflictDecision:
        return decision

    return resolve


#: Default: reject the newcomer. Overlapping scopes from different clients usually mean a
#: mis-provisioned domain or a client naming addresses it does not own; keeping the first
#: request running is the safe answer, and the 4.09 tells the newcomer exactly why.
DEFAULT_RESOLVER: ConflictResolver = fixed_policy(ConflictDecision.REJECT_NEW)


class ConflictingRequest(DotsProtocolError):
    """4.09 whose body is the CBOR ``conflict-information`` (RFC 9132 §4.4.1.3, §9)."""

    code = Code.CONFLICT

    def __init__(self, diagnostic: str, conflict: ConflictInformation) -> None:
        super().__init__(diagnostic)
        self.conflict = conflict

    def to_response(self) -> DotsResponse:
        body = MitigationScope(scope=(Scope(conflict_information=self.conflict),))
        return DotsResponse(
            code=self.code,
            payload=encode_message(body),
            content_format=CONTENT_FORMAT_DOTS_CBOR,
        )
