"""Q-Block transfers of the client role over DTLS (RFC 9177).

``q_get``: a GET carrying Q-Block2; the server answers with a burst of up to MAX_PAYLOADS
NON blocks; the next set is asked for with "continue" (Q-Block2 NUM at the set start, M
set) as soon as the current set is whole, and blocks still missing after
NON_RECEIVE_TIMEOUT of silence are asked for by number (one request, one Q-Block2 option
each). Blocks are checked against the first block's ETag; a changed representation starts
the transfer again. A server that answers without Q-Block2 (one that does not implement it,
or a small answer from one that declines) gets its answer back unchanged: the caller then
uses Block2 as before.

``q_put``: a body larger than one block sent in Q-Block1 blocks with a Request-Tag, one set
of MAX_PAYLOADS at a time: 2.31 Continue sends the next set, 4.08 names blocks to send
again, silence resends the set's last block (which makes the server say where it stands),
any other answer is the server's answer to the whole body.

Both return the final ``CoapMessage`` (the reassembled body for ``q_get``), or a failure
reason as ``_send_once`` does. Asyncio glue over ``ClientSession``; block arithmetic lives in
``gateway.coap.qblock``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable

from gateway.client.session import ClientSession
from gateway.coap.errors import BadOptionError, CoapFormatError
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber, encode_uint
from gateway.coap.qblock import (
    CONTENT_FORMAT_MISSING_BLOCKS,
    MAX_PAYLOADS,
    NON_MAX_RETRANSMIT,
    NON_RECEIVE_TIMEOUT,
    REQUEST_TAG,
    Reassembly,
    block_count,
    decode_missing_blocks,
    set_end,
)

log = logging.getLogger("gateway.client.channel")

#: Block size asked for (SZX 6, 1024 bytes): as for Block2 (RFC 9132 §4.4.2).
SZX = 6
#: A representation that keeps changing under a transfer is fetched again this often.
RESTARTS = 3
#: Q-Block2 requests of one transfer kept listening at once (older ones are forgotten;
#: the message layer bounds outstanding exchanges).
LISTENING = 8
CONTINUE = 95  # 2.31
INCOMPLETE = 136  # 4.08

Failure = str
Arrival = tuple[CoapMessage | None, str]


def _q_block2(message: CoapMessage) -> Block | None:
    try:
        blocks = message.q_block2
    except BadOptionError:
        return None
    return blocks[0] if blocks else None


class _Listener:
    """Responses of several requests of one transfer, in one queue."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.queue: asyncio.Queue[Arrival] = asyncio.Queue()
        self.tokens: deque[bytes] = deque()

    def callback(self, response: CoapMessage | None, reason: str) -> None:
        self.queue.put_nowait((response, reason))

    def send(self, message: CoapMessage, lifetime: float, *, multiple: bool) -> None:
        token = self.session.send_request(message, self.callback, confirmable=False,
                                          lifetime=max(lifetime, 0.1), multiple=multiple)
        self.tokens.append(token)
        while len(self.tokens) > LISTENING:
            self.session.forget(self.tokens.popleft())

    def forget_all(self) -> None:
        while self.tokens:
            self.session.forget(self.tokens.popleft())

    async def next(self, wait: float) -> Arrival:
        try:
            return await asyncio.wait_for(self.queue.get(), max(wait, 0.01))
        except TimeoutError:
            return None, "silence"


