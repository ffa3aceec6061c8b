"""The pure Q-Block machinery (RFC 9177): missing-blocks codec, block choice, reassembly."""

from __future__ import annotations

import pytest

from gateway.coap.errors import CoapFormatError
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber
from gateway.coap.qblock import (
    MAX_PAYLOADS,
    Reassembly,
    block_count,
    body_etag,
    cut_block,
    decode_missing_blocks,
    encode_missing_blocks,
    requested_blocks,
    set_end,
)


def test_missing_blocks_round_trip_as_a_cbor_sequence() -> None:
    data = encode_missing_blocks([300, 3, 24, 3, 70000])
    # RFC 9177 §5: a CBOR Sequence of uints, ascending: 3, 24 (0x18 0x18), 300, 70000
    assert data == bytes.fromhex("03 1818 19012c 1a00011170")
    assert decode_missing_blocks(data) == (3, 24, 300, 70000)
    assert decode_missing_blocks(b"") == ()


@pytest.mark.parametrize("data", [b"\x40", b"\x19\x01", b"\x1b" + bytes(8),
                                  b"\x1a\x00\x10\x00\x00", b"\x81\x01"])
def test_malformed_missing_blocks_are_refused(data: bytes) -> None:
    with pytest.raises(CoapFormatError):
        decode_missing_blocks(data)


def test_sets_and_counts() -> None:
    assert block_count(0, 6) == 1
    assert block_count(1024, 6) == 1
    assert block_count(1025, 6) == 2
    assert set_end(0) == MAX_PAYLOADS - 1
    assert set_end(13) == 2 * MAX_PAYLOADS - 1
    assert set_end(13, total=15) == 14


def test_requested_blocks_follow_the_m_bit() -> None:
    # NUM 0 with M: the first set; without M (libcoap's probe): block 0 only
    assert requested_blocks([Block(0, True, 6)], 25) == list(range(10))
    assert requested_blocks([Block(0, False, 6)], 25) == [0]
    # "continue" at a set start; the rest of a set from the middle
    assert requested_blocks([Block(10, True, 6)], 25) == list(range(10, 20))
    assert requested_blocks([Block(23, True, 6)], 25) == [23, 24]
    # single missing blocks, beyond-the-end ignored
    assert requested_blocks([Block(3, False, 6), Block(7, False, 6), Block(40, False, 6)],
                            25) == [3, 7]


def test_cut_block_carries_etag_size2_and_the_block_option() -> None:
    payload = bytes(range(256)) * 10  # 2560 bytes: 3 blocks of 1024
    whole = CoapMessage(None, 69, 0, b"tk", ((OptionNumber.OBSERVE, b"\x05"),), payload)
    first, last = cut_block(whole, payload, 0, 6), cut_block(whole, payload, 2, 6)
    assert first.payload == payload[:1024] and first.observe == 5
    assert first.option(OptionNumber.Q_BLOCK2) == Block(0, True, 6).encode()
    assert last.payload == payload[2048:] and last.observe is None
    assert Block.decode(last.option(OptionNumber.Q_BLOCK2) or b"") == Block(2, False, 6)
    assert first.etag == last.etag == body_etag(payload)
    assert last.size2 == len(payload)


def test_reassembly_in_any_order_with_missing_blocks() -> None:
    body = bytes(range(200)) * 20  # 4000 bytes: 4 blocks of 1024
    parts = [body[i:i + 1024] for i in range(0, len(body), 1024)]
    r = Reassembly(6)
    assert r.add(Block(3, False, 6), parts[3])
    assert r.total == 4 and r.missing() == [0, 1, 2]
    assert r.add(Block(1, True, 6), parts[1])
    assert not r.complete and r.missing() == [0, 2]
    assert r.add(Block(0, True, 6), parts[0]) and r.add(Block(2, True, 6), parts[2])
    assert r.complete and r.body() == body


def test_reassembly_refuses_what_does_not_fit() -> None:
    r = Reassembly(6)
    assert not r.add(Block(0, True, 5), bytes(512))  # another size
    assert not r.add(Block(0, True, 6), bytes(100))  # a short block that is not the last
    assert r.add(Block(1, False, 6), bytes(10))
    assert not r.add(Block(2, True, 6), bytes(1024))  # past the announced end
    assert not r.add(Block(5000, True, 6), bytes(1024))
    r2 = Reassembly(6)
    assert r2.add(Block(4, True, 6), bytes(1024))
    assert not r2.add(Block(2, False, 6), bytes(5))  # an end before a block already held
    assert r2.missing() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        r2.body()


# --- the message layer: one Q-Block2 request, a burst of responses -----------------------


def test_layer_keeps_a_multiple_request_listening_until_cancelled() -> None:
    from gateway.coap.codes import MessageType
    from gateway.coap.events import ResponseReceived
    from gateway.coap.layer import MessageLayer
    from gateway.coap.udp_codec import encode_udp

    layer = MessageLayer(random=lambda: 0.0, initial_mid=1)
    request = CoapMessage.request(1, ("x",))
    token = layer.send_request(request, 0.0, confirmable=True, lifetime=5.0, multiple=True)
    layer.datagrams_to_send()
    # the first block piggybacked, then two NON blocks with the same token
    layer.receive(encode_udp(CoapMessage(MessageType.ACK, 69, 1, token, (), b"a")), 0.1)
    for mid in (50, 51):
        layer.receive(encode_udp(CoapMessage(MessageType.NON, 69, mid, token, (), b"b")), 0.2)
    events = []
    while (event := layer.next_event()) is not None:
        events.append(event)
    assert [type(e) for e in events] == [ResponseReceived] * 3
    assert layer.outstanding == 1 and layer.get_timer() == 5.1  # lifetime from the ACK
    assert layer.cancel_request(token)
    layer.receive(encode_udp(CoapMessage(MessageType.NON, 69, 52, token, (), b"c")), 0.3)
    assert not any(isinstance(e, ResponseReceived) for e in iter(layer.next_event, None))
