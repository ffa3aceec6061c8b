"""The caches of the request path (issue 21 §3) give what the uncached code gives: a
repeated request decodes to its own message ID, token and values; bad input is refused every
time, never remembered; the caches stay bounded."""

from __future__ import annotations

import pytest

from gateway.coap import message as message_module
from gateway.coap import options as options_module
from gateway.coap import udp_codec
from gateway.coap.codes import MessageType
from gateway.coap.errors import BadOptionError, CoapFormatError
from gateway.coap.message import CoapMessage
from gateway.coap.options import DEFAULT_KNOWN_OPTIONS, check_options, options_to_refuse
from gateway.coap.udp_codec import decode_udp, encode_udp

HB = bytes.fromhex("a11831a11833f5")
HB_PATH = (".well-known", "dots", "hb")


def heartbeat(mid: int, token: bytes) -> bytes:
    return encode_udp(CoapMessage(MessageType.CON, 3, mid, token, CoapMessage.request(
        3, HB_PATH, content_format=271).options, HB))


def test_a_repeated_request_decodes_to_its_own_header_and_the_same_values() -> None:
    first, second = decode_udp(heartbeat(1, b"\x01")), decode_udp(heartbeat(2, b"\x02\x02"))
    assert (first.mid, first.token, second.mid, second.token) == (1, b"\x01", 2, b"\x02\x02")
    assert first.options == second.options and first.payload == second.payload == HB
    assert first.options is second.options  # decoded once, shared (immutable)
    assert second.uri_path == HB_PATH and second.content_format == 271
    assert second.request_options() == first.request_options()


def test_a_malformed_tail_is_refused_every_time_with_the_header_it_came_with() -> None:
    bad = bytes((0x41, 3, 0, 7, 0xAB, 0xF0))  # option delta nibble 15
    for _ in range(2):
        with pytest.raises(CoapFormatError) as caught:
            decode_udp(bad)
        assert caught.value.mid == 7 and caught.value.mtype is MessageType.CON
    assert bad[5:] not in udp_codec._tails


def test_the_decoded_tails_stay_bounded() -> None:
    for i in range(udp_codec._TAILS + 10):
        decode_udp(bytes((0x40, 1, 0, 1)) + b"\xff" + i.to_bytes(4, "big"))
    assert len(udp_codec._tails) <= udp_codec._TAILS


@pytest.mark.parametrize("options", [
    ((11, b"a"), (12, b"\x01\x0f")),
    ((11, b"\xff\xfe"),),  # Uri-Path not UTF-8: bad critical
    ((12, b"\x01\x02\x03"),),  # Content-Format too long: elective, ignored
    ((9, b"x"),),  # unknown critical
    ((12, b"\x01"), (12, b"\x02")),  # repeated non-repeatable
])
def test_option_checks_match_the_uncached_ones_repeatedly(options: tuple) -> None:
    expected = check_options(options, DEFAULT_KNOWN_OPTIONS)
    for _ in range(3):
        assert options_to_refuse(options, DEFAULT_KNOWN_OPTIONS) == expected
    clean = expected == ([], [])
    assert ((options, DEFAULT_KNOWN_OPTIONS) in options_module._acceptable) is clean


def test_request_options_with_bad_utf8_raise_every_time() -> None:
    msg = CoapMessage(MessageType.CON, 1, 1, b"", ((11, b"\xff"),))
    for _ in range(2):
        with pytest.raises(BadOptionError):
            msg.request_options()
    assert msg.options not in message_module._request_options


def test_has_any_option() -> None:
    msg = CoapMessage(MessageType.CON, 1, 1, b"", ((11, b"a"), (23, b"\x02")))
    assert msg.has_any_option(frozenset({23, 27}))
    assert not msg.has_any_option(frozenset({19, 27, 31}))
