"""Our own lean CoAP: framing and message-layer state for the DOTS signal channel, sans-I/O.

Owns the CoAP wire formats (RFC 7252 §3 for DTLS/UDP, RFC 8323 §3.2 for TLS/TCP), option
formats and the rules for unknown options, and the per-session message layer: message IDs,
tokens, retransmission, deduplication, piggybacked and separate responses, Resets, and the
RFC 8323 signaling messages. The DTLS/TLS transports feed it decrypted bytes and send what it
returns; the roles translate its :class:`CoapMessage` values to and from the DOTS core's
``DotsRequest``/``DotsResponse``.

It is pure: it must not import asyncio, socket, time, ssl, selectors or aiocoap (nor any
other I/O library). Time arrives as ``now`` arguments, randomness is injected, and every
cache is bounded.

Modules, each importing only those above it:

* ``codes``, ``options``: message types and codes; option numbers, formats and rules.
* ``errors``: the :class:`CoapError` family.
* ``message``: the :class:`CoapMessage` value.
* ``option_codec``, ``udp_codec``, ``tcp_framing``: the wire forms.
* ``events``: what the layers report.
* ``reliability``, ``dedup``: CON retransmission and the peer's message-ID cache (UDP).
* ``tcp_layer``: :class:`TcpLayer` (RFC 8323); ``layer``: :class:`MessageLayer` (RFC 7252).
"""

from gateway.coap.codes import MessageType, format_code
from gateway.coap.errors import (
    BadOptionError,
    CoapError,
    CoapFormatError,
    CoapUsageError,
    MessageTooLarge,
)
from gateway.coap.events import (
    ConnectionAborted,
    CsmReceived,
    Event,
    MessageDropped,
    PongReceived,
    ReleaseReceived,
    RequestFailed,
    RequestKey,
    RequestReceived,
    Reset,
    ResponseReceived,
    ResponseTimedOut,
)
from gateway.coap.layer import MessageLayer
from gateway.coap.message import DEFAULT_MAX_MESSAGE_SIZE, CoapMessage, unknown_critical_options
from gateway.coap.options import (
    DEFAULT_KNOWN_OPTIONS,
    Block,
    OptionNumber,
    SignalCode,
    check_options,
    decode_uint,
    encode_uint,
)
from gateway.coap.reliability import TransmissionParameters
from gateway.coap.tcp_framing import TCP_HARD_MAX_MESSAGE_SIZE, TcpFramer, decode_tcp, encode_tcp
from gateway.coap.tcp_layer import TcpLayer
from gateway.coap.udp_codec import decode_udp, encode_udp

__all__ = [
    "DEFAULT_KNOWN_OPTIONS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "TCP_HARD_MAX_MESSAGE_SIZE",
    "BadOptionError",
    "Block",
    "CoapError",
    "CoapFormatError",
    "CoapMessage",
    "CoapUsageError",
    "ConnectionAborted",
    "CsmReceived",
    "Event",
    "MessageDropped",
    "MessageLayer",
    "MessageTooLarge",
    "MessageType",
    "OptionNumber",
    "PongReceived",
    "ReleaseReceived",
    "RequestFailed",
    "RequestKey",
    "RequestReceived",
    "Reset",
    "ResponseReceived",
    "ResponseTimedOut",
    "SignalCode",
    "TcpFramer",
    "TcpLayer",
    "TransmissionParameters",
    "check_options",
    "decode_tcp",
    "decode_udp",
    "decode_uint",
    "encode_tcp",
    "encode_udp",
    "encode_uint",
    "format_code",
    "unknown_critical_options",
]
