"""``QBlockBodies``: reassembly of Q-Block1 bodies and what each block is answered with."""

from __future__ import annotations

from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber
from gateway.coap.qblock import (
    CONTENT_FORMAT_MISSING_BLOCKS,
    MAX_PAYLOADS,
    NON_PARTIAL_TIMEOUT,
    REQUEST_TAG,
    decode_missing_blocks,
)
from gateway.server.qblock import CONTINUE, QBlockBodies, Respond, Wait, Whole, probe_answer

BODY = bytes(range(256)) * 100  # 25,600 bytes: 25 blocks of 1,024
COUNT = 25


def block(num: int, tag: bytes = b"t1", body: bytes = BODY) -> tuple[CoapMessage, Block]:
    count = -(-len(body) // 1024)
    b = Block(num, num < count - 1, 6)
    msg = CoapMessage(None, 3, num, bytes([num % 256]),
                      ((OptionNumber.URI_PATH, b"m"), (OptionNumber.Q_BLOCK1, b.encode()),
                       (REQUEST_TAG, tag)), body[num * 1024:(num + 1) * 1024])
    return msg, b


def feed(bodies: QBlockBodies, nums: list[int], now: float = 0.0, **kw: bytes) -> list[object]:
    return [bodies.receive(*block(n, **kw), now) for n in nums]


def test_whole_body_in_sets_with_continue() -> None:
    bodies = QBlockBodies()
    out = feed(bodies, list(range(MAX_PAYLOADS)))
    assert all(isinstance(o, Wait) for o in out[:-1])
    last = out[-1]
    assert isinstance(last, Respond) and last.message.code == CONTINUE
    out = feed(bodies, list(range(MAX_PAYLOADS, COUNT)))
    final = out[-1]
    assert isinstance(final, Whole) and final.message.payload == BODY
    assert not final.message.has_option(OptionNumber.Q_BLOCK1)
    assert not final.message.has_option(REQUEST_TAG)
    assert len(bodies) == 0


def test_gaps_draw_4_08_and_refills_complete_the_set() -> None:
    bodies = QBlockBodies()
    out = feed(bodies, [n for n in range(MAX_PAYLOADS) if n not in (2, 5)])
    answer = out[-1]
    assert isinstance(answer, Respond) and answer.message.code == 0x88
    assert answer.message.content_format == CONTENT_FORMAT_MISSING_BLOCKS
    assert decode_missing_blocks(answer.message.payload) == (2, 5)
    assert isinstance(feed(bodies, [5])[0], Wait)  # 2 still missing
    refilled = feed(bodies, [2])[0]
    assert isinstance(refilled, Respond) and refilled.message.code == CONTINUE


def test_lost_final_answer_is_given_again_for_the_last_block() -> None:
    bodies = QBlockBodies()
    out = feed(bodies, list(range(COUNT)))
    assert isinstance(out[-1], Whole)
    again = feed(bodies, [COUNT - 1])[0]
    assert isinstance(again, Whole) and again.message.payload == BODY
    assert isinstance(feed(bodies, [3])[0], Wait)  # a late middle block: nothing


def test_bad_blocks_and_bounds() -> None:
    bodies = QBlockBodies()
    msg, _ = block(0)
    bad = bodies.receive(msg, Block(0, True, 5), 0.0)  # 1,024 bytes said to be 512
    assert isinstance(bad, Respond) and bad.message.code == 0x80
    huge = msg.with_options((OptionNumber.SIZE1, (1 << 24).to_bytes(4, "big")))
    too_large = bodies.receive(huge, Block(0, True, 6), 0.0)
    assert isinstance(too_large, Respond) and too_large.message.code == 0x8D
    # at most BODIES_PER_SESSION bodies; a partial body expires
    for i in range(10):
        feed(bodies, [0], tag=b"x%d" % i)
    assert len(bodies) == 4
    feed(bodies, [0], now=NON_PARTIAL_TIMEOUT + 10, tag=b"new")
    assert len(bodies) == 1


def test_probes() -> None:
    core = CoapMessage.request(1, (".well-known", "core"))
    answer = probe_answer(core)
    assert answer is not None and answer.code == 69 and answer.content_format == 40
    empty = CoapMessage(None, 1, 0, b"", ((OptionNumber.Q_BLOCK2, b"\x06"),))
    assert probe_answer(empty) is not None
    assert probe_answer(CoapMessage(None, 1, 0, b"", ())) is None
    assert probe_answer(CoapMessage.request(3, (".well-known", "core"))) is None
