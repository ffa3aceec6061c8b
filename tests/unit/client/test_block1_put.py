"""The client's Block1 sender (RFC 7959) against scripted answers: blocks in order, 2.31 for
the next, a lost answer sent again, 4.08 starting again from block 0, any other answer
ending the transfer."""

from __future__ import annotations

from collections.abc import Callable

from gateway.client.block1 import CONTINUE, INCOMPLETE, block1_put, needs_block1
from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber
from gateway.coap.qblock import REQUEST_TAG

CREATED, BAD_REQUEST = 65, 128
BODY = bytes(range(256)) * 10  # 2,560 bytes: blocks of 1,024, 1,024 and 512
PUT = CoapMessage.request(3, (".well-known", "dots", "mitigate", "cuid=c", "mid=1"),
                          content_format=271, payload=BODY)


def answer(code: int) -> CoapMessage:
    return CoapMessage(MessageType.ACK, code, 1, b"t")


class Server:
    """Answers the blocks it is sent with the codes given, in turn ("timeout": none)."""

    def __init__(self, answers: list[int | str]) -> None:
        self.answers = answers
        self.sent: list[CoapMessage] = []

    async def send_once(self, block: CoapMessage, _wait: float) -> CoapMessage | str:
        self.sent.append(block)
        code = self.answers.pop(0)
        return code if isinstance(code, str) else answer(code)

    def blocks(self) -> list[Block | None]:
        return [m.block1 for m in self.sent]


def clock() -> Callable[[], float]:
    return lambda: 0.0


async def test_blocks_go_in_order_and_the_last_answer_is_the_result() -> None:
    server = Server([CONTINUE, CONTINUE, CREATED])
    result = await block1_put(server.send_once, PUT, 10.0, clock(), attempts=3, wait=3.0)
    assert isinstance(result, CoapMessage) and result.code == CREATED
    assert server.blocks() == [Block(0, True, 6), Block(1, True, 6), Block(2, False, 6)]
    assert b"".join(m.payload for m in server.sent) == BODY
    tags = {m.option(REQUEST_TAG) for m in server.sent}
    assert len(tags) == 1 and None not in tags  # one body, one Request-Tag (RFC 9175)
    assert server.sent[0].size1 == len(BODY) and server.sent[1].size1 is None
    assert all(m.uri_path == PUT.uri_path and m.content_format == 271 for m in server.sent)


async def test_a_lost_answer_sends_the_block_again() -> None:
    resent: list[int] = []
    server = Server([CONTINUE, "timeout", CONTINUE, CREATED])
    result = await block1_put(server.send_once, PUT, 10.0, clock(), attempts=3, wait=3.0,
                              on_resend=lambda: resent.append(1))
    assert isinstance(result, CoapMessage) and result.code == CREATED
    assert [b.num for b in server.blocks() if b] == [0, 1, 1, 2]
    assert resent == [1]


async def test_4_08_starts_again_from_block_0_a_bounded_number_of_times() -> None:
    server = Server([CONTINUE, INCOMPLETE, CONTINUE, CONTINUE, CREATED])
    result = await block1_put(server.send_once, PUT, 10.0, clock(), attempts=3, wait=3.0)
    assert isinstance(result, CoapMessage) and result.code == CREATED
    assert [b.num for b in server.blocks() if b] == [0, 1, 0, 1, 2]
    stubborn = Server([INCOMPLETE] * 5)
    last = await block1_put(stubborn.send_once, PUT, 10.0, clock(), attempts=3, wait=3.0)
    assert isinstance(last, CoapMessage) and last.code == INCOMPLETE
    assert len(stubborn.sent) == 3  # the first try and two restarts


async def test_an_error_answer_ends_the_transfer_and_silence_times_out() -> None:
    refused = Server([CONTINUE, BAD_REQUEST])
    result = await block1_put(refused.send_once, PUT, 10.0, clock(), attempts=3, wait=3.0)
    assert isinstance(result, CoapMessage) and result.code == BAD_REQUEST
    silent = Server(["timeout"] * 3)
    assert await block1_put(silent.send_once, PUT, 10.0, clock(), attempts=3,
                            wait=3.0) == "timeout"
    assert len(silent.sent) == 3


def test_only_bodies_over_one_block_are_split() -> None:
    small = CoapMessage.request(3, ("x",), payload=b"x" * 1024)
    assert not needs_block1(small) and needs_block1(PUT)
    assert OptionNumber.BLOCK1 == 27
