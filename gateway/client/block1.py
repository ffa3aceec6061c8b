"""A request body in RFC 7959 Block1 blocks, for the client role over DTLS when Q-Block is
not used (the server refused it with 4.02, or ``q_block`` is off).

A DOTS mitigation request with many targets is larger than one datagram; sent whole over
DTLS it cannot leave at all. ``block1_put`` sends it one block at a time, in order (RFC
7959 §2.5, atomic transfer), with a Request-Tag (RFC 9175) and Size1 on the first block:
2.31 Continue sends the next block, 4.08 (the server lost track) starts again from block 0
(at most ``RESTARTS`` times), any other answer is the server's answer to the whole body. A
block without an answer is sent again (as a new message, at most ``attempts`` times).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber, encode_uint
from gateway.coap.qblock import REQUEST_TAG, block_count

#: 1,024-byte blocks, as for Block2 and Q-Block (RFC 9132 §4.4.2).
SZX = 6
CONTINUE = 95  # 2.31
INCOMPLETE = 136  # 4.08
RESTARTS = 2

#: Sends one message and waits up to the given seconds: the answer, or why none came.
SendOnce = Callable[[CoapMessage, float], Awaitable["CoapMessage | str"]]


def needs_block1(message: CoapMessage) -> bool:
    return len(message.payload) > 1 << (SZX + 4)


async def block1_put(send_once: SendOnce, message: CoapMessage, deadline: float,
                     clock: Callable[[], float], *, attempts: int, wait: float,
                     on_resend: Callable[[], None] | None = None) -> CoapMessage | str:
    """See the module docstring: the final answer, or a failure reason ("timeout",
    "closed", "reset"...)."""
    payload = message.payload
    size = 1 << (SZX + 4)
    count = block_count(len(payload), SZX)
    tag = (REQUEST_TAG, secrets.token_bytes(4))
    restarts = 0
    num = 0
    while True:
        more = num < count - 1
        options = [(OptionNumber.BLOCK1, Block(num, more, SZX).encode()), tag]
        if num == 0:
            options.append((OptionNumber.SIZE1, encode_uint(len(payload))))
        block = CoapMessage(None, message.code, 0, b"", message.options + tuple(options),
                            payload[num * size:(num + 1) * size])
        outcome: CoapMessage | str = "timeout"
        for attempt in range(attempts):
            left = deadline - clock()
            if left <= 0:
                return "timeout"
            if attempt and on_resend is not None:
                on_resend()
            outcome = await send_once(block, min(wait, left))
            if outcome != "timeout":
                break
        if not isinstance(outcome, CoapMessage):
            return outcome
        if more and outcome.code == CONTINUE:
            num += 1
            continue
        if outcome.code == INCOMPLETE and restarts < RESTARTS:
            restarts += 1  # the server dropped what it held (a lost block, a restart)
            num = 0
            continue
        return outcome
