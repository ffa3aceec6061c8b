"""The UDP form of a CoAP message (RFC 7252 §3): the 4-byte header with version, type,
token length, code and message ID, then the token and the option block.

Used for DTLS datagrams. :func:`decode_udp` raises only :class:`CoapFormatError`, carrying
the type and message ID when the header could be read, so that the message layer can answer
a malformed Confirmable message with a Reset.
"""

from __future__ import annotations

from gateway.coap.codes import EMPTY, MessageType
from gateway.coap.errors import CoapFormatError, CoapUsageError
from gateway.coap.message import CoapMessage, Option, unchecked_message
from gateway.coap.option_codec import decode_options, encode_options

_TYPES = (MessageType.CON, MessageType.NON, MessageType.ACK, MessageType.RST)


def decode_udp(data: bytes) -> CoapMessage:
    """Decode one datagram; raises :class:`CoapFormatError` (with the header's type and
    message ID when they could be read) on any malformation."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) < 4:
        raise CoapFormatError("shorter than the 4-byte header")
    first = data[0]
    if first >> 6 != 1:  # RFC 7252 §3: unknown versions are silently ignored
        raise CoapFormatError(f"version {first >> 6}")
    mtype = _TYPES[first >> 4 & 3]
    mid = data[2] << 8 | data[3]
    tkl = first & 0x0F
    code = data[1]
    if tkl > 8:  # RFC 7252 §3: lengths 9-15 are reserved
        raise CoapFormatError(f"token length {tkl}", mtype=mtype, mid=mid)
    if code == EMPTY and len(data) != 4:  # RFC 7252 §4.1: nothing after the MID
        raise CoapFormatError("empty message with bytes after the header", mtype=mtype, mid=mid)
    pos = 4 + tkl
    if len(data) < pos:
        raise CoapFormatError("truncated token", mtype=mtype, mid=mid)
    tail = data[pos:] if len(data) - pos <= _TAIL_CACHED else None
    decoded = _tails.get(tail) if tail is not None else None
    if decoded is None:
        try:
            decoded = decode_options(data, pos)
        except CoapFormatError as exc:
            exc.mtype, exc.mid = mtype, mid
            raise
        if tail is not None:
            if len(_tails) >= _TAILS:
                _tails.clear()
            _tails[tail] = decoded
    return unchecked_message(mtype, code, mid, data[4:pos], decoded[0], decoded[1])


#: Options and payload by the bytes after the token, for short messages. Every heartbeat
#: (and most other requests a client repeats) differs from the last one only in its message
#: ID and token: its option block and body decode to the same values, so the decoded ones
#: (immutable) are kept and shared. The same option tuple then also hits the caches keyed
#: by it further up (``check_options``, ``request_options``). Bounded; emptied when full.
_tails: dict[bytes, tuple[tuple[Option, ...], bytes]] = {}
_TAILS = 1024
_TAIL_CACHED = 64


def encode_udp(msg: CoapMessage) -> bytes:
    mtype = msg.mtype
    if mtype is None:
        raise CoapUsageError("a UDP message needs a type")
    if msg.code == EMPTY and (msg.token or msg.options or msg.payload):
        raise CoapUsageError("an empty message carries no token, options or payload")
    return encode_udp_fields(mtype, msg.code, msg.mid, msg.token, msg.options, msg.payload)


def encode_udp_fields(mtype: int, code: int, mid: int, token: bytes,
                      options: tuple[Option, ...], payload: bytes) -> bytes:
    """The datagram for these fields, without building a :class:`CoapMessage` first: the
    message layer sends with its own type, message ID and token, and the fields it passes
    come from checked messages."""
    out = bytearray((0x40 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF))
    out += token
    if options:
        encode_options(options, out)
    if payload:
        out.append(0xFF)
        out += payload
    return bytes(out)


def empty_ack(mid: int) -> bytes:
    return bytes((0x60, 0, mid >> 8, mid & 0xFF))


def reset(mid: int) -> bytes:
    return bytes((0x70, 0, mid >> 8, mid & 0xFF))