async def q_get(session: ClientSession, message: CoapMessage, deadline: float,
                clock: Callable[[], float],
                on_resend: Callable[[], None] | None = None) -> CoapMessage | Failure:
    """See the module docstring. ``on_resend`` is called for each request sent again after
    a silence (the channel counts them as retransmissions)."""
    listener = _Listener(session)

    def ask(*blocks: Block, etag: bytes | None = None) -> None:
        asked = message.with_options(*((OptionNumber.Q_BLOCK2, b.encode()) for b in blocks))
        log.debug("Q-Block2 request for %s", ", ".join(
            f"{b.num}{'+' if b.more else ''}" for b in blocks))
        if etag is not None:
            asked = asked.with_options((OptionNumber.ETAG, etag))
        listener.send(asked, deadline - clock(), multiple=True)

    try:
        ask(Block(0, True, SZX))  # M set: the whole first set (libcoap sends one without)
        body: Reassembly | None = None
        etag: bytes | None = None
        count = 0
        asked_upto = MAX_PAYLOADS - 1
        # Rounds of silence in a row: the transfer fails after NON_MAX_RETRANSMIT of them
        # (RFC 9177 §7.2); any block that arrives starts the count again.
        idle = restarts = 0
        first: CoapMessage | None = None
        while True:
            left = deadline - clock()
            if left <= 0:
                return "timeout"
            response, reason = await listener.next(min(NON_RECEIVE_TIMEOUT, left))
            if response is None:
                if reason in ("reset", "bad-option", "closed"):
                    return reason
                if reason != "silence":
                    continue  # a request of ours that ran out (its blocks came or not)
                idle += 1
                if idle > NON_MAX_RETRANSMIT:
                    return "timeout"
                if on_resend is not None:
                    on_resend()
                if body is None:
                    ask(Block(0, True, SZX))
                    continue
                missing = body.missing(min(asked_upto, count - 1))
                if missing:
                    blocks = [Block(num, False, body.szx) for num in missing[:MAX_PAYLOADS]]
                    # Block 0 alone would read as a new transfer: the ETag says which one.
                    ask(*blocks, etag=etag if missing[0] == 0 else None)
                elif asked_upto < count - 1:
                    ask(Block(asked_upto + 1, True, body.szx))
                continue
            block = _q_block2(response)
            if block is None or response.code >> 5 != 2:
                if body is None:
                    return response  # no Q-Block here: the caller goes on as before
                continue
            if body is None or response.etag != etag:
                if body is not None:
                    restarts += 1
                    if restarts > RESTARTS:
                        return "changed"
                    log.info("representation changed during a Q-Block2 transfer: again")
                    listener.forget_all()
                    ask(Block(0, True, SZX))
                    body = None
                    continue
                body, etag = Reassembly(block.szx, clock()), response.etag
            if not body.add(block, response.payload, clock()):
                continue
            idle = 0
            if block.num == 0:
                first = response
            if body.total is not None:
                count = body.total
            elif response.size2 is not None:  # on every block from us, on the first elsewhere
                count = block_count(response.size2, block.szx)
            else:
                count = max(count, block.num + 2)
            if body.complete and first is not None:
                # Q-Block2 stays: it tells the caller the body came in Q-Block.
                whole = first.without_options(OptionNumber.SIZE2)
                return CoapMessage(whole.mtype, whole.code, whole.mid, whole.token,
                                   whole.options, body.body())
            if asked_upto < count - 1 and not body.missing(asked_upto):
                ask(Block(asked_upto + 1, True, body.szx))  # RFC 9177 §4.4: "continue"
                asked_upto = set_end(asked_upto + 1)
    finally:
        listener.forget_all()


async def q_put(session: ClientSession, message: CoapMessage, deadline: float,
                clock: Callable[[], float],
                on_resend: Callable[[], None] | None = None) -> CoapMessage | Failure:
    """See the module docstring; ``on_resend`` as for ``q_get``."""
    payload = message.payload
    size = 1 << (SZX + 4)
    count = block_count(len(payload), SZX)
    tag = (REQUEST_TAG, secrets.token_bytes(4))
    listener = _Listener(session)

    def send(num: int) -> None:
        # Size1 on every block: libcoap's server answers 4.08 "Size1 mismatch" otherwise.
        options = [(OptionNumber.Q_BLOCK1, Block(num, num < count - 1, SZX).encode()), tag,
                   (OptionNumber.SIZE1, encode_uint(len(payload)))]
        block = CoapMessage(None, message.code, 0, b"", message.options + tuple(options),
                            payload[num * size:(num + 1) * size])
        listener.send(block, deadline - clock(), multiple=False)

    try:
        round_: list[int] = list(range(min(MAX_PAYLOADS, count)))
        refill = False
        idle = 0
        for num in round_:
            send(num)
        while True:
            left = deadline - clock()
            if left <= 0:
                return "timeout"
            # The server answers the set's last block at once: NON_RECEIVE_TIMEOUT of
            # silence means that block or its answer was lost.
            response, reason = await listener.next(min(NON_RECEIVE_TIMEOUT, left))
            if response is None:
                if reason in ("reset", "bad-option", "closed"):
                    return reason
                if reason != "silence":
                    continue
                idle += 1
                if idle > NON_MAX_RETRANSMIT:
                    return "timeout"
                if on_resend is not None:
                    on_resend()
                # The set's last block makes the server say where it stands; a refill round
                # holds it too (see below), with the blocks asked for.
                for num in round_ if refill else round_[-1:]:
                    send(num)
                continue
            idle = 0
            if response.code == CONTINUE:
                start = set_end(max(round_)) + 1
                if start >= count:
                    continue  # a late 2.31; the final answer is on its way
                listener.forget_all()
                round_, refill = list(range(start, set_end(start, count) + 1)), False
                for num in round_:
                    send(num)
                continue
            if (response.code == INCOMPLETE
                    and response.content_format == CONTENT_FORMAT_MISSING_BLOCKS):
                try:
                    missing = [n for n in decode_missing_blocks(response.payload) if n < count]
                except CoapFormatError:
                    return response
                if not missing:
                    continue
                listener.forget_all()
                for num in missing:
                    send(num)
                round_, refill = sorted({*missing, max(round_)}), True
                continue
            return response
    finally:
        listener.forget_all()

