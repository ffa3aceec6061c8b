"""Request bodies in RFC 7959 Block1 blocks on the server side.

Block1 is a critical option (RFC 7252 §5.4.1): a server that took the first block's payload
for the whole body, as ours did, answered a peer that splits a large mitigation request
(libcoap's ``coap-client -b``, aiocoap) with "4.00 undecodable CBOR". ``Block1Bodies`` (one
per session) reassembles such bodies, keyed by method, resource and Request-Tag (RFC 9175):
blocks come one at a time, in order (RFC 7959 §2.5, atomic transfer), each answered 2.31
Continue with the Block1 option echoed (again for a block sent twice: the 2.31 was lost);
the last one hands the whole request to the core,
whose answer echoes the last block (``qblock.send_answer``). A block that does not follow its
predecessor gets 4.08 Request Entity Incomplete, a body beyond ``MAX_BODY_BLOCKS`` blocks
4.13 with Size1 (RFC 7959 §2.9). Partial bodies expire like Q-Block1 ones.
"""

from __future__ import annotations

import logging

from gateway.coap.errors import BadOptionError
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber, encode_uint
from gateway.coap.qblock import (
    MAX_BODY_BLOCKS,
    NON_PARTIAL_TIMEOUT,
    REQUEST_TAG,
    Reassembly,
    block_count,
)
from gateway.dots.codes import Code
from gateway.server.qblock import BODIES_PER_SESSION, CONTINUE, BodyKey, Respond, Whole

log = logging.getLogger(__name__)


class Block1Bodies:
    """Request bodies under way in Block1 on one session (see the module docstring)."""

    __slots__ = ("_bodies",)

    def __init__(self) -> None:
        self._bodies: dict[BodyKey, Reassembly] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def receive(self, msg: CoapMessage, block: Block, now: float) -> Respond | Whole:
        self._expire(now)
        key: BodyKey = (msg.code, msg.uri_path, msg.uri_query, msg.option(REQUEST_TAG) or b"")
        size1 = msg.size1 if block.num == 0 else None
        if block.szx > 6 or (size1 is not None
                             and block_count(size1, block.szx) > MAX_BODY_BLOCKS):
            self._bodies.pop(key, None)
            largest = MAX_BODY_BLOCKS << (min(block.szx, 6) + 4)  # bytes, for Size1
            return Respond(msg.response(int(Code.REQUEST_ENTITY_TOO_LARGE),
                                        payload=b"body too large for Block1 here",
                                        options=((OptionNumber.SIZE1, encode_uint(largest)),)))
        body = self._bodies.get(key)
        if block.num == 0:  # a new body (or the same one started again)
            self._bodies.pop(key, None)
            while len(self._bodies) >= BODIES_PER_SESSION:  # the oldest gives way
                del self._bodies[next(iter(self._bodies))]
            body = self._bodies[key] = Reassembly(block.szx, now)
        elif (body is not None and block.more and block.num == body.highest
              and block.szx == body.szx):
            # The last block again: our 2.31 was lost and the client sent it once more.
            return Respond(msg.response(CONTINUE).with_options(
                (OptionNumber.BLOCK1, Block(block.num, True, block.szx).encode())))
        elif body is None or block.num != body.highest + 1 or block.szx != body.szx:
            # RFC 7959 §2.9.2: not the block that follows the ones we hold.
            self._bodies.pop(key, None)
            return Respond(msg.response(int(Code.REQUEST_ENTITY_INCOMPLETE),
                                        payload=b"Block1 block out of sequence: start again "
                                        b"with block 0"))
        if not body.add(block, msg.payload, now):
            self._bodies.pop(key, None)
            return Respond(msg.response(int(Code.BAD_REQUEST),
                                        payload=b"Block1 block does not fit its body"))
        if block.more:
            return Respond(msg.response(CONTINUE).with_options(
                (OptionNumber.BLOCK1, Block(block.num, True, block.szx).encode())))
        del self._bodies[key]
        whole = msg.without_options(OptionNumber.SIZE1, REQUEST_TAG)
        return Whole(CoapMessage(whole.mtype, whole.code, whole.mid, whole.token,
                                 whole.options, body.body()))

    def _expire(self, now: float) -> None:
        for key, body in list(self._bodies.items()):
            if now - body.last_at > NON_PARTIAL_TIMEOUT:
                log.info("partial Block1 body dropped after %g s: %d blocks of /%s",
                         NON_PARTIAL_TIMEOUT, body.received, "/".join(key[1]))
                del self._bodies[key]


def block1(msg: CoapMessage) -> Block | None:
    """The request's Block1 when the body comes in several blocks (None: none, a single
    block 0 without M, or an option that does not decode: the layer answers that one)."""
    try:
        block = msg.block1
    except BadOptionError:
        return None
    if block is None or (block.num == 0 and not block.more):
        return None
    return block

