"""Error types of the DOTS core.

``DotsProtocolError`` means the peer did something wrong: it carries the CoAP response code
the RFC prescribes and a diagnostic text, and knows how to render itself as a response.
``DotsUsageError`` means our own code misused the core: it is a bug, never sent to a peer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import ClassVar

from gateway.dots.codes import CONTENT_FORMAT_TEXT, Code
from gateway.dots.message import DotsResponse


def safe_int(value: int) -> str:
    """An integer for a diagnostic: Python refuses str() of huge ones, and peers send them."""
    if value.bit_length() > 64:
        return f"<{value.bit_length()}-bit integer>"
    return str(value)


class DotsError(Exception):
    """Base of every error the core raises on purpose."""


class DotsUsageError(DotsError):
    """Local misuse of the API (a bug in the caller), not a peer fault."""


class DotsProtocolError(DotsError):
    """A peer fault that has a defined DOTS/CoAP answer."""

    code: ClassVar[Code] = Code.BAD_REQUEST

    def __init__(self, diagnostic: str) -> None:
        super().__init__(diagnostic)
        self.diagnostic = diagnostic

    def to_response(self) -> DotsResponse:
        """The response to send: the code with a UTF-8 diagnostic (RFC 9132 §9, RFC 7252 §5.5.2)."""
        return DotsResponse(
            code=self.code,
            payload=self.diagnostic.encode("utf-8"),
            content_format=CONTENT_FORMAT_TEXT,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.dotted}: {self.diagnostic!r})"


class MalformedPayload(DotsProtocolError):
    """The body is not decodable CBOR, or its structure does not match the YANG tree."""

    code = Code.BAD_REQUEST


class InvalidValue(DotsProtocolError):
    """A field is present with a value the RFC forbids (RFC 9132 §4.4.1.3, §4.5.2)."""

    code = Code.BAD_REQUEST


class MissingAttribute(DotsProtocolError):
    """A mandatory attribute or Uri-Path parameter is absent."""

    code = Code.BAD_REQUEST


class InvalidPath(DotsProtocolError):
    """The Uri-Path or Uri-Query violates RFC 9132 §4.2, §4.4.1.1 ordering/emptiness rules."""

    code = Code.BAD_REQUEST


class UnknownRequiredKeys(DotsProtocolError):
    """Comprehension-required keys we do not understand (RFC 9132 §6): 4.00 naming them."""

    code = Code.BAD_REQUEST

    def __init__(self, keys: Iterable[int]) -> None:
        self.keys = tuple(sorted(set(keys)))
        super().__init__(
            "unknown comprehension-required CBOR keys: " + ", ".join(map(safe_int, self.keys))
        )


class RequiredKeysNotActedOn(UnknownRequiredKeys):
    """Registered comprehension-required keys a DOTS server does not implement: it answers
    as if it did not know them (RFC 9132 §6) instead of silently ignoring what the client
    asked for. 4.00. (RFC 9133's acl-list, the one such extension registered so far, is
    acted on by the server core; the check stays for keys the table gains later.)"""

    def __init__(self, keys: Iterable[int], names: Iterable[str]) -> None:
        super().__init__(keys)
        self.diagnostic = ("comprehension-required CBOR keys this server does not act on: "
                           + ", ".join(names))
        self.args = (self.diagnostic,)


class NotAuthorized(DotsProtocolError):
    """The client may not do this (RFC 9132 §8, §9: 4.01)."""

    code = Code.UNAUTHORIZED


class NotFound(DotsProtocolError):
    """Unknown mid or sid, or no mitigation at all for this client (RFC 9132 §4.4.2)."""

    code = Code.NOT_FOUND


class MethodNotAllowed(DotsProtocolError):
    code = Code.METHOD_NOT_ALLOWED


class UnsupportedContentFormat(DotsProtocolError):
    """A Content-Format other than application/dots+cbor (RFC 9132 §9: 4.15)."""

    code = Code.UNSUPPORTED_CONTENT_FORMAT


class UnacceptableConfig(DotsProtocolError):
    """Session configuration values outside what the server accepts (RFC 9132 §4.5.2: 4.22)."""

    code = Code.UNPROCESSABLE_ENTITY


class ServiceUnavailable(DotsProtocolError):
    """The server cannot act now; ``retry_after`` becomes Max-Age (RFC 9132 §4.4.3, §9)."""

    code = Code.SERVICE_UNAVAILABLE

    def __init__(self, diagnostic: str, retry_after: int | None = None) -> None:
        super().__init__(diagnostic)
        self.retry_after = retry_after

    def to_response(self) -> DotsResponse:
        response = super().to_response()
        if self.retry_after is None:
            return response
        return replace(response, max_age=self.retry_after)
