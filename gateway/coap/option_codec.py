"""The option block of a CoAP message on the wire (RFC 7252 §3.1): each option as a delta
from the previous number, a length and the value, then the payload marker and the payload.

UDP datagrams and TCP frames carry the same block after their different headers
(RFC 8323 §3.2), so :mod:`gateway.coap.udp_codec` and :mod:`gateway.coap.tcp_framing` both
use this module. Decoding raises only :class:`CoapFormatError`.
"""

from __future__ import annotations

from gateway.coap.errors import CoapFormatError
from gateway.coap.message import MAX_OPTION_NUMBER, Option


def encode_options(options: tuple[Option, ...], out: bytearray) -> None:
    """Append the option block for ``options`` (sorted by number) to ``out``."""
    previous = 0
    for number, value in options:
        delta = number - previous
        previous = number
        length = len(value)
        if delta < 13 and length < 13:
            out.append(delta << 4 | length)
        else:
            _append_extended_header(out, delta, length)
        out += value


def _append_extended_header(out: bytearray, delta: int, length: int) -> None:
    if delta < 13:
        d_nibble, d_ext = delta, b""
    elif delta < 269:
        d_nibble, d_ext = 13, bytes((delta - 13,))
    else:
        d_nibble, d_ext = 14, (delta - 269).to_bytes(2, "big")
    if length < 13:
        l_nibble, l_ext = length, b""
    elif length < 269:
        l_nibble, l_ext = 13, bytes((length - 13,))
    else:
        l_nibble, l_ext = 14, (length - 269).to_bytes(2, "big")
    out.append(d_nibble << 4 | l_nibble)
    out += d_ext
    out += l_ext


def decode_options(data: bytes, pos: int) -> tuple[tuple[Option, ...], bytes]:
    """Options from ``pos`` to the payload marker or the end (RFC 7252 §3.1)."""
    options: list[Option] = []
    end = len(data)
    number = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            if pos == end:  # RFC 7252 §3: a marker followed by nothing is a format error
                raise CoapFormatError("payload marker followed by an empty payload")
            return tuple(options), data[pos:]
        delta = byte >> 4
        length = byte & 0x0F
        if delta >= 13:
            if delta == 13:
                if pos >= end:
                    raise CoapFormatError("truncated option delta")
                delta = data[pos] + 13
                pos += 1
            elif delta == 14:
                if pos + 2 > end:
                    raise CoapFormatError("truncated option delta")
                delta = (data[pos] << 8 | data[pos + 1]) + 269
                pos += 2
            else:  # RFC 7252 §3.1: nibble 15 is reserved outside the payload marker
                raise CoapFormatError("option delta nibble 15")
        if length >= 13:
            if length == 13:
                if pos >= end:
                    raise CoapFormatError("truncated option length")
                length = data[pos] + 13
                pos += 1
            elif length == 14:
                if pos + 2 > end:
                    raise CoapFormatError("truncated option length")
                length = (data[pos] << 8 | data[pos + 1]) + 269
                pos += 2
            else:
                raise CoapFormatError("option length nibble 15")
        number += delta
        if number > MAX_OPTION_NUMBER:
            raise CoapFormatError("option number beyond 65535")
        stop = pos + length
        if stop > end:
            raise CoapFormatError("truncated option value")
        options.append((number, data[pos:stop]))
        pos = stop
    return tuple(options), b""
