"""``heartbeat_body`` (the per-request heartbeat decode, remembered per distinct body) gives
what ``validate_heartbeat(decode_request_body(...))`` gives, and refuses bad bodies every
time (issue 21 §3)."""

from __future__ import annotations

import pytest

from gateway.dots import validate
from gateway.dots.codes import Method
from gateway.dots.errors import DotsProtocolError
from gateway.dots.message import DotsRequest
from gateway.dots.model import Heartbeat
from gateway.dots.validate import decode_request_body, heartbeat_body, validate_heartbeat

PATH = (".well-known", "dots", "hb")
TRUE, FALSE = bytes.fromhex("a11831a11833f5"), bytes.fromhex("a11831a11833f4")


def put(payload: bytes, content_format: int | None = 271) -> DotsRequest:
    return DotsRequest(Method.PUT, PATH, payload=payload, content_format=content_format)


def test_both_bodies_decode_as_the_uncached_path_does() -> None:
    for body, status in ((TRUE, True), (FALSE, False), (TRUE, True)):
        got = heartbeat_body(put(body))
        assert got == validate_heartbeat(decode_request_body(put(body))) == Heartbeat(status)


@pytest.mark.parametrize("request_", [
    put(bytes.fromhex("a0")),  # not a heartbeat container
    put(b"\xff"),  # not CBOR
    put(b""),  # no body
    put(TRUE, content_format=50),  # JSON: 4.15
])
def test_bad_bodies_are_refused_every_time_and_not_remembered(request_: DotsRequest) -> None:
    for _ in range(2):
        with pytest.raises(DotsProtocolError):
            heartbeat_body(request_)
    assert (request_.content_format, request_.payload) not in validate._heartbeats
