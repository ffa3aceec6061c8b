"""The errors the CoAP package raises on purpose, as one family under :class:`CoapError`.

:class:`CoapFormatError` and its subclasses mean the peer sent something malformed;
:class:`CoapUsageError` means our own code misused the package. Decoders raise nothing else
on bad input, whatever the bytes (a hypothesis test checks it).
"""

from __future__ import annotations

from typing import Any

from gateway.coap.codes import MessageType
from gateway.coap.options import option_name


class CoapError(Exception):
    """Base of the errors this package raises on purpose."""


class CoapUsageError(CoapError):
    """Our own code misused the CoAP layer (a bug), never caused by peer input."""


class CoapFormatError(CoapError, ValueError):
    """Bytes from the peer are not a well-formed CoAP message (RFC 7252 §3, RFC 8323 §3.2).

    ``mtype`` and ``mid`` are set when the UDP header could be read before the fault was
    found, so that the message layer can reject a Confirmable message with a Reset
    (RFC 7252 §4.2); for a Non-confirmable one it drops the message silently (§4.3).
    """

    def __init__(self, reason: str, *, mtype: MessageType | None = None,
                 mid: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.mtype = mtype
        self.mid = mid


class MessageTooLarge(CoapFormatError):
    """The message (or the frame a TCP header announces) exceeds our size limit."""

    def __init__(self, size: int, limit: int, **header: Any) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit}", **header)
        self.size = size
        self.limit = limit


class BadOptionError(CoapFormatError):
    """An option value does not fit its format (RFC 7252 §5.4.3: treat it as unrecognized).

    Raised only by the typed accessors of :class:`~gateway.coap.message.CoapMessage`.
    Messages that come out of a message layer had such options removed (elective) or were
    rejected (critical), so roles do not meet this error.
    """

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"{option_name(number)}: {reason}")
        self.number = number
