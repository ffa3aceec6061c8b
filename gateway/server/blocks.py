"""Block2 and ETag for representations that do not fit one datagram (RFC 7959).

``_block2`` is a pure function of a response message and the Block2 option asked for.
``BlockSnapshots`` keeps, per session, the representation a block-wise transfer started
from, so that the following blocks are slices of the same bytes under the same ETag, as
libcoap's large-body responses do. Without it each block is cut from a representation made
anew, whose lifetimes tick every second: on a busy machine a transfer that spans a second
boundary sees the ETag change and starts again, until the client gives up.
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
#: How long after the last request of a transfer its later blocks are still served from the
#: first block's representation (sliding: each request of the transfer renews it). Longer
#: than the silences of a transfer under loss (Q-Block2 asks again after 4 s of silence,
#: Block2 after 3 s: at 30% loss three silent rounds in a row are common enough that 10 s
#: made transfers restart and fail); short enough that a stalled one is not kept long.
SNAPSHOT_TTL = 30.0
#: Transfers one session may have under way at once (a client fetches one list at a time).
SNAPSHOTS_PER_SESSION = 4

Resource = tuple[object, ...]


class BlockSnapshots:
    """Per session: the representation each block-wise transfer started from."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[Resource, tuple[float, bytes]] = {}

    def representation(self, resource: Resource, requested: Block | None, payload: bytes,
                       now: float, etag: bytes | None = None) -> bytes:
        """The bytes to cut the requested block from: the held snapshot for a later block of a
        transfer still under way, else ``payload`` (held when it starts a block-wise one)."""
        if requested is not None and requested.num > 0:
            held = self._held.get(resource)
            if held is not None and now - held[0] < SNAPSHOT_TTL:
                # Sliding: a transfer still asking (blocks resent under loss, Q-Block sets
                # and missing blocks) keeps its representation; one left idle loses it.
                self._held[resource] = (now, held[1])
                return held[1]
            return payload
        held = self._held.get(resource)
        if (etag is not None and held is not None and now - held[0] < SNAPSHOT_TTL
                and hashlib.sha256(held[1]).digest()[:8] == etag):
            # Block 0 asked for again with the ETag the client holds (a Q-Block2 client
            # missing the first block): the same representation, not a new one.
            self._held[resource] = (now, held[1])
            return held[1]
        self._held.pop(resource, None)
        if len(payload) > BLOCK_SIZE:
            self._held[resource] = (now, payload)
            while len(self._held) > SNAPSHOTS_PER_SESSION:
                del self._held[next(iter(self._held))]
        return payload


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
