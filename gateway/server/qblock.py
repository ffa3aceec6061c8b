"""Q-Block on the server side (RFC 9177): bodies received in Q-Block1, answers sent in
Q-Block2, and the answer to a peer's probe for Q-Block support.

``QBlockBodies`` (one per DTLS session) reassembles request bodies that arrive in Q-Block1
blocks, keyed by method, resource and Request-Tag: it says, for each block, whether to wait
for more, to answer 2.31 Continue (the set of MAX_PAYLOADS blocks is complete), 4.08 with
the missing block numbers (a set ended with gaps, or blocks asked for again arrived and
others are still missing), or to hand the whole body to the core. Partial bodies expire
after NON_PARTIAL_TIMEOUT and are bounded in number and size.

``send_answer`` sends a GET answer the way the request asked: Q-Block2 blocks (the first
as the response, the rest of the burst as NON responses with the same token), Block2, or
whole. ``probe_answer`` answers ``GET /.well-known/core`` (libcoap's probe, RFC 9177 §4.1)
and an empty-path GET carrying Q-Block2 (go-dots' probe): before this, the empty path drew
4.04 and the peer fell back to Block2.

Asyncio-free glue between the CoAP layer and the roles; decisions on block numbers live in
``gateway.coap.qblock``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.coap.errors import BadOptionError
from gateway.coap.events import RequestKey
from gateway.coap.layer import MessageLayer
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber, encode_uint
from gateway.coap.qblock import (
    CONTENT_FORMAT_MISSING_BLOCKS,
    MAX_BODY_BLOCKS,
    MAX_PAYLOADS,
    NON_PARTIAL_TIMEOUT,
    REQUEST_TAG,
    Reassembly,
    block_count,
    cut_block,
    encode_missing_blocks,
    requested_blocks,
)
from gateway.dots.codes import Code
from gateway.server.blocks import BLOCK_SZX, _block2

log = logging.getLogger(__name__)

CONTINUE = 95  # 2.31 (RFC 9177 §4.3; RFC 7959 §2.9.1)
#: Bodies one session may have under way at once.
BODIES_PER_SESSION = 4
#: How long a finished body's later blocks (duplicates, resends) are recognised as such.
FINISHED_MEMORY = 30.0
#: RFC 6690 link format (Content-Format 40).
CONTENT_FORMAT_LINK = 40
LINKS = (b'</.well-known/dots/mitigate>;rt="dots",</.well-known/dots/config>;rt="dots",'
         b'</.well-known/dots/hb>;rt="dots"')

BodyKey = tuple[int, tuple[str, ...], tuple[str, ...], bytes]


@dataclass(frozen=True, slots=True)
class Wait:
    """Not a response yet: more blocks of the set are on their way."""


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer this block's request with ``message`` (2.31, 4.08, 4.13, 4.00)."""

    message: CoapMessage


@dataclass(frozen=True, slots=True)
class Whole:
    """The body is complete: answer ``message`` (the request with the whole body)."""

    message: CoapMessage


class QBlockBodies:
    """Request bodies under way in Q-Block1 on one session (see the module docstring)."""

    __slots__ = ("_bodies", "_finished", "_reported")

    def __init__(self) -> None:
        self._bodies: dict[BodyKey, Reassembly] = {}
        self._reported: dict[BodyKey, set[int]] = {}
        #: Bodies answered lately, for a resent last block (our answer was lost).
        self._finished: dict[BodyKey, tuple[float, CoapMessage]] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def receive(self, msg: CoapMessage, block: Block, now: float) -> Wait | Respond | Whole:
        self._expire(now)
        key: BodyKey = (msg.code, msg.uri_path, msg.uri_query,
                        msg.option(REQUEST_TAG) or b"")
        finished = self._finished.get(key) if block.num else None
        if finished is not None:
            if block.more:
                return Wait()  # a late copy of a block of a body already answered
            # The last block again: the client did not get our answer; answer it again (a
            # DOTS PUT of the same body is idempotent).
            done = finished[1]
            return Whole(CoapMessage(msg.mtype, done.code, msg.mid, msg.token, done.options,
                                     done.payload))
        size1 = msg.size1 if block.num == 0 else None
        if block.szx > 6 or (size1 is not None
                             and block_count(size1, block.szx) > MAX_BODY_BLOCKS):
            return Respond(msg.response(int(Code.REQUEST_ENTITY_TOO_LARGE),
                                        payload=b"body too large for Q-Block1 here",
                                        options=((OptionNumber.SIZE1,
                                                  encode_uint(MAX_BODY_BLOCKS << 10)),)))
        body = self._bodies.get(key)
        if body is None or body.szx != block.szx:
            while len(self._bodies) >= BODIES_PER_SESSION:  # the oldest gives way
                oldest = next(iter(self._bodies))
                self._bodies.pop(oldest)
                self._reported.pop(oldest, None)
            body = self._bodies[key] = Reassembly(block.szx, now)
            self._finished.pop(key, None)
        if not body.add(block, msg.payload, now):
            self._bodies.pop(key, None)
            self._reported.pop(key, None)
            return Respond(msg.response(int(Code.BAD_REQUEST),
                                        payload=b"Q-Block1 block does not fit its body"))
        if body.complete:
            self._bodies.pop(key)
            self._reported.pop(key, None)
            whole = msg.without_options(OptionNumber.Q_BLOCK1, OptionNumber.SIZE1, REQUEST_TAG)
            assembled = CoapMessage(whole.mtype, whole.code, whole.mid, whole.token,
                                    whole.options, body.body())
            self._finished[key] = (now, assembled)
            while len(self._finished) > BODIES_PER_SESSION:
                del self._finished[next(iter(self._finished))]
            return Whole(assembled)
        reported = self._reported.get(key)
        ends_set = block.num % MAX_PAYLOADS == MAX_PAYLOADS - 1 or not block.more
        refill = reported is not None and block.num in reported
        if not ends_set and not refill:
            return Wait()
        if refill:
            assert reported is not None
            reported.discard(block.num)
            if any(not body.has(num) for num in reported):
                return Wait()  # more of the blocks asked for are on their way
        missing = body.missing()
        if missing:
            self._reported[key] = set(missing)
            return Respond(msg.response(int(Code.REQUEST_ENTITY_INCOMPLETE),
                                        payload=encode_missing_blocks(missing),
                                        content_format=CONTENT_FORMAT_MISSING_BLOCKS))
        self._reported.pop(key, None)
        # RFC 9177 §4.3: 2.31 says this set arrived whole; send the next one.
        return Respond(msg.response(CONTINUE).with_options(
            (OptionNumber.Q_BLOCK1, Block(body.highest, True, block.szx).encode())))

    def _expire(self, now: float) -> None:
        for key, body in list(self._bodies.items()):
            if now - body.last_at > NON_PARTIAL_TIMEOUT:
                log.info("partial Q-Block1 body dropped after %g s: %d blocks of /%s",
                         NON_PARTIAL_TIMEOUT, body.received, "/".join(key[1]))
                del self._bodies[key]
                self._reported.pop(key, None)
        for key, (at, _whole) in list(self._finished.items()):
            if now - at > FINISHED_MEMORY:
                del self._finished[key]


