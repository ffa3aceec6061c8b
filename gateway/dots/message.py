"""The small request and response values the core speaks (not aiocoap messages).

Transports and roles translate CoAP messages into these and back, so the core never sees a
socket or a CoAP library object.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code, Method


@dataclass(frozen=True, slots=True)
class Requester:
    """Who sent a request, as the transport authenticated it.

    ``credential_id`` is the RFC 9132 App. B hash of the peer's SPKI or PSK identity; the
    core uses it to detect cuid collisions. ``trusted_gateway`` says whether this peer may
    supply a ``cdid`` (RFC 9132 §4.4.1.2); a cdid from anyone else is ignored.
    """

    credential_id: str
    trusted_gateway: bool = False
    #: What else identifies the credential, for matching configured clients.
    psk_identity: str | None = None
    subject: str | None = None  # RFC 4514 form of the certificate subject


@dataclass(frozen=True, slots=True)
class DotsRequest:
    method: Method
    path: tuple[str, ...]
    query: tuple[str, ...] = ()
    payload: bytes = b""
    content_format: int | None = None
    #: Observe option value (0 register, 1 deregister), None when absent.
    observe: int | None = None
    #: If-Match option values; an efficacy update carries exactly one empty value.
    if_match: tuple[bytes, ...] = ()
    requester: Requester | None = None
    #: Hop-Limit option (RFC 8768), None when absent; gateways insert and decrement it.
    hop_limit: int | None = None
    #: Block2 (RFC 7959) asked for: (block number, SZX); None for the whole representation.
    block2: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class DotsResponse:
    code: Code
    payload: bytes = b""
    content_format: int | None = None
    #: Max-Age in seconds; config freshness, 5.03 retry-after, redirect TTL.
    max_age: int | None = None

    @classmethod
    def with_body(cls, code: Code, payload: bytes, max_age: int | None = None) -> DotsResponse:
        return cls(code, payload, CONTENT_FORMAT_DOTS_CBOR, max_age)

    @property
    def diagnostic(self) -> str:
        """The text of an error response (empty for CBOR bodies)."""
        if self.content_format == CONTENT_FORMAT_DOTS_CBOR:
            return ""
        return self.payload.decode("utf-8", "replace")
