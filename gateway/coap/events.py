"""What the CoAP message layers report, and the key that answers a received request.

:class:`~gateway.coap.layer.MessageLayer` (DTLS/UDP) and
:class:`~gateway.coap.tcp_layer.TcpLayer` (TLS/TCP) queue these frozen values; the
transport glue pulls them with ``next_event()`` and hands them to its role. Both layers use
the same request/response events; :class:`Reset` and :class:`ResponseTimedOut` occur over
UDP only, the CSM, Pong, Release and Abort events over TCP only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage

FailureReason = Literal["timeout", "reset", "bad-option"]


@dataclass(frozen=True, slots=True)
class RequestKey:
    """Identifies a received request when answering it. Over TCP only the token counts."""

    token: bytes
    mid: int | None = None
    mtype: MessageType | None = None


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request (never a duplicate); answer it with ``send_response(key, ...)``."""

    message: CoapMessage
    key: RequestKey


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response (or an Observe notification) to the request we sent with this token."""

    token: bytes
    message: CoapMessage


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """Our request ends without a response: no answer in time (``timeout``), the peer
    rejected it (``reset``), or its response had a critical option we cannot process
    (``bad-option``). The token is forgotten."""

    token: bytes
    reason: FailureReason


@dataclass(frozen=True, slots=True)
class Reset:
    """The peer rejected a response or notification we sent (RFC 7252 §4.2, §4.3); for a
    notification this cancels the observation (RFC 7641 §3.6). Resets of our requests are
    reported as :class:`RequestFailed` instead."""

    mid: int
    token: bytes


@dataclass(frozen=True, slots=True)
class ResponseTimedOut:
    """A Confirmable response or notification was never acknowledged (RFC 7641 §4.5: the
    observer is to be removed)."""

    mid: int
    token: bytes


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """Received bytes were discarded (malformed, unexpected, unknown token...); for logs
    and counters. Duplicates are normal and not reported."""

    reason: str


@dataclass(frozen=True, slots=True)
class CsmReceived:
    """TCP: the peer's Capabilities and Settings (RFC 8323 §5.3)."""

    max_message_size: int
    block_wise: bool


@dataclass(frozen=True, slots=True)
class PongReceived:
    """TCP: answer to our Ping; ``rtt`` in seconds."""

    token: bytes
    rtt: float


@dataclass(frozen=True, slots=True)
class ReleaseReceived:
    """TCP: the peer asks us to close the connection (RFC 8323 §5.5)."""

    alternative_addresses: tuple[str, ...]
    hold_off: int | None


@dataclass(frozen=True, slots=True)
class ConnectionAborted:
    """TCP: the connection is unusable; the layer is closed. ``by_peer`` tells whether the
    peer sent Abort or we did (then the Abort bytes are waiting in ``data_to_send``)."""

    diagnostic: str
    by_peer: bool


Event = (RequestReceived | ResponseReceived | RequestFailed | Reset | ResponseTimedOut
         | MessageDropped | CsmReceived | PongReceived | ReleaseReceived | ConnectionAborted)

