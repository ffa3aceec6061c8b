"""The per-datagram shortcuts of the established-session path (issue 21 §3) read exactly
what the general code reads: one whole record framed without the loop, the local address
looked up by its PKTINFO data."""

from __future__ import annotations

import select
import socket

from hypothesis import given
from hypothesis import strategies as st

from gateway.transport.dtls_records import _FRAMING, _incoming_with_offsets, split_incoming
from gateway.transport.udp import Address, forget, open_udp_socket, receive

#: The framing of the OpenSSL this process loaded (3.0 and 3.5 differ, dtls_records).
_OPENSSL_MAX_LENGTH, _OPENSSL_READ = _FRAMING


def general(datagram: bytes) -> list:
    return [record for _, record in _incoming_with_offsets(datagram)]


def record(kind: int, version: bytes, length: int, body_length: int | None = None) -> bytes:
    body = bytes(range(256)) * (1 + (length if body_length is None else body_length) // 256)
    return (bytes((kind,)) + version + b"\x00\x01" + b"\x00\x00\x00\x00\x00\x07"
            + length.to_bytes(2, "big") + body[: length if body_length is None else body_length])


@given(kind=st.sampled_from([20, 21, 22, 23, 99]),
       version=st.sampled_from([b"\xfe\xfd", b"\xfe\xff", b"\x03\x03"]),
       length=st.integers(0, 300), delta=st.integers(-3, 3))
def test_one_record_datagrams_frame_as_the_general_loop_does(
    kind: int, version: bytes, length: int, delta: int
) -> None:
    datagram = record(kind, version, length, max(0, length + delta))
    assert split_incoming(datagram) == general(datagram)


def test_the_edges_of_the_one_record_shortcut() -> None:
    cases = [
        record(23, b"\xfe\xfd", _OPENSSL_MAX_LENGTH),  # the longest record OpenSSL reads
        record(23, b"\xfe\xfd", _OPENSSL_MAX_LENGTH + 1),  # one longer: header skipped
        record(23, b"\xfe\xfd", _OPENSSL_READ - 13),  # fills one OpenSSL read exactly
        record(23, b"\xfe\xfd", _OPENSSL_READ - 12),  # one byte past it: read as two
        record(23, b"\xfe\xfd", 40) + record(23, b"\xfe\xfd", 40),  # two records
        b"\x17\xfe\xfd",  # a partial header
        b"",
    ]
    for datagram in cases:
        assert split_incoming(datagram) == general(datagram), datagram[:16].hex()


def test_the_local_address_comes_from_each_datagrams_pktinfo() -> None:
    """Two local addresses on one wildcard socket: each datagram names its own (the lookup
    by PKTINFO data must not hand one datagram's address to the other)."""
    sock = open_udp_socket("0.0.0.0", 0, freebind=False)
    port = sock.getsockname()[1]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            for target in ("127.0.0.1", "127.0.0.2", "127.0.0.1", "127.0.0.2"):
                peer.sendto(b"x", (target, port))
                assert select.select([sock], [], [], 10.0)[0], "nothing arrived in 10 s"
                got = receive(sock)
                assert got is not None
                data, remote, local = got
                assert data == b"x"
                assert local == Address(target, port)
                assert remote == Address("127.0.0.1", peer.getsockname()[1])
                assert type(remote) is Address
    finally:
        forget(sock)
        sock.close()