def q_block1(msg: CoapMessage) -> Block | None:
    """The request's Q-Block1 (None: none, or one that does not decode: then the request is
    taken whole, as a peer without Q-Block would see it)."""
    try:
        return msg.q_block1
    except BadOptionError:
        return None


def q_block2(msg: CoapMessage) -> tuple[Block, ...]:
    try:
        return msg.q_block2
    except BadOptionError:
        return ()


def probe_answer(msg: CoapMessage) -> CoapMessage | None:
    """The answer to a Q-Block probe or a resource-discovery GET (see the module)."""
    if msg.code != 1:
        return None
    path = tuple(s for s in msg.uri_path if s)
    if path == (".well-known", "core") or (not path and q_block2(msg)):
        return msg.response(int(Code.CONTENT), payload=LINKS,
                            content_format=CONTENT_FORMAT_LINK)
    return None


def send_answer(layer: MessageLayer, key: RequestKey, request: CoapMessage,
                response: CoapMessage, payload: bytes, now: float, *,
                q_block_peer: bool = False) -> int:
    """Send ``response`` (whose body is ``payload``) to ``request``: in Q-Block2 blocks when
    the request carries Q-Block2 (RFC 9177 §4.4), or when it carries neither Block2 nor
    Observe but the peer probed for Q-Block on this session (``q_block_peer``: libcoap
    probes once, then sends its GETs without Q-Block2 and expects Q-Block2); else Block2
    as before (RFC 7959). Returns the number of datagrams (blocks) sent."""
    if not q_block_peer and not request.has_any_option(_BLOCKWISE):
        # Most requests: no block option to echo or to serve, one response (the path
        # below decides the same after scanning the options once for each of them).
        layer.send_response(key, _block2(response, None), now)
        return 1
    response = _echo_block1(request, response)
    wanted = q_block2(request)
    if (not wanted and q_block_peer and len(payload) > 1 << (BLOCK_SZX + 4)
            and _requested_block2(request) is None and not request.has_option(
                OptionNumber.OBSERVE)):
        wanted = (Block(0, True, BLOCK_SZX),)  # the first set, as for NUM 0 with M
    if not wanted or response.code >> 5 != 2:
        layer.send_response(key, _block2(response, _requested_block2(request)), now)
        return 1
    szx = min(wanted[0].szx, BLOCK_SZX)
    total = block_count(len(payload), szx)
    numbers = requested_blocks([Block(b.num, b.more, szx) for b in wanted], total) or [0]
    blocks = [cut_block(response, payload, num, szx) for num in numbers]
    layer.send_response(key, blocks[0], now)
    for block in blocks[1:]:  # RFC 9177 §4.4: the rest of the burst as NON responses
        layer.send_notification(key.token, block, now, confirmable=False)
    return len(blocks)


_BLOCKWISE = frozenset({OptionNumber.BLOCK1, OptionNumber.BLOCK2, OptionNumber.Q_BLOCK2})


def _echo_block1(request: CoapMessage, response: CoapMessage) -> CoapMessage:
    """RFC 7959 §2.3: the answer to a body's last Block1 block carries that block's Block1
    (``gateway.server.block1`` reassembled the body and kept the option)."""
    try:
        block = request.block1
    except BadOptionError:
        return response
    if block is None:
        return response
    return response.with_options(
        (OptionNumber.BLOCK1, Block(block.num, False, block.szx).encode()))


def _requested_block2(request: CoapMessage) -> Block | None:
    try:
        return request.block2
    except BadOptionError:
        return None


def notification_block(payload_length: int, szx: int | None) -> Block | None:
    """RFC 7959 §2.6: a notification of a registration that asked for a block size is sent
    in blocks of that size (the first one; the client GETs the rest)."""
    if szx is None or payload_length <= 1 << (min(szx, BLOCK_SZX) + 4):
        return None
    return Block(0, False, min(szx, BLOCK_SZX))

