"""What a handshake flight sent again has in common with its first copy (RFC 6347 §4.2.4),
taken from real OpenSSL retransmissions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from gateway.transport.dtls_sessions import flight_signature
from gateway.transport.secure_session import SecureSession, State
from gateway.transport.tls_context import (
    ClientContext,
    ClientCredentials,
    Kind,
    ServerContext,
    ServerCredentials,
)
from tests.support.secure_pair import handshake


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


def pair(pki: Path) -> tuple[SecureSession, SecureSession]:
    psk = json.loads((pki / "psk.json").read_text())
    server = SecureSession(ServerContext(Kind.DTLS, ServerCredentials(
        pki / "server.pem", pki / "server.key", pki / "ca.pem",
        psk={psk["identity"].encode(): psk["key"].encode()})))
    client = SecureSession(ClientContext(Kind.DTLS, ClientCredentials(
        pki / "client.pem", pki / "client.key", pki / "ca.pem")), server_name="localhost")
    return client, server


def sent_again(session: SecureSession) -> list[bytes]:
    """The session's last flight as OpenSSL sends it again when its timer runs out."""
    timeout = session.timeout()
    assert timeout is not None and timeout <= 2.0
    time.sleep(timeout + 0.05)
    session.handle_timeout()
    return session.take_output()


def test_openssl_flights_sent_again_keep_their_signature(pki: Path) -> None:
    client, server = pair(pki)
    try:
        client.start()
        hello = client.take_output()
        hello_again = sent_again(client)
        assert hello_again != hello  # new record sequence numbers
        assert [flight_signature(d) for d in hello_again] == [flight_signature(d) for d in hello]
        for datagram in hello:
            server.feed(datagram)
        for datagram in server.take_output():
            client.feed(datagram)
        # Certificate .. CertificateVerify, ChangeCipherSpec, and the encrypted Finished.
        last = client.take_output()
        last_again = sent_again(client)
        assert last_again != last
        assert b"".join(last)[0] == 22
        signatures = [flight_signature(d) for d in last]
        assert None not in signatures
        assert [flight_signature(d) for d in last_again] == signatures
        assert set(signatures).isdisjoint(flight_signature(d) for d in hello)
        for datagram in last:
            server.feed(datagram)
        assert server.state is State.ESTABLISHED
    finally:
        client.free()
        server.free()


def test_application_data_and_torn_records_have_no_signature(pki: Path) -> None:
    client, server = pair(pki)
    try:
        handshake(client, server)
        client.send(b"ping")
        (request,) = client.take_output()
        assert flight_signature(request) is None  # equal lengths are not repeats
        record = bytes((22, 0xFE, 0xFD, 0, 0)) + bytes(6) + (4).to_bytes(2, "big") + b"abcd"
        assert flight_signature(record) is not None
        assert flight_signature(record[:-1]) is None  # the length says more than is there
        assert flight_signature(record[:12]) is None  # a torn header
        assert flight_signature(record + request) is None  # a handshake, then data
        assert flight_signature(b"") is None
        other_seq = record[:5] + (7).to_bytes(6, "big") + record[11:]
        assert flight_signature(other_seq) == flight_signature(record)
        other_body = record[:-1] + b"e"
        assert flight_signature(other_body) != flight_signature(record)
    finally:
        client.free()
        server.free()
