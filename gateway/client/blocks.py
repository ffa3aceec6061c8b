"""Block-wise answers for the client role (RFC 7959 §2.4, RFC 9132 §4.4.2).

A DOTS server sends a representation larger than one datagram (a client's list of many
mitigations) in blocks: the first with Block2 (more) and an ETag; the client GETs the
following blocks and joins them. ``BlockTracker`` remembers, per response token, the Block2
and ETag of answers as the channel interprets them; ``SignalChannel._send`` then fetches the
rest with ``fetch_remaining`` and returns the whole representation as one reply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from gateway.client.connect import NetworkError
from gateway.client.messages import Reply
from gateway.coap.errors import BadOptionError
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block
from gateway.dots.message import DotsRequest

#: Most blocks one representation may take (x 1024 bytes): bounds a server that never ends.
MAX_BLOCKS = 1024
#: Answers remembered at once (only those being joined matter).
MAX_TRACKED = 256
#: A changed ETag means the representation changed meanwhile: start again this often.
RESTARTS = 3

BlockInfo = tuple[Block, bytes | None]
Send = Callable[[DotsRequest], Awaitable[Reply]]
Interpret = Callable[[DotsRequest, CoapMessage, Reply], Reply]


class BlockTracker:
    def __init__(self) -> None:
        self._blocks: dict[bytes, BlockInfo] = {}

    def note(self, message: CoapMessage) -> None:
        try:
            block = message.block2
        except BadOptionError:
            return
        if block is not None:
            self._blocks[message.token] = (block, message.etag)
            while len(self._blocks) > MAX_TRACKED:
                self._blocks.pop(next(iter(self._blocks)))

    def take(self, token: bytes) -> BlockInfo | None:
        return self._blocks.pop(token, None)


async def fetch_remaining(request: DotsRequest, first: Reply, block: BlockInfo,
                          blocks: BlockTracker, send: Send, interpret: Interpret) -> Reply:
    """The whole representation whose first block ``first`` is: the following blocks are
    GET with Block2 NUM (same size), checked against the first ETag."""
    for _attempt in range(RESTARTS):
        payload, etag = bytearray(first.response.payload), block[1]
        num, szx, more = block[0].num + 1, block[0].szx, block[0].more
        while more and num < MAX_BLOCKS:
            part = await send(replace(request, observe=None, block2=(num, szx)))
            info = blocks.take(part.token)
            if not part.ok:
                return part
            if info is None or info[1] != etag:
                break  # changed (or blocks stopped): start again
            payload += part.response.payload
            num, more = num + 1, info[0].more
        else:
            if more:
                raise NetworkError(f"more than {MAX_BLOCKS} blocks in one representation")
            whole = CoapMessage(None, int(request.method), 0, first.token).response(
                first.raw_code, payload=bytes(payload),
                content_format=first.response.content_format,
                max_age=first.response.max_age, observe=first.observe)
            return interpret(request, whole, first)
        first = await send(replace(request, observe=None, block2=(0, block[0].szx)))
        restart = blocks.take(first.token)
        if restart is None or not restart[0].more or not first.ok:
            return first
        block = restart
    raise NetworkError("the representation kept changing while it was fetched in blocks")
