"""Block2 and ETag for representations that do not fit one datagram (RFC 7959).

Pure function of a response message and the Block2 option asked for.
"""

from __future__ import annotations

import hashlib

from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber, encode_uint
from gateway.dots.codes import Code

#: Block2 size for representations that do not fit one datagram (RFC 9132 §4.4.2, RFC 7959):
#: SZX 6 = 1024 bytes, which with DTLS and CoAP overhead fits the 1280-byte IPv6 minimum.
BLOCK_SZX = 6
BLOCK_SIZE = 1 << (BLOCK_SZX + 4)


def _block2(response: CoapMessage, requested: Block | None) -> CoapMessage:
    """Serve a representation that does not fit one datagram block by block (RFC 7959).

    RFC 9132 §4.4.2: Block2 with NUM=0 when the list does not fit, an ETag for dynamic
    content, Size2 with the total. A client asking for block NUM gets that slice of the
    current representation; the ETag tells it whether the representation changed.
    """
    payload = response.payload
    if requested is None and len(payload) <= BLOCK_SIZE:
        return response
    szx = min(requested.szx, BLOCK_SZX) if requested is not None else BLOCK_SZX
    size = 1 << (szx + 4)
    num = requested.num if requested is not None else 0
    if requested is not None and requested.szx > szx:
        num = requested.offset // size
    start = num * size
    if start >= len(payload) and payload:
        return CoapMessage(None, int(Code.BAD_OPTION), 0, response.token, (),
                           b"Block2 number beyond the end of the representation")
    chunk = payload[start:start + size]
    more = start + size < len(payload)
    etag = hashlib.sha256(payload).digest()[:8]
    drop = (OptionNumber.ETAG, OptionNumber.BLOCK2, OptionNumber.SIZE2)
    options = [o for o in response.options if o[0] not in drop]
    options += [(OptionNumber.ETAG, etag), (OptionNumber.BLOCK2, Block(num, more, szx).encode())]
    if num == 0:
        options.append((OptionNumber.SIZE2, encode_uint(len(payload))))
    return CoapMessage(None, response.code, 0, response.token, tuple(options), chunk)
