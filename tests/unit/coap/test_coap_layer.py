"""CoAP message layers driven with a fake clock and fake randomness (RFC 7252 §4, §5;
RFC 7641; RFC 8323 §3-5), and a client and a server layer joined in memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.coap import (
    Block,
    CoapMessage,
    CoapUsageError,
    ConnectionAborted,
    CsmReceived,
    MessageDropped,
    MessageLayer,
    MessageType,
    OptionNumber,
    PongReceived,
    ReleaseReceived,
    RequestFailed,
    RequestKey,
    RequestReceived,
    Reset,
    ResponseReceived,
    ResponseTimedOut,
    SignalCode,
    TcpFramer,
    TcpLayer,
    TransmissionParameters,
    decode_udp,
    encode_tcp,
    encode_udp,
    encode_uint,
)

CON, NON, ACK, RST = MessageType.CON, MessageType.NON, MessageType.ACK, MessageType.RST
HB_PATH = (".well-known", "dots", "hb")
PARAMS = TransmissionParameters(ack_timeout=2.0, ack_random_factor=1.5, max_retransmit=3)


class Tokens:
    """Deterministic token source: 1, 2, 3... in ``n`` bytes."""

    def __init__(self, start: int = 1) -> None:
        self.next = start

    def __call__(self, n: int) -> bytes:
        self.next += 1
        return (self.next - 1).to_bytes(n, "big")


def layer(rnd: float = 0.0, mid: int = 100, tokens: int = 1, **kw: Any) -> MessageLayer:
    kw.setdefault("parameters", PARAMS)
    return MessageLayer(random=lambda: rnd, token_source=Tokens(tokens), initial_mid=mid, **kw)


def events(obj: MessageLayer | TcpLayer) -> list[object]:
    out = []
    while (event := obj.next_event()) is not None:
        out.append(event)
    return out


def sent(obj: MessageLayer) -> list[CoapMessage]:
    return [decode_udp(d) for d in obj.datagrams_to_send()]


def hb(mtype: MessageType = NON, mid: int = 7, token: bytes = b"\x01") -> CoapMessage:
    return CoapMessage(mtype, 3, mid, token,
                       CoapMessage.request(3, HB_PATH, content_format=271).options, b"\xa0")


# --- retransmission and timeouts ---------------------------------------------------------------


def test_con_retransmission_schedule_and_give_up() -> None:
    client = layer(rnd=0.0)
    token = client.send_request(CoapMessage.request(2, HB_PATH), 0.0, confirmable=True)
    first = client.datagrams_to_send()
    assert len(first) == 1 and decode_udp(first[0]).mtype is CON
    times = []
    while (at := client.get_timer()) is not None:
        client.handle_timer(at - 0.001)  # early: nothing happens
        assert client.datagrams_to_send() == [] and events(client) == []
        client.handle_timer(at)
        again = client.datagrams_to_send()
        assert again in ([], first)  # a retransmission is the same bytes
        times.append(at)
        if not again:
            break
    # RFC 7252 §4.2: 2, then 4, 8, 16 s (doubling) after 3 retransmissions; MAX_TRANSMIT_WAIT
    assert times == [2.0, 6.0, 14.0, 30.0]
    assert events(client) == [RequestFailed(token, "timeout")]
    assert client.get_timer() is None and client.outstanding == 0


def test_initial_timeout_uses_injected_randomness() -> None:
    client = layer(rnd=0.5)  # 2 * (1 + 0.5 * 0.5) = 2.5
    client.send_request(CoapMessage.request(2, HB_PATH), 10.0)
    assert client.get_timer() == 12.5
    client.handle_timer(12.5)
    assert client.get_timer() == 17.5


def test_parameters_change_at_run_time_for_new_messages() -> None:
    client = layer()
    client.send_request(CoapMessage.request(2, HB_PATH), 0.0)
    client.set_parameters(TransmissionParameters(ack_timeout=5.0, max_retransmit=1))
    client.send_request(CoapMessage.request(2, HB_PATH), 0.0)
    assert client.get_timer() == 2.0  # the first keeps its schedule
    client.handle_timer(2.0)
    client.handle_timer(5.0)
    assert len(client.datagrams_to_send()) == 4


def test_non_request_times_out_after_its_lifetime() -> None:
    client = layer(non_request_lifetime=45.0)
    t1 = client.send_request(CoapMessage.request(3, HB_PATH), 0.0, confirmable=False)
    t2 = client.send_request(CoapMessage.request(3, HB_PATH), 1.0, confirmable=False,
                             lifetime=60.0)
    assert client.get_timer() == 45.0
    client.handle_timer(44.9)
    assert events(client) == []
    client.handle_timer(45.0)
    assert events(client) == [RequestFailed(t1, "timeout")]
    assert client.get_timer() == 61.0
    client.handle_timer(61.0)
    assert events(client) == [RequestFailed(t2, "timeout")]
    assert len(client.datagrams_to_send()) == 2  # NON is never retransmitted


def test_non_request_answered_in_time() -> None:
    client = layer()
    token = client.send_request(CoapMessage.request(3, HB_PATH), 0.0, confirmable=False)
    client.datagrams_to_send()
    client.receive(encode_udp(CoapMessage(NON, 68, 555, token)), 1.0)
    [event] = events(client)
    assert isinstance(event, ResponseReceived) and event.token == token
    assert client.get_timer() is None
    assert client.datagrams_to_send() == []  # no ACK for a NON


def test_non_request_copies_keep_token_and_mid_and_a_late_answer_completes_it() -> None:
    # RFC 7252 §4.3 copies of a NON, processed once by the receiver (§4.5), answered by
    # token (§5.3.2): the answer to the first copy arriving after the third completes the
    # request (issue 20 §4: a new token per retry dropped the gateway's late 5.03).
    client, server = layer(), layer(mid=900)
    token = client.send_request(CoapMessage.request(3, HB_PATH), 0.0, confirmable=False,
                                lifetime=15.0)
    [first] = client.datagrams_to_send()
    assert client.resend_request(token, 3.0) and client.resend_request(token, 6.0)
    copies = client.datagrams_to_send()
    assert copies == [first, first]
    for at, datagram in enumerate([first, *copies]):
        server.receive(datagram, float(at))
    [received] = events(server)  # one request, however many copies
    server.send_response(received.key, received.message.response(163), 10.0)  # 5.03
    [answer] = server.datagrams_to_send()
    client.receive(answer, 10.0)
    [event] = events(client)
    assert isinstance(event, ResponseReceived) and event.token == token
    assert not client.resend_request(token, 11.0)  # answered: nothing left to copy
    con = client.send_request(CoapMessage.request(3, HB_PATH), 12.0, confirmable=True)
    assert not client.resend_request(con, 12.5)  # the retransmission timer owns CONs


def test_mid_and_token_allocation() -> None:
    client = layer(mid=0xFFFF, tokens=7, token_length=2)
    t1 = client.send_request(CoapMessage.request(1, ("a",)), 0.0)
    t2 = client.send_request(CoapMessage.request(1, ("a",), token=b"mine"), 0.0)
    mids = [m.mid for m in sent(client)]
    assert (t1, t2) == (b"\x00\x07", b"mine") and mids == [0xFFFF, 0]
    with pytest.raises(CoapUsageError):
        client.send_request(CoapMessage.request(1, ("a",), token=b"mine"), 0.0)
    with pytest.raises(CoapUsageError):
        client.send_request(CoapMessage(None, 69), 0.0)
    small = layer(max_outstanding=1)
    small.send_request(CoapMessage.request(1, ("a",)), 0.0)
    with pytest.raises(CoapUsageError):
        small.send_request(CoapMessage.request(1, ("a",)), 0.0)
    assert MessageLayer(random=lambda: 0.5).datagrams_to_send() == []  # defaults work


# --- server side: deduplication, piggybacked and separate responses ----------------------------


def test_duplicate_con_gets_the_cached_ack_and_is_processed_once() -> None:
    server = layer()
    request = encode_udp(hb(CON, mid=0x4242, token=b"\x09"))
    server.receive(request, 0.0)
    [received] = events(server)
    assert isinstance(received, RequestReceived)
    assert received.key == RequestKey(b"\x09", 0x4242, CON)
    assert received.message.uri_path == HB_PATH
    server.send_response(received.key, received.message.response(68), 0.1)
    [ack] = server.datagrams_to_send()
    assert decode_udp(ack) == CoapMessage(ACK, 68, 0x4242, b"\x09")
    server.receive(request, 3.0)
    assert events(server) == []
    assert server.datagrams_to_send() == [ack]
    with pytest.raises(CoapUsageError):  # refused transition: the cached answer is unchanged
        server.send_response(received.key, received.message.response(69), 3.0)
    assert server.datagrams_to_send() == []
    server.receive(request, 4.0)
    assert server.datagrams_to_send() == [ack]


def test_duplicate_non_gets_the_cached_non_response_again() -> None:
    server = layer()
    request = encode_udp(hb(NON, mid=0x10, token=b"\x0a"))
    server.receive(request, 0.0)
    [received] = events(server)
    server.receive(request, 0.5)  # before the answer: dropped silently
    assert events(server) == [] and server.datagrams_to_send() == []
    mid = server.send_response(received.key, received.message.response(68), 1.0)
    [answer] = server.datagrams_to_send()
    assert decode_udp(answer) == CoapMessage(NON, 68, mid, b"\x0a")
    server.receive(request, 5.0)  # libcoap retransmits unanswered NON with the same MID
    assert events(server) == []
    assert server.datagrams_to_send() == [answer]


def test_duplicate_con_while_pending_is_acknowledged_and_answer_becomes_separate() -> None:
    server = layer(mid=900)
    request = encode_udp(hb(CON, mid=0x20, token=b"\x0b"))
    server.receive(request, 0.0)
    [received] = events(server)
    server.receive(request, 2.0)
    assert sent(server) == [CoapMessage(ACK, 0, 0x20)]
    server.receive(request, 6.0)
    assert sent(server) == [CoapMessage(ACK, 0, 0x20)]
    mid = server.send_response(received.key, received.message.response(68), 7.0)
    [separate] = sent(server)
    assert separate == CoapMessage(CON, 68, 900, b"\x0b") and mid == 900
    assert server.get_timer() == 9.0  # retransmitted until acknowledged
    server.receive(encode_udp(CoapMessage(ACK, 0, 900)), 8.0)
    assert server.get_timer() is None and events(server) == []


def test_server_separate_response_via_send_ack() -> None:
    server = layer(mid=50)
    server.receive(encode_udp(hb(CON, mid=1, token=b"\x0c")), 0.0)
    [received] = events(server)
    assert server.send_ack(received.key, 0.0) is True
    assert server.send_ack(received.key, 0.0) is False
    assert sent(server) == [CoapMessage(ACK, 0, 1)]
    server.send_response(received.key, received.message.response(69, payload=b"x"), 3.0)
    [separate] = sent(server)
    assert separate.mtype is CON and separate.token == b"\x0c" and separate.mid == 50
    server.receive(encode_udp(hb(CON, mid=1, token=b"\x0c")), 4.0)  # duplicate: the ACK again
    assert sent(server) == [CoapMessage(ACK, 0, 1)]
    # never acknowledged: the separate response times out like a request would
    while (at := server.get_timer()) is not None:
        server.handle_timer(at)
    assert events(server) == [ResponseTimedOut(50, b"\x0c")]
    non = layer()
    non.receive(encode_udp(hb(NON, mid=1)), 0.0)
    [received] = events(non)
    assert non.send_ack(received.key, 0.0) is False


def test_empty_con_ping_gets_rst() -> None:
    server = layer()
    server.receive(encode_udp(CoapMessage(CON, 0, 0x77)), 0.0)
    assert sent(server) == [CoapMessage(RST, 0, 0x77)]
    assert events(server) == []


def test_dedup_cache_is_bounded() -> None:
    server = layer(dedup_max_entries=64)
    delivered = 0
    for i in range(10_000):
        server.receive(encode_udp(hb(NON, mid=i & 0xFFFF, token=i.to_bytes(2, "big"))), i * 0.001)
        delivered += len(events(server))
        assert server.dedup_entries <= 64
    assert delivered == 10_000


def test_dedup_entry_expires_after_its_lifetime() -> None:
    server = layer(dedup_non_lifetime=10.0)
    request = encode_udp(hb(NON, mid=3))
    server.receive(request, 0.0)
    server.receive(request, 9.9)
    assert len(events(server)) == 1
    server.receive(request, 10.0)
    assert len(events(server)) == 1 and server.dedup_entries == 1


def test_unknown_critical_option_gets_4_02_with_diagnostic() -> None:
    server = layer()
    request = hb(CON, mid=5, token=b"\x0d").with_options((9, b"x"))
    server.receive(encode_udp(request), 0.0)
    [answer] = sent(server)
    assert (answer.mtype, answer.code, answer.mid, answer.token) == (ACK, 130, 5, b"\x0d")
    assert b"option 9" in answer.payload
    assert [type(e) for e in events(server)] == [MessageDropped]
    server.receive(encode_udp(request), 1.0)  # a duplicate gets the same answer
    assert sent(server) == [answer]
    # NON: rejected with RST (RFC 7252 §5.4.1, §4.3)
    server.receive(encode_udp(hb(NON, mid=6).with_options((35, b"coap://x"))), 0.0)
    assert sent(server) == [CoapMessage(RST, 0, 6)]


def test_malformed_options_critical_rejected_elective_stripped() -> None:
    server = layer()
    server.receive(encode_udp(hb(CON, mid=8).with_options((17, b"\x01\x02\x03"))), 0.0)
    assert sent(server)[0].code == 130  # Accept of 3 bytes: malformed critical
    server.receive(encode_udp(hb(NON, mid=9).with_options((14, b"\x01\x02\x03\x04\x05"),
                                                          (2000, b"kept"))), 0.0)
    [received] = events(server)[1:]
    assert isinstance(received, RequestReceived)
    assert received.message.max_age is None  # malformed elective: ignored
    assert received.message.option(2000) == b"kept"  # unknown elective: left alone


def test_known_options_are_the_roles_choice() -> None:
    server = layer(known_options=frozenset({11, 12}))  # no block-wise support
    block1 = CoapMessage.request(3, HB_PATH, block1=Block(0, True, 6), content_format=271)
    server.receive(encode_udp(CoapMessage(CON, 3, 1, b"\x01", block1.options)), 0.0)
    [answer] = sent(server)
    assert answer.code == 130 and b"Block1(27)" in answer.payload


def test_oversize_request_gets_4_13_with_size1() -> None:
    server = layer(max_message_size=200)
    server.receive(encode_udp(CoapMessage(CON, 3, 1, b"\x01", (), b"x" * 300)), 0.0)
    [answer] = sent(server)
    assert (answer.mtype, answer.code) == (ACK, 141) and answer.size1 == 200


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"\x49\x01\x12\x34" + b"\x00" * 9, CoapMessage(RST, 0, 0x1234)),  # TKL 9 in a CON
        (b"\x40\x01\x00\x06\xf1\x00", CoapMessage(RST, 0, 6)),  # delta nibble 15
        (b"\x40\x01\x00\x06\xff", CoapMessage(RST, 0, 6)),  # marker, no payload
        (b"\x40\x20\x00\x06", CoapMessage(RST, 0, 6)),  # reserved class 1
        (b"\x59\x01\x12\x34", None),  # NON: dropped silently
        (b"\x50\x01\x00\x06\xff", None),
        (b"\x80\x01\x00\x06", None),  # version 2: ignored
        (b"\x40", None),
        (b"\x50\x00\x00\x06", None),  # empty NON
        (b"\x70\x45\x00\x06", None),  # non-empty RST
        (b"\x60\x01\x00\x06", None),  # ACK carrying a request
    ],
)
def test_format_errors_rst_for_con_nothing_for_non(data: bytes, reply: CoapMessage | None) -> None:
    server = layer()
    server.receive(data, 0.0)
    assert sent(server) == ([reply] if reply else [])
    assert [type(e) for e in events(server)] == [MessageDropped]


# --- client side -----------------------------------------------------------------------------


def test_client_separate_response_is_acked_and_deduplicated() -> None:
    client = layer(mid=10)
    token = client.send_request(CoapMessage.request(1, ("config",)), 0.0, lifetime=100.0)
    client.datagrams_to_send()
    client.receive(encode_udp(CoapMessage(ACK, 0, 10)), 0.5)  # empty ACK: stop retransmitting
    assert client.get_timer() == 100.5
    response = encode_udp(CoapMessage(CON, 69, 0x999, token, (), b"cfg"))
    client.receive(response, 3.0)
    assert sent(client) == [CoapMessage(ACK, 0, 0x999)]
    [event] = events(client)
    assert event == ResponseReceived(token, decode_udp(response))
    client.receive(response, 4.0)  # our ACK was lost: ACK again, deliver once
    assert sent(client) == [CoapMessage(ACK, 0, 0x999)] and events(client) == []
    assert client.get_timer() is None


def test_con_response_before_the_empty_ack_implies_it() -> None:
    client = layer(mid=10)
    token = client.send_request(CoapMessage.request(1, ("config",)), 0.0)
    client.datagrams_to_send()
    client.receive(encode_udp(CoapMessage(CON, 69, 0x55, token)), 1.0)
    assert [type(e) for e in events(client)] == [ResponseReceived]
    assert sent(client) == [CoapMessage(ACK, 0, 0x55)]
    assert client.get_timer() is None
    client.receive(encode_udp(CoapMessage(ACK, 0, 10)), 1.5)  # late ACK: ignored
    assert events(client) == [] and sent(client) == []


def test_piggybacked_response_with_other_token_is_ignored() -> None:
    client = layer(mid=10)
    client.send_request(CoapMessage.request(1, ("x",), token=b"good"), 0.0)
    client.datagrams_to_send()
    client.receive(encode_udp(CoapMessage(ACK, 69, 10, b"evil")), 0.1)
    assert [type(e) for e in events(client)] == [MessageDropped]
    assert client.get_timer() == 2.0


def test_unknown_responses() -> None:
    client = layer()
    client.receive(encode_udp(CoapMessage(CON, 69, 1, b"??")), 0.0)
    assert sent(client) == [CoapMessage(RST, 0, 1)]  # RFC 7252 §4.2
    client.receive(encode_udp(CoapMessage(NON, 69, 2, b"??")), 0.0)
    assert sent(client) == []  # a late NON response: just dropped
    client.receive(encode_udp(CoapMessage(NON, 69, 3, b"??", ((6, b"\x05"),))), 0.0)
    assert sent(client) == [CoapMessage(RST, 0, 3)]  # RFC 7641 §3.6: unwanted notification
    client.receive(encode_udp(CoapMessage(ACK, 69, 4, b"??")), 0.0)  # unknown ACK
    client.receive(encode_udp(CoapMessage(RST, 0, 5)), 0.0)  # unknown RST
    assert sent(client) == []
    assert all(isinstance(e, MessageDropped) for e in events(client))


def test_response_with_unknown_critical_option_fails_the_request() -> None:
    client = layer(mid=10)
    token = client.send_request(CoapMessage.request(1, ("x",)), 0.0, confirmable=False)
    client.datagrams_to_send()
    client.receive(encode_udp(CoapMessage(CON, 69, 77, token, ((9, b""),))), 0.1)
    assert sent(client) == [CoapMessage(RST, 0, 77)]
    assert events(client) == [RequestFailed(token, "bad-option")]
    token = client.send_request(CoapMessage.request(1, ("x",)), 0.0)
    [req] = sent(client)
    client.receive(encode_udp(CoapMessage(ACK, 69, req.mid, token, ((9, b""),))), 0.1)
    assert events(client) == [RequestFailed(token, "bad-option")]
    assert client.get_timer() is None


def test_reset_of_our_requests() -> None:
    client = layer(mid=10)
    con = client.send_request(CoapMessage.request(1, ("x",)), 0.0)
    non = client.send_request(CoapMessage.request(1, ("y",)), 0.0, confirmable=False)
    client.receive(encode_udp(CoapMessage(RST, 0, 11)), 0.1)
    client.receive(encode_udp(CoapMessage(RST, 0, 10)), 0.1)
    assert events(client) == [RequestFailed(non, "reset"), RequestFailed(con, "reset")]
    assert client.get_timer() is None


def test_reset_of_our_notifications_names_the_token() -> None:
    server = layer(mid=300)
    non_mid = server.send_notification(b"obs1", CoapMessage(None, 69, 0, b"", ((6, b"\x02"),)),
                                       0.0)
    con_mid = server.send_notification(b"obs2", CoapMessage(None, 69), 0.0, confirmable=True)
    server.receive(encode_udp(CoapMessage(RST, 0, non_mid)), 1.0)
    server.receive(encode_udp(CoapMessage(RST, 0, con_mid)), 1.0)
    assert events(server) == [Reset(300, b"obs1"), Reset(301, b"obs2")]
    assert server.get_timer() is None


def test_observe_registration_keeps_the_token() -> None:
    client = layer(mid=10)
    token = client.send_request(CoapMessage.request(1, ("mitigate",), observe=0), 0.0,
                                confirmable=False, lifetime=30.0)
    client.datagrams_to_send()
    for seq, mid in ((1, 500), (2, 501), (3, 502)):
        client.receive(encode_udp(CoapMessage(NON, 69, mid, token, ((6, encode_uint(seq)),))),
                       float(seq))
        [event] = events(client)
        assert isinstance(event, ResponseReceived) and event.message.observe == seq
    assert client.get_timer() is None and client.outstanding == 1  # no deadline while observing
    client.receive(encode_udp(CoapMessage(CON, 69, 503, token, ((6, b"\x04"),))), 4.0)
    assert sent(client) == [CoapMessage(ACK, 0, 503)]
    events(client)
    assert client.cancel_request(token) is True
    client.receive(encode_udp(CoapMessage(NON, 69, 504, token, ((6, b"\x05"),))), 5.0)
    assert sent(client) == [CoapMessage(RST, 0, 504)]
    # a response without Observe ends the registration
    token = client.send_request(CoapMessage.request(1, ("m",), observe=0), 6.0)
    [req] = sent(client)
    client.receive(encode_udp(CoapMessage(ACK, 69, req.mid, token)), 6.1)
    assert client.outstanding == 0


def test_close_drops_everything() -> None:
    client = layer()
    client.send_request(CoapMessage.request(1, ("x",)), 0.0)
    client.receive(encode_udp(hb(NON, mid=1)), 0.0)
    client.close()
    assert client.get_timer() is None and client.next_event() is None
    assert client.datagrams_to_send() == [] and client.dedup_entries == 0
    client.receive(encode_udp(hb(NON, mid=2)), 1.0)
    client.handle_timer(100.0)
    assert client.next_event() is None
    with pytest.raises(CoapUsageError):
        client.send_request(CoapMessage.request(1, ("x",)), 0.0)


# --- two layers joined in memory -------------------------------------------------------------


class Link:
    """Moves datagrams between two layers; ``lose`` decides per datagram (direction, n)."""

    def __init__(self, a: MessageLayer, b: MessageLayer,
                 lose: Callable[[str, int], bool] = lambda d, n: False) -> None:
        self.a, self.b, self.lose = a, b, lose
        self.count = {"a>b": 0, "b>a": 0}

    def pump(self, now: float) -> None:
        moved = True
        while moved:
            moved = False
            for src, dst, name in ((self.a, self.b, "a>b"), (self.b, self.a, "b>a")):
                for data in src.datagrams_to_send():
                    self.count[name] += 1
                    moved = True
                    if not self.lose(name, self.count[name]):
                        dst.receive(data, now)

    def run(self, now: float, until: float, on_event: Callable[[object, float], None]) -> float:
        while True:
            busy = True
            while busy:  # deliver datagrams and events until both sides are quiet
                self.pump(now)
                busy = False
                for obj in (self.a, self.b):
                    for event in events(obj):
                        busy = True
                        on_event(event, now)
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            if not timers or min(timers) > until:
                return now
            now = max(now, min(timers))
            self.a.handle_timer(now)
            self.b.handle_timer(now)


def _serve(server: MessageLayer, log: list[object]) -> Callable[[object, float], None]:
    def on_event(event: object, now: float) -> None:
        log.append(event)
        if isinstance(event, RequestReceived):
            server.send_response(event.key, event.message.response(68, payload=b"ok"), now)
    return on_event


@pytest.mark.parametrize("confirmable", [True, False])
def test_joined_layers_exchange_without_loss(confirmable: bool) -> None:
    client, server = layer(mid=1, tokens=1), layer(mid=5000)
    link, log = Link(client, server), []
    token = client.send_request(CoapMessage.request(3, HB_PATH, payload=b"\xa0"), 0.0,
                                confirmable=confirmable)
    link.run(0.0, 1000.0, _serve(server, log))
    received = [e for e in log if isinstance(e, RequestReceived)]
    responses = [e for e in log if isinstance(e, ResponseReceived)]
    assert len(received) == 1 and received[0].message.uri_path == HB_PATH
    assert len(responses) == 1 and responses[0].token == token
    assert responses[0].message.payload == b"ok"
    assert link.count == {"a>b": 1, "b>a": 1}


def test_joined_layers_recover_from_lost_datagrams() -> None:
    client, server = layer(mid=1), layer(mid=5000)
    # lose the first request and the first (piggybacked) response: the retransmission of the
    # request is a duplicate at the server, which re-sends its cached ACK
    link = Link(client, server, lambda d, n: (d, n) in {("a>b", 1), ("b>a", 1)})
    log: list[object] = []
    token = client.send_request(CoapMessage.request(3, HB_PATH), 0.0)
    end = link.run(0.0, 1000.0, _serve(server, log))
    assert [type(e) for e in log].count(RequestReceived) == 1  # processed once
    assert [e for e in log if isinstance(e, ResponseReceived)][0].token == token
    assert not any(isinstance(e, RequestFailed) for e in log)
    assert end == 6.0 and link.count == {"a>b": 3, "b>a": 2}


def test_joined_layers_non_heartbeat_lost_then_times_out() -> None:
    client, server = layer(mid=1, non_request_lifetime=60.0), layer(mid=5000)
    link = Link(client, server, lambda d, n: d == "a>b")
    log: list[object] = []
    token = client.send_request(CoapMessage.request(3, HB_PATH), 0.0, confirmable=False)
    link.run(0.0, 1000.0, _serve(server, log))
    assert log == [RequestFailed(token, "timeout")]


def test_joined_layers_separate_con_response_with_losses() -> None:
    client, server = layer(mid=1), layer(mid=5000)
    # lose the first separate CON response, and the client's first ACK of it
    link = Link(client, server, lambda d, n: (d, n) in {("b>a", 2), ("a>b", 2)})
    log: list[object] = []
    pending: list[RequestReceived] = []

    def on_event(event: object, now: float) -> None:
        log.append(event)
        if isinstance(event, RequestReceived):
            server.send_ack(event.key, now)
            pending.append(event)

    token = client.send_request(CoapMessage.request(1, ("config",)), 0.0)
    link.run(0.0, 1.0, on_event)
    [request] = pending
    server.send_response(request.key, request.message.response(69, payload=b"late"), 1.0)
    link.run(1.0, 1000.0, on_event)
    responses = [e for e in log if isinstance(e, ResponseReceived)]
    assert len(responses) == 1 and responses[0].token == token
    assert responses[0].message.payload == b"late"
    assert not any(isinstance(e, (RequestFailed, ResponseTimedOut)) for e in log)
    assert server.get_timer() is None and client.get_timer() is None


@given(st.binary(max_size=64), st.sampled_from([CON, NON]))
@settings(max_examples=300)
def test_layer_survives_random_datagrams(data: bytes, mtype: MessageType) -> None:
    obj = layer()
    obj.send_request(CoapMessage.request(1, ("x",), token=b"\x00\x01"), 0.0,
                     confirmable=mtype is CON)
    obj.receive(data, 1.0)
    obj.handle_timer(5.0)
    events(obj)
    obj.datagrams_to_send()


# --- TCP -------------------------------------------------------------------------------------


def tcp_pair(**kw: Any) -> tuple[TcpLayer, TcpLayer]:
    a = TcpLayer(token_source=Tokens(1), **kw)
    b = TcpLayer(token_source=Tokens(100), **kw)
    return a, b


def shuttle(a: TcpLayer, b: TcpLayer, now: float, chunk: int = 0) -> None:
    for _ in range(10):
        da, db = a.data_to_send(), b.data_to_send()
        if not da and not db:
            return
        for src, dst in ((da, b), (db, a)):
            if chunk:
                for i in range(0, len(src), chunk):
                    dst.receive(src[i:i + chunk], now)
            elif src:
                dst.receive(src, now)


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_tcp_csm_then_request_response(chunk: int) -> None:
    client, server = tcp_pair(max_message_size=4096, block_wise=True)
    shuttle(client, server, 0.0, chunk)
    assert events(client) == [CsmReceived(4096, True)] == events(server)
    token = client.send_request(CoapMessage.request(3, HB_PATH, payload=b"\xa0"), 0.0)
    shuttle(client, server, 0.0, chunk)
    [received] = events(server)
    assert isinstance(received, RequestReceived) and received.key == RequestKey(token)
    server.send_response(received.key, received.message.response(68), 0.1)
    shuttle(client, server, 0.1, chunk)
    [response] = events(client)
    assert response == ResponseReceived(token, CoapMessage(None, 68, 0, token))
    assert client.get_timer() is None


def test_tcp_ping_pong_release_and_empty() -> None:
    client, server = tcp_pair()
    shuttle(client, server, 0.0)
    events(client), events(server)
    token = client.send_ping(1.0)
    server.receive(encode_tcp(CoapMessage(None, 0)), 1.0)  # empty keepalive ignored
    shuttle(client, server, 1.5)
    assert events(client) == [PongReceived(token, 0.5)] and events(server) == []
    server.release(2.0, alternative_addresses=("coaps+tcp://[2001:db8::1]",), hold_off=30)
    shuttle(client, server, 2.0)
    assert events(client) == [ReleaseReceived(("coaps+tcp://[2001:db8::1]",), 30)]


def test_tcp_request_timeout_and_unknown_critical() -> None:
    client, server = tcp_pair()
    shuttle(client, server, 0.0)
    events(client), events(server)
    token = client.send_request(CoapMessage.request(1, ("x",)).with_options((9, b"")), 0.0,
                                lifetime=20.0)
    shuttle(client, server, 0.0)
    assert [type(e) for e in events(server)] == [MessageDropped]
    [response] = events(client)
    assert isinstance(response, ResponseReceived) and response.message.code == 130
    t2 = client.send_request(CoapMessage.request(1, ("x",)), 1.0, lifetime=20.0)
    client.data_to_send()
    assert client.get_timer() == 21.0
    client.handle_timer(21.0)
    assert events(client) == [RequestFailed(t2, "timeout")]
    assert token != t2


def test_tcp_first_message_must_be_csm() -> None:
    client, server = tcp_pair()
    server.data_to_send()
    token = server.send_request(CoapMessage.request(1, ("x",)), 0.0)
    server.receive(encode_tcp(CoapMessage.request(1, ("x",), token=b"t")), 0.0)
    assert server.closed
    assert events(server) == [RequestFailed(token, "reset"),
                              ConnectionAborted("expected CSM as the first message", False)]
    abort = TcpFramer().feed(server.data_to_send())
    assert [m.code for m in abort] == [SignalCode.ABORT]


def test_tcp_oversize_frame_aborts() -> None:
    client, server = tcp_pair(max_message_size=1152)
    shuttle(client, server, 0.0)
    events(server), events(client)
    big = encode_tcp(CoapMessage(None, 3, 0, b"t", (), b"x" * 5000))
    server.receive(big[:4], 0.0)
    [aborted] = events(server)
    assert isinstance(aborted, ConnectionAborted) and not aborted.by_peer
    assert "exceeds" in aborted.diagnostic and server.closed
    client.receive(server.data_to_send(), 0.0)
    assert [type(e) for e in events(client)] == [ConnectionAborted]
    assert client.closed


def test_tcp_csm_with_unknown_critical_option_aborts_with_bad_csm_option() -> None:
    server = TcpLayer()
    server.data_to_send()
    server.receive(encode_tcp(CoapMessage(None, SignalCode.CSM, 0, b"", ((9, b""),))), 0.0)
    [abort] = TcpFramer().feed(server.data_to_send())
    assert abort.code == SignalCode.ABORT and abort.option(2) == b"\x09"


def test_tcp_respects_peer_max_message_size() -> None:
    client = TcpLayer()
    client.receive(encode_tcp(CoapMessage(None, SignalCode.CSM, 0, b"",
                                          ((2, encode_uint(100)),))), 0.0)
    assert client.peer_max_message_size == 100
    with pytest.raises(CoapUsageError):
        client.send_request(CoapMessage.request(3, HB_PATH, payload=b"x" * 200), 0.0)
    client.close()
    assert client.data_to_send() == b"" and client.next_event() is None


def test_tcp_observe_over_tcp() -> None:
    client, server = tcp_pair()
    shuttle(client, server, 0.0)
    events(client), events(server)
    token = client.send_request(CoapMessage.request(1, ("m",), observe=0), 0.0)
    shuttle(client, server, 0.0)
    [request] = events(server)
    assert isinstance(request, RequestReceived)
    server.send_response(request.key, request.message.response(69, observe=1), 0.0)
    server.send_notification(token, CoapMessage(None, 69, 0, b"", ((OptionNumber.OBSERVE,
                                                                    b"\x02"),)), 1.0)
    shuttle(client, server, 1.0)
    assert [e.message.observe for e in events(client)] == [1, 2]  # type: ignore[attr-defined]
    assert client.outstanding == 1 and client.get_timer() is None


@given(st.lists(st.binary(max_size=40), max_size=5))
@settings(max_examples=200)
def test_tcp_layer_survives_random_bytes(chunks: list[bytes]) -> None:
    obj = TcpLayer(token_source=Tokens())
    obj.receive(encode_tcp(CoapMessage(None, SignalCode.CSM)), 0.0)
    obj.send_request(CoapMessage.request(1, ("x",)), 0.0)
    for chunk in chunks:
        obj.receive(chunk, 1.0)
    obj.handle_timer(100.0)
    events(obj)
    obj.data_to_send()


# --- structured fuzzing: plausible messages in any order ---------------------------------------

_codes = st.sampled_from([0, 1, 3, 32, 68, 69, 130, 160, 225, 226, 227, 228, 229, 230])
_options = st.lists(st.tuples(st.sampled_from([2, 4, 6, 9, 11, 12, 14, 17, 23, 35, 258]),
                              st.binary(max_size=5)), max_size=4)
_tokens = st.sampled_from([b"", b"\x00\x01", b"\x00\x00\x00\x01", b"\x00\x00\x00\x02", b"x"])


@given(st.lists(st.tuples(st.sampled_from(list(MessageType)), _codes, st.integers(98, 104),
                          _tokens, _options, st.binary(max_size=3), st.booleans()),
                max_size=12))
@settings(max_examples=300)
def test_layer_survives_any_sequence_of_messages(script: list[Any]) -> None:
    obj = layer(mid=100)
    obj.send_request(CoapMessage.request(1, ("x",), observe=0), 0.0)
    obj.send_request(CoapMessage.request(1, ("y",)), 0.0, confirmable=False)
    now = 0.0
    for mtype, code, mid, token, options, payload, answer in script:
        now += 1.0
        if code == 0:
            token, options, payload = b"", [], b""
        obj.receive(encode_udp(CoapMessage(mtype, code, mid, token, tuple(options), payload)),
                    now)
        obj.handle_timer(now)
        for event in events(obj):
            if answer and isinstance(event, RequestReceived):
                obj.send_response(event.key, event.message.response(69), now)
        assert obj.dedup_entries <= 64
        obj.datagrams_to_send()


@given(st.lists(st.tuples(_codes, _tokens, _options, st.binary(max_size=3)), max_size=10),
       st.integers(0, 40))
@settings(max_examples=300)
def test_tcp_layer_survives_any_sequence_of_messages(script: list[Any], peer_max: int) -> None:
    obj = TcpLayer(token_source=Tokens())
    obj.receive(encode_tcp(CoapMessage(None, SignalCode.CSM, 0, b"",
                                       ((2, encode_uint(peer_max)),))), 0.0)
    if peer_max >= 12:
        obj.send_request(CoapMessage.request(1, ("x",), observe=0, token=b"\x00\x01"), 0.0)
    for code, token, options, payload in script:
        obj.receive(encode_tcp(CoapMessage(None, code, 0, token, tuple(options), payload)), 1.0)
        for event in events(obj):
            if isinstance(event, RequestReceived):
                try:
                    obj.send_response(event.key, event.message.response(69), 1.0)
                except CoapUsageError:  # the response does not fit the peer's limit
                    pass
        obj.data_to_send()


def test_our_non_messages_are_forgotten_after_non_lifetime() -> None:
    # A DOTS session's steady state: the peer's NON heartbeat answered, and our own NON
    # heartbeat, every 30 s. Found by the 50,000-session soak: the message IDs of our NONs
    # (kept for a Reset) were bounded only by count, so every session filled 64 entries
    # in 16 minutes and RSS grew by ~400 MiB in 10 minutes. Now they last NON_LIFETIME.
    server = layer(mid=1000)
    lifetime = server.parameters.non_lifetime
    for i in range(80):  # 40 minutes
        now = 30.0 * i
        server.receive(encode_udp(hb(NON, mid=i, token=bytes([i]))), now)
        (request,) = [e for e in events(server) if isinstance(e, RequestReceived)]
        server.send_response(request.key, CoapMessage(None, 68), now)
        server.send_request(CoapMessage.request(3, HB_PATH), now, confirmable=False)
        server.datagrams_to_send()
        server.handle_timer(now)
        events(server)
    per_interval = 2
    assert len(server._sent_non) <= per_interval * (lifetime // 30 + 1)


def test_a_reset_names_our_non_within_non_lifetime_only() -> None:
    server = layer(mid=500)
    lifetime = server.parameters.non_lifetime
    first = server.send_notification(b"obs1", CoapMessage(None, 69, 0, b"", ((6, b"\x02"),)),
                                     0.0)
    second = server.send_notification(b"obs2", CoapMessage(None, 69, 0, b"", ((6, b"\x03"),)),
                                      lifetime - 1)
    server.send_notification(b"obs3", CoapMessage(None, 69, 0, b"", ((6, b"\x04"),)),
                             lifetime + 1)  # the first one is forgotten from here
    server.receive(encode_udp(CoapMessage(RST, 0, first)), lifetime + 2)
    server.receive(encode_udp(CoapMessage(RST, 0, second)), lifetime + 2)
    assert [e for e in events(server) if isinstance(e, Reset)] == [Reset(second, b"obs2")]
