"""RFC 7959 Block1 request bodies on the server: blocks in order answered 2.31 with the
option echoed, the last one yields the whole request, anything out of sequence 4.08, a body
beyond the bound 4.13 with Size1."""

from __future__ import annotations

import pytest

from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber
from gateway.coap.qblock import MAX_BODY_BLOCKS, NON_PARTIAL_TIMEOUT, REQUEST_TAG
from gateway.server.block1 import Block1Bodies, block1
from gateway.server.qblock import CONTINUE, Respond, Whole

PATH = (".well-known", "dots", "mitigate", "cuid=c", "mid=1")
SZX = 2  # 64-byte blocks
BODY = bytes(range(256)) * 2 + b"tail"  # 516 bytes: 8 full blocks and 4 bytes


def block_message(num: int, *, body: bytes = BODY, szx: int = SZX, mid: int | None = None,
                  tag: bytes = b"", size1: int | None = None) -> CoapMessage:
    size = 1 << (szx + 4)
    chunk = body[num * size:(num + 1) * size]
    more = (num + 1) * size < len(body)
    options = [(OptionNumber.BLOCK1, Block(num, more, szx).encode())]
    if tag:
        options.append((REQUEST_TAG, tag))
    if size1 is not None:
        options.append((OptionNumber.SIZE1, size1.to_bytes(4, "big")))
    base = CoapMessage.request(3, PATH, content_format=271)
    return CoapMessage(MessageType.CON, 3, mid if mid is not None else 100 + num,
                       bytes([num]), (*base.options, *options), chunk)


def test_blocks_in_order_make_the_whole_request() -> None:
    bodies = Block1Bodies()
    blocks = (len(BODY) + 63) // 64
    for num in range(blocks - 1):
        outcome = bodies.receive(block_message(num), Block(num, True, SZX), now=1.0)
        assert isinstance(outcome, Respond)
        assert outcome.message.code == CONTINUE
        assert outcome.message.block1 == Block(num, True, SZX)  # RFC 7959 §2.3: echoed
    last = block_message(blocks - 1)
    whole = bodies.receive(last, Block(blocks - 1, False, SZX), now=1.0)
    assert isinstance(whole, Whole)
    assert whole.message.payload == BODY
    assert (whole.message.mid, whole.message.token) == (last.mid, last.token)  # answered there
    assert whole.message.block1 == Block(blocks - 1, False, SZX)  # kept: the answer echoes it
    assert len(bodies) == 0


def test_a_block_out_of_sequence_is_4_08_and_block_0_starts_again() -> None:
    bodies = Block1Bodies()
    bodies.receive(block_message(0), Block(0, True, SZX), now=1.0)
    skipped = bodies.receive(block_message(2), Block(2, True, SZX), now=1.0)
    assert isinstance(skipped, Respond) and skipped.message.code == 0x88  # 4.08
    assert len(bodies) == 0
    nothing = bodies.receive(block_message(1), Block(1, True, SZX), now=1.0)
    assert isinstance(nothing, Respond) and nothing.message.code == 0x88  # no block 0 held
    for num in range(9):
        outcome = bodies.receive(block_message(num), Block(num, num < 8, SZX), now=2.0)
    assert isinstance(outcome, Whole) and outcome.message.payload == BODY


def test_bodies_are_kept_apart_by_request_tag() -> None:
    bodies = Block1Bodies()
    other = b"x" * 100
    bodies.receive(block_message(0, tag=b"a"), Block(0, True, SZX), now=1.0)
    bodies.receive(block_message(0, body=other, tag=b"b"), Block(0, True, SZX), now=1.0)
    done = bodies.receive(block_message(1, body=other, tag=b"b"), Block(1, False, SZX), now=1.0)
    assert isinstance(done, Whole) and done.message.payload == other
    assert len(bodies) == 1  # tag "a" is still under way


def test_a_body_beyond_the_bound_is_4_13_with_size1() -> None:
    bodies = Block1Bodies()
    too_big = (MAX_BODY_BLOCKS + 1) * 64
    outcome = bodies.receive(block_message(0, size1=too_big), Block(0, True, SZX), now=1.0)
    assert isinstance(outcome, Respond) and outcome.message.code == 0x8D  # 4.13
    assert outcome.message.size1 == MAX_BODY_BLOCKS * 64


def test_a_partial_body_expires() -> None:
    bodies = Block1Bodies()
    bodies.receive(block_message(0), Block(0, True, SZX), now=1.0)
    late = bodies.receive(block_message(1), Block(1, True, SZX), now=2.0 + NON_PARTIAL_TIMEOUT)
    assert isinstance(late, Respond) and late.message.code == 0x88
    assert len(bodies) == 0


@pytest.mark.parametrize(("block", "expected"), [
    (None, None), (Block(0, False, SZX), None), (Block(0, True, SZX), Block(0, True, SZX)),
    (Block(3, False, SZX), Block(3, False, SZX))])
def test_only_multi_block_bodies_are_taken_apart(block: Block | None,
                                                 expected: Block | None) -> None:
    base = CoapMessage.request(3, PATH, content_format=271)
    options = base.options if block is None else (
        *base.options, (OptionNumber.BLOCK1, block.encode()))
    assert block1(CoapMessage(MessageType.CON, 3, 1, b"t", options, b"x")) == expected
