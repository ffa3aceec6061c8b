"""CoAP codec: byte vectors against aiocoap's encoder/decoder, TCP framing, format errors,
typed options, and hypothesis properties (RFC 7252 §3, RFC 8323 §3.2)."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.coap import (
    DEFAULT_KNOWN_OPTIONS,
    BadOptionError,
    Block,
    CoapFormatError,
    CoapMessage,
    CoapUsageError,
    MessageTooLarge,
    MessageType,
    OptionNumber,
    SignalCode,
    TcpFramer,
    check_options,
    decode_tcp,
    decode_udp,
    decode_uint,
    encode_tcp,
    encode_udp,
    encode_uint,
    format_code,
    unknown_critical_options,
)
from gateway.coap.tcp_framing import tcp_frame_length

aiocoap = pytest.importorskip("aiocoap")
from aiocoap import Message as AMessage  # noqa: E402
from aiocoap.numbers import codes as acodes  # noqa: E402
from aiocoap.optiontypes import BlockOption, UintOption  # noqa: E402

CON, NON, ACK, RST = MessageType.CON, MessageType.NON, MessageType.ACK, MessageType.RST
DOTS_PATH = (".well-known", "dots", "mitigate", "cuid=dz6pHjaADkaFTbjr0JGBpw", "mid=123")
CBOR_BODY = cbor2.dumps({1: {4: [{5: ["1.2.3.0/24"], 14: 3600}]}})


# --- byte-exact comparison with aiocoap --------------------------------------------------------


def amsg(code: int, mtype: MessageType | None, mid: int, token: bytes, payload: bytes = b"",
         **opts: object) -> AMessage:
    """An aiocoap message set up without its deprecated constructor arguments."""
    msg = AMessage(code=code, payload=payload)
    for name, value in opts.items():
        setattr(msg.opt, name, value)
    if mtype is not None:
        msg.mtype = aiocoap.numbers.types.Type(int(mtype))
    msg.mid = mid
    msg.token = token
    return msg


def _vectors() -> list[tuple[str, CoapMessage, AMessage]]:
    v = []
    m = CoapMessage.request(3, DOTS_PATH, content_format=271, payload=CBOR_BODY,
                            token=b"\x8b\x3e\x11\x02", mtype=NON)
    v.append(("put-mitigate", _with_mid(m, 0x1234),
              amsg(acodes.PUT, NON, 0x1234, b"\x8b\x3e\x11\x02", CBOR_BODY,
                   uri_path=DOTS_PATH, content_format=271)))
    m = CoapMessage.request(1, (".well-known", "dots", "mitigate", "cuid=abc"), observe=0,
                            query=("c=n",), token=b"\x01", mtype=CON)
    v.append(("get-observe", _with_mid(m, 7),
              amsg(acodes.GET, CON, 7, b"\x01", observe=0,
                   uri_path=(".well-known", "dots", "mitigate", "cuid=abc"),
                   uri_query=("c=n",))))
    req = CoapMessage.request(1, ("x",), token=b"\xaa\xbb")
    r = req.response(69, payload=CBOR_BODY, content_format=271, max_age=60,
                     block2=Block(2, True, 6), etag=b"\x01\x02\x03\x04", observe=5)
    v.append(("response-max-age-block2-etag", _with_mid(r, 0xFFFF, ACK),
              amsg(acodes.CONTENT, ACK, 0xFFFF, b"\xaa\xbb", CBOR_BODY, content_format=271,
                   max_age=60, etag=b"\x01\x02\x03\x04", observe=5,
                   block2=BlockOption.BlockwiseTuple(2, True, 6))))
    long_segment = "s" * 300
    m = CoapMessage.request(3, (".well-known", "dots", long_segment), no_response=26,
                            hop_limit=16, token=b"12345678", mtype=CON)
    v.append(("extended-length-and-delta", _with_mid(m, 0),
              amsg(acodes.PUT, CON, 0, b"12345678",
                   uri_path=(".well-known", "dots", long_segment), no_response=26,
                   hop_limit=16)))
    m = CoapMessage.request(3, ("a" * 13, "b" * 268, "c" * 269), size1=1152, mtype=CON)
    v.append(("length-boundaries-and-size1", _with_mid(m, 1),
              amsg(acodes.PUT, CON, 1, b"", uri_path=("a" * 13, "b" * 268, "c" * 269),
                   size1=1152)))
    m = CoapMessage.request(4, DOTS_PATH, mtype=NON, token=b"\x00" * 4)
    v.append(("delete", _with_mid(m, 300),
              amsg(acodes.DELETE, NON, 300, b"\x00" * 4, uri_path=DOTS_PATH)))
    r = CoapMessage(ACK, 130, 99, b"\x05", (), b"unrecognized: option 9")
    v.append(("bad-option-diagnostic",
              r, amsg(acodes.BAD_OPTION, ACK, 99, b"\x05", b"unrecognized: option 9")))
    v.append(("empty-ack", CoapMessage(ACK, 0, 42), amsg(acodes.EMPTY, ACK, 42, b"")))
    v.append(("reset", CoapMessage(RST, 0, 43), amsg(acodes.EMPTY, RST, 43, b"")))
    m = CoapMessage.request(3, (".well-known", "dots", "hb"), content_format=271,
                            payload=cbor2.dumps({49: {51: True}}), mtype=NON, token=b"hb")
    v.append(("heartbeat", _with_mid(m, 0x8000),
              amsg(acodes.PUT, NON, 0x8000, b"hb", cbor2.dumps({49: {51: True}}),
                   uri_path=(".well-known", "dots", "hb"), content_format=271)))
    return v


def _with_mid(msg: CoapMessage, mid: int, mtype: MessageType | None = None) -> CoapMessage:
    return CoapMessage(mtype or msg.mtype, msg.code, mid, msg.token, msg.options, msg.payload)


VECTORS = _vectors()


@pytest.mark.parametrize(("ours", "theirs"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_udp_bytes_match_aiocoap(ours: CoapMessage, theirs: AMessage) -> None:
    wire = theirs.encode()
    assert encode_udp(ours) == wire
    decoded = decode_udp(wire)
    assert decoded == ours
    back = AMessage.decode(encode_udp(ours))
    assert back.code == ours.code and back.mid == ours.mid and back.token == ours.token
    assert back.payload == ours.payload
    assert back.opt.encode() == theirs.opt.encode()


@pytest.mark.parametrize(("ours", "theirs"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_tcp_bytes_match_aiocoap(ours: CoapMessage, theirs: AMessage) -> None:
    tcp = pytest.importorskip("aiocoap.transports.tcp")
    if not hasattr(tcp, "_serialize") or not hasattr(tcp, "_decode_message"):
        pytest.skip("aiocoap has no TCP serializer to compare with")
    wire = tcp._serialize(theirs)
    assert encode_tcp(ours) == wire
    msg, used = decode_tcp(wire)
    assert used == len(wire)
    assert (msg.mtype, msg.mid) == (None, 0)
    assert (msg.code, msg.token, msg.options, msg.payload) == (
        ours.code, ours.token, ours.options, ours.payload)
    back = tcp._decode_message(encode_tcp(ours))
    assert back.code == ours.code and back.token == ours.token and back.payload == ours.payload


def test_decoded_accessors_of_a_dots_request() -> None:
    msg = decode_udp(encode_udp(VECTORS[0][1]))
    assert msg.mtype is NON and msg.mid == 0x1234 and msg.code == 3
    assert msg.uri_path == DOTS_PATH
    assert msg.content_format == 271
    assert msg.payload == CBOR_BODY
    get = VECTORS[1][1]
    assert get.observe == 0 and get.uri_query == ("c=n",)
    resp = VECTORS[2][1]
    assert resp.max_age == 60 and resp.etag == b"\x01\x02\x03\x04"
    assert resp.block2 == Block(2, True, 6) and resp.block2.size == 1024
    assert resp.observe == 5
    ext = VECTORS[3][1]
    assert ext.no_response == 26 and ext.hop_limit == 16 and len(ext.uri_path[2]) == 300


@pytest.mark.parametrize("body_length", [0, 12, 13, 268, 269, 65804, 65805, 70000])
def test_tcp_length_forms_match_aiocoap(body_length: int) -> None:
    tcp = pytest.importorskip("aiocoap.transports.tcp")
    if not hasattr(tcp, "_serialize"):
        pytest.skip("no aiocoap TCP serializer")
    payload = b"p" * (body_length - 1) if body_length else b""  # marker + payload
    ours = CoapMessage(None, 69, 0, b"\x01\x02", (), payload)
    wire = encode_tcp(ours)
    assert wire == tcp._serialize(amsg(acodes.CONTENT, None, 0, b"\x01\x02", payload))
    assert tcp_frame_length(wire) == len(wire)
    assert decode_tcp(wire + b"trailing") == (ours, len(wire))


def test_csm_matches_aiocoap_and_known_vector() -> None:
    tcp = pytest.importorskip("aiocoap.transports.tcp")
    csm = CoapMessage(None, SignalCode.CSM, 0, b"", ((2, encode_uint(1152)), (4, b"")))
    # Len 4 (options), TKL 0, code 7.01, Max-Message-Size 0x0480, Block-Wise-Transfer empty
    assert encode_tcp(csm) == bytes.fromhex("40e1" "220480" "20")
    theirs = AMessage(code=acodes.CSM)
    theirs.opt.add_option(UintOption(2, 1152))
    theirs.opt.add_option(UintOption(4, 0))
    if hasattr(tcp, "_serialize"):
        assert encode_tcp(csm) == tcp._serialize(theirs)
    assert format_code(SignalCode.CSM) == "7.01"


# --- framing ---------------------------------------------------------------------------------


def _stream() -> tuple[bytes, list[CoapMessage]]:
    msgs = [
        CoapMessage(None, SignalCode.CSM, 0, b"", ((2, encode_uint(4096)),)),
        CoapMessage.request(3, DOTS_PATH, content_format=271, payload=CBOR_BODY,
                            token=b"\x01\x02\x03\x04", mtype=None),
        CoapMessage(None, SignalCode.PING, 0, b"\x09"),
        CoapMessage(None, 69, 0, b"\x07", (), b"z" * 400),  # 14 extended length
        CoapMessage(None, 0, 0),  # empty keepalive
    ]
    return b"".join(encode_tcp(m) for m in msgs), msgs


def test_framer_split_at_every_byte_position() -> None:
    stream, msgs = _stream()
    for cut in range(len(stream) + 1):
        framer = TcpFramer(4096)
        out = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert out == msgs, cut
        assert framer.buffered == 0


def test_framer_byte_by_byte_and_three_way_splits() -> None:
    stream, msgs = _stream()
    framer = TcpFramer(4096)
    out = []
    for i in range(len(stream)):
        out += framer.feed(stream[i:i + 1])
    assert out == msgs
    for a in range(0, len(stream), 37):
        for b in range(a, len(stream), 53):
            framer = TcpFramer(4096)
            assert framer.feed(stream[:a]) + framer.feed(stream[a:b]) + framer.feed(
                stream[b:]) == msgs


def test_framer_rejects_oversize_frame_from_its_header_alone() -> None:
    framer = TcpFramer(1152)
    big = encode_tcp(CoapMessage(None, 69, 0, b"", (), b"x" * 2000))
    with pytest.raises(MessageTooLarge) as info:
        framer.feed(big[:3])  # header only: nothing of the body buffered yet
    assert info.value.size == len(big) and info.value.limit == 1152
    assert framer.buffered == 0
    with pytest.raises(MessageTooLarge):  # a failed stream stays failed
        framer.feed(b"\x00\x00")


def test_framer_limit_is_inclusive_and_capped() -> None:
    exact = encode_tcp(CoapMessage(None, 69, 0, b"", (), b"x" * 100))
    assert TcpFramer(len(exact)).feed(exact)[0].payload == b"x" * 100
    with pytest.raises(MessageTooLarge):
        TcpFramer(len(exact) - 1).feed(exact)
    with pytest.raises(CoapUsageError):
        TcpFramer(64 * 1024 + 1)
    # a 4-byte extended length announcing 4 GiB is refused without buffering
    with pytest.raises(MessageTooLarge):
        TcpFramer(65536).feed(b"\xf0\xff\xff\xff\xff")


def test_framer_format_error_in_a_frame() -> None:
    framer = TcpFramer()
    with pytest.raises(CoapFormatError):
        framer.feed(b"\x19\x45")  # TKL 9
    framer = TcpFramer()
    with pytest.raises(CoapFormatError):
        framer.feed(b"\x10\x45\xff")  # payload marker with empty payload


def test_decode_tcp_truncated() -> None:
    wire = encode_tcp(VECTORS[0][1])
    with pytest.raises(CoapFormatError):
        decode_tcp(wire[:-1])
    with pytest.raises(CoapFormatError):
        decode_tcp(b"")


# --- format errors ---------------------------------------------------------------------------

FORMAT_ERRORS = {
    "too-short": (b"\x40\x01\x00", None),
    "version-0": (b"\x00\x01\x00\x01", None),
    "version-2": (b"\x80\x01\x00\x01", None),
    "tkl-9": (b"\x49\x01\x12\x34" + b"\x00" * 9, (CON, 0x1234)),
    "tkl-15": (b"\x5f\x01\x12\x34" + b"\x00" * 15, (NON, 0x1234)),
    "truncated-token": (b"\x44\x01\x00\x05\x01\x02", (CON, 5)),
    "empty-with-token": (b"\x41\x00\x00\x05\x01", (CON, 5)),
    "empty-with-payload": (b"\x40\x00\x00\x05\xff\x01", (CON, 5)),
    "delta-nibble-15": (b"\x40\x01\x00\x06\xf1\x00", (CON, 6)),
    "length-nibble-15": (b"\x40\x01\x00\x06\x1f", (CON, 6)),
    "truncated-ext-delta-13": (b"\x40\x01\x00\x06\xd0", (CON, 6)),
    "truncated-ext-delta-14": (b"\x40\x01\x00\x06\xe0\x01", (CON, 6)),
    "truncated-ext-length-13": (b"\x40\x01\x00\x06\x1d", (CON, 6)),
    "truncated-ext-length-14": (b"\x40\x01\x00\x06\x1e\x00", (CON, 6)),
    "truncated-value": (b"\x50\x01\x00\x06\xb3ab", (NON, 6)),
    "marker-empty-payload": (b"\x40\x01\x00\x06\xff", (CON, 6)),
    "option-number-overflow": (b"\x40\x01\x00\x06\xe0\xff\xff\xe0\xff\xff", (CON, 6)),
}


@pytest.mark.parametrize(("data", "header"), FORMAT_ERRORS.values(), ids=FORMAT_ERRORS.keys())
def test_udp_format_errors(data: bytes, header: tuple[MessageType, int] | None) -> None:
    with pytest.raises(CoapFormatError) as info:
        decode_udp(data)
    assert isinstance(info.value, ValueError) and info.value.reason
    if header is None:
        assert info.value.mid is None
    else:
        assert (info.value.mtype, info.value.mid) == header


def test_format_error_is_not_bad_option() -> None:
    with pytest.raises(CoapFormatError) as info:
        decode_udp(b"\x40")
    assert not isinstance(info.value, BadOptionError)


# --- message value and options ---------------------------------------------------------------


def test_constructor_sorts_options_stably_and_validates() -> None:
    msg = CoapMessage(CON, 1, 1, b"", ((11, b"b"), (3, b"h"), (11, b"c"), (1, b"")))
    assert msg.options == ((1, b""), (3, b"h"), (11, b"b"), (11, b"c"))
    assert msg.uri_path == ("b", "c") and msg.uri_host == "h" and msg.if_match == (b"",)
    with pytest.raises(CoapUsageError):
        CoapMessage(CON, 1, 1, b"123456789")
    with pytest.raises(CoapUsageError):
        CoapMessage(CON, 1, 65536)
    with pytest.raises(CoapUsageError):
        CoapMessage(CON, 256)
    with pytest.raises(CoapUsageError):
        CoapMessage(CON, 1, 0, b"", ((70000, b""),))
    with pytest.raises(CoapUsageError):
        CoapMessage(CON, 1, 0, b"", ((1, "text"),))  # type: ignore[arg-type]
    with pytest.raises(CoapUsageError):
        encode_udp(CoapMessage(None, 1))
    with pytest.raises(CoapUsageError):
        encode_udp(CoapMessage(ACK, 0, 1, b"t"))
    assert CoapMessage(1, 1).mtype is NON  # type: ignore[arg-type]


def test_builders_and_option_editing() -> None:
    req = CoapMessage.request(3, ("a", "b"), query=("k=v",), if_match=(b"",), accept=271,
                              uri_host="example.com", uri_port=4646, block1=Block(0, True, 2),
                              token=b"tt")
    assert req.uri_port == 4646 and req.accept == 271 and req.block1 == Block(0, True, 2)
    resp = req.response(68, size2=10)
    assert resp.token == b"tt" and resp.mtype is None and resp.size2 == 10
    assert req.with_options((11, b"c")).uri_path == ("a", "b", "c")
    assert req.without_options(OptionNumber.URI_PATH).uri_path == ()
    assert req.replace_option(OptionNumber.URI_PATH, b"z").uri_path == ("z",)
    assert req.with_options((60, b"\x01")).size1 == 1
    with pytest.raises(CoapUsageError):
        CoapMessage.request(69)
    with pytest.raises(CoapUsageError):
        req.response(3)
    assert "Uri-Path(11)='a'" in repr(req)


def test_uint_encoding_is_minimal() -> None:
    assert encode_uint(0) == b""
    assert encode_uint(255) == b"\xff"
    assert encode_uint(256) == b"\x01\x00"
    assert encode_uint(2**32 - 1) == b"\xff\xff\xff\xff"
    assert decode_uint(b"\x00\x00\x05") == 5  # RFC 7252 §3.2: leading zeros accepted
    assert CoapMessage.request(1, observe=0).option(OptionNumber.OBSERVE) == b""
    with pytest.raises(ValueError):
        encode_uint(-1)


def test_malformed_values_raise_bad_option() -> None:
    bad = CoapMessage(CON, 1, 0, b"", ((11, b"\xff"), (12, b"\x01\x02\x03"), (16, b"\x00"),
                                        (23, b"\x01\x02\x03\x04")))
    for accessor in ("uri_path", "content_format", "hop_limit", "block2"):
        with pytest.raises(BadOptionError):
            getattr(bad, accessor)


def test_block_value() -> None:
    assert Block(5, True, 6).encode() == bytes((5 << 4 | 8 | 6,))
    assert Block.decode(Block(70000, False, 2).encode()) == Block(70000, False, 2)
    assert Block(0, False, 0).encode() == b""
    assert Block(3, False, 7).size == 1024  # BERT
    with pytest.raises(ValueError):
        Block(1 << 20, False, 0)


def test_unknown_critical_options_and_check_options() -> None:
    msg = CoapMessage(CON, 1, 0, b"", ((9, b""), (11, b"ok"), (35, b"x"), (100, b""),
                                        (2049, b"")))
    assert unknown_critical_options(msg, DEFAULT_KNOWN_OPTIONS) == [9, 35, 2049]
    # malformed known critical (Accept of 3 bytes), repeated non-repeatable critical (Uri-Host),
    # malformed elective (Content-Format of 3 bytes), repeated elective (Max-Age)
    opts = ((3, b"a"), (3, b"b"), (12, b"\x00\x00\x01"), (14, b"\x01"), (14, b"\x02"),
            (17, b"\x00\x00\x01"), (100, b""), (258, b"\x01"))
    assert check_options(opts, DEFAULT_KNOWN_OPTIONS) == ([3, 17], [12, 14])
    assert check_options(((11, b"\xc3\x28"),), DEFAULT_KNOWN_OPTIONS) == ([11], [])
    assert check_options(((11, b"a"), (11, b"b")), DEFAULT_KNOWN_OPTIONS) == ([], [])


# --- properties ------------------------------------------------------------------------------

_option = st.tuples(st.integers(0, 65535), st.binary(max_size=300))
_messages = st.builds(
    lambda mtype, code, mid, token, options, payload: CoapMessage(
        mtype, code, mid, token, tuple(options), payload),
    st.sampled_from(list(MessageType)),
    st.integers(1, 255),
    st.integers(0, 65535),
    st.binary(max_size=8),
    st.lists(_option, max_size=12),
    st.binary(max_size=200),
)


@given(st.binary(max_size=120))
@settings(max_examples=400)
def test_decoders_raise_only_format_errors(data: bytes) -> None:
    for decode in (decode_udp, decode_tcp):
        try:
            decode(data)
        except CoapFormatError:
            pass
    framer = TcpFramer()
    try:
        framer.feed(data)
        framer.feed(data)
    except CoapFormatError:
        pass


@given(st.lists(st.binary(max_size=30), max_size=6))
def test_framer_on_random_chunks_raises_only_format_errors(chunks: list[bytes]) -> None:
    framer = TcpFramer(256)
    try:
        for chunk in chunks:
            framer.feed(chunk)
            assert framer.buffered <= 256
    except CoapFormatError:
        pass


@given(_messages)
@settings(max_examples=300)
def test_udp_round_trip(msg: CoapMessage) -> None:
    wire = encode_udp(msg)
    assert decode_udp(wire) == msg
    assert encode_udp(decode_udp(wire)) == wire


@given(_messages)
@settings(max_examples=300)
def test_tcp_round_trip(msg: CoapMessage) -> None:
    ours = CoapMessage(None, msg.code, 0, msg.token, msg.options, msg.payload)
    wire = encode_tcp(ours)
    assert decode_tcp(wire) == (ours, len(wire))
    assert TcpFramer(65536).feed(wire) == [ours]


# Opaque options only: aiocoap re-encodes typed ones (uint leading zeros, strings).
_opaque_messages = st.builds(
    lambda mtype, code, mid, token, options, payload: CoapMessage(
        mtype, code, mid, token, tuple(options), payload),
    st.sampled_from(list(MessageType)),
    st.integers(1, 255),
    st.integers(0, 65535),
    st.binary(max_size=8),
    st.lists(st.tuples(st.sampled_from([1, 4, 2000, 2001, 4000, 65000]),
                       st.binary(max_size=300)), max_size=8),
    st.binary(max_size=200),
)


@given(_opaque_messages)
@settings(max_examples=150)
def test_aiocoap_round_trips_what_we_encode(msg: CoapMessage) -> None:
    from aiocoap.message import Direction

    wire = encode_udp(msg)
    theirs = AMessage.decode(wire)
    assert (theirs.code, theirs.mid, theirs.token, theirs.payload) == (
        msg.code, msg.mid, msg.token, msg.payload)
    theirs.direction = Direction.OUTGOING
    assert theirs.encode() == wire


@pytest.mark.parametrize("options", [
    (),
    ((OptionNumber.URI_PATH, b".well-known"), (OptionNumber.URI_PATH, b"dots"),
     (OptionNumber.URI_PATH, b"hb"), (OptionNumber.CONTENT_FORMAT, b"\x01\x0f")),
    ((OptionNumber.IF_MATCH, b""), (OptionNumber.OBSERVE, b""),
     (OptionNumber.URI_PATH, b"mitigate"), (OptionNumber.URI_QUERY, b"c=a"),
     (OptionNumber.HOP_LIMIT, b"\x10")),
    ((OptionNumber.OBSERVE, b"\x01"), (OptionNumber.HOP_LIMIT, b"\x00")),  # invalid hop
    ((OptionNumber.HOP_LIMIT, b"\x01\x02"),),  # invalid hop: two bytes
])
def test_request_options_match_the_accessors(options: tuple[tuple[int, bytes], ...]) -> None:
    msg = CoapMessage.request(1, options=options)
    o = msg.request_options()
    assert (o.uri_path, o.uri_query, o.content_format, o.observe, o.if_match) == (
        msg.uri_path, msg.uri_query, msg.content_format, msg.observe, msg.if_match)
    try:
        expected = msg.hop_limit
    except BadOptionError:
        expected = None
    assert o.hop_limit == expected


def test_request_options_refuse_what_the_accessors_refuse() -> None:
    bad_path = CoapMessage.request(1, options=((OptionNumber.URI_PATH, b"\xff"),))
    with pytest.raises(BadOptionError):
        bad_path.request_options()
    long_cf = CoapMessage.request(1, options=((OptionNumber.CONTENT_FORMAT, b"\x01\x02\x03"),))
    with pytest.raises(BadOptionError):
        long_cf.request_options()
