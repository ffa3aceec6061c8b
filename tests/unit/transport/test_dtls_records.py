"""The server's own DTLS 1.2 record protection after OpenSSL's handshake (dtls_records).

Each suite is checked against OpenSSL itself: a real handshake between an OpenSSL client
and our server session, then records both ways after the server freed its SSL object. A
wrong key, nonce or additional data would make OpenSSL (or us) drop every record.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.transport import dtls_records, openssl_ffi
from gateway.transport.dtls_records import (
    ALERT,
    APPLICATION_DATA,
    DTLS_1_2,
    HANDSHAKE,
    RECORD_HEADER,
    REPLAY_WINDOW,
    SUITES,
    RecordProtection,
    prf,
    split_records,
)
from gateway.transport.dtls_sessions import flight_signature
from gateway.transport.openssl_ffi import OpenSSLError, ffi, ssl
from gateway.transport.secure_session import SecureSession, State
from gateway.transport.tls_context import (
    ClientContext,
    ClientCredentials,
    Kind,
    ServerContext,
    ServerCredentials,
)
from tests.support.secure_pair import handshake, move


@pytest.fixture(scope="module")
def server_context(pki: Path) -> ServerContext:
    data = json.loads((pki / "psk.json").read_text())
    creds = ServerCredentials(
        pki / "server.pem",
        pki / "server.key",
        pki / "ca.pem",
        psk={data["identity"].encode(): data["key"].encode()},
        allow_legacy_psk=True,
    )
    return ServerContext(Kind.DTLS, creds)


def client_for(pki: Path, suite: str) -> SecureSession:
    if "PSK" in suite:
        data = json.loads((pki / "psk.json").read_text())
        creds = ClientCredentials(
            psk_identity=data["identity"].encode(), psk_key=data["key"].encode()
        )
    else:
        creds = ClientCredentials(pki / "client.pem", pki / "client.key", pki / "ca.pem")
    context = ClientContext(Kind.DTLS, creds)
    assert ssl.SSL_CTX_set_cipher_list(context.ptr, f"{suite}:@SECLEVEL=0".encode()) == 1
    return SecureSession(context)


def connected(
    pki: Path, server_context: ServerContext, suite: str
) -> tuple[SecureSession, SecureSession]:
    client, server = client_for(pki, suite), SecureSession(server_context)
    handshake(client, server)
    assert (client.state, server.state) == (State.ESTABLISHED, State.ESTABLISHED)
    assert server.cipher == suite
    return client, server


def handed_over(server: SecureSession) -> bool:
    return server._records is not None and server._ssl is None


def test_prf_matches_openssl() -> None:
    # Expected values from `openssl kdf -keylen 48 -kdfopt digest:SHA256|SHA384
    # -kdfopt hexsecret:000102...0f -kdfopt seed:"key expansion"
    # -kdfopt hexseed:a0ba9f936cda311827a6f796ffd5198c TLS1-PRF` (OpenSSL 3.0.19).
    secret, seed = bytes(range(16)), bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
    assert prf("sha256", secret, b"key expansion", seed, 48).hex() == (
        "43faee14a3d207bed2828ed6ba7f420570c416395026ff83c99f72e40bb392b4"
        "d48902deb262610fba09a9b48902da77"
    )
    assert prf("sha384", secret, b"key expansion", seed, 48).hex() == (
        "a78c92e72ebc7d0259691fd3187f2dec34cff5f4c7ef79c3dd5d57d3511e6f0f"
        "d69cee46ab586b8644a4de230513ba3a"
    )


# The ECDHE-RSA suites share their AEAD and PRF with the ECDSA ones tested here; the dev
# PKI has ECDSA keys only.
OPENSSL_CHECKED = [name for name in SUITES if "-RSA-" not in name]


@pytest.mark.parametrize("suite", OPENSSL_CHECKED)
def test_records_interoperate_with_openssl_after_the_hand_over(
    pki: Path, server_context: ServerContext, suite: str
) -> None:
    client, server = connected(pki, server_context, suite)
    assert not handed_over(server)  # no application data yet: OpenSSL keeps the session
    client.send(b"first")
    assert move(client, server) == [b"first"]
    assert handed_over(server)
    assert (server.cipher, server.version) == (suite, "DTLSv1.2")
    for i in range(20):
        client.send(b"request %d" % i)
        assert move(client, server) == [b"request %d" % i]
        server.send(b"answer %d" % i)
        assert move(server, client) == [b"answer %d" % i]
    # Several records in one datagram, both ways.
    for i in range(3):
        server.send(b"notification %d" % i)
    datagrams = server.take_output()
    assert len(datagrams) == 1
    assert [r for d in datagrams for r in client.feed(d)] == [
        b"notification %d" % i for i in range(3)
    ]


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-PSK-CHACHA20-POLY1305"])
def test_replayed_tampered_and_foreign_records_are_dropped(
    pki: Path, server_context: ServerContext, suite: str
) -> None:
    client, server = connected(pki, server_context, suite)
    client.send(b"hello")
    (captured,) = client.take_output()
    assert server.feed(captured) == [b"hello"] and handed_over(server)
    assert server.feed(captured) == []  # replay
    client.send(b"next")
    (record,) = client.take_output()
    tampered = record[:-1] + bytes((record[-1] ^ 1,))
    other_epoch = record[:3] + b"\x00\x00" + record[5:]
    other_type = b"\x16" + record[1:]
    for junk in (
        tampered,
        other_epoch,
        other_type,
        record[:-3],
        b"",
        bytes(range(256)),
        b"\x17\xfe\xfd" + bytes(20),
        os.urandom(600),
    ):
        assert server.feed(junk) == []
    assert server.state is State.ESTABLISHED
    assert server.feed(record) == [b"next"]  # the tampered copy did not burn its number
    server.send(b"still talking")
    assert move(server, client) == [b"still talking"]


def test_close_notify_both_ways(pki: Path, server_context: ServerContext) -> None:
    suite = "ECDHE-ECDSA-AES256-GCM-SHA384"
    client, server = connected(pki, server_context, suite)
    client.send(b"x")
    move(client, server)
    server.close()
    assert move(server, client) == [] and client.state is State.CLOSED

    client, server = connected(pki, server_context, suite)
    client.send(b"x")
    move(client, server)
    assert handed_over(server)
    client.close()
    move(client, server)
    assert server.state is State.CLOSED
    with pytest.raises(Exception, match="cannot send"):
        server.send(b"too late")


def test_the_cbc_suite_stays_on_openssl(pki: Path, server_context: ServerContext) -> None:
    client, server = connected(pki, server_context, "ECDHE-PSK-AES128-CBC-SHA256")
    for i in range(3):
        client.send(b"r%d" % i)
        assert move(client, server) == [b"r%d" % i]
        server.send(b"a%d" % i)
        assert move(server, client) == [b"a%d" % i]
    assert not handed_over(server) and server._ssl is not None


def test_a_stale_handshake_record_in_the_datagram_does_not_hold_up_the_hand_over(
    pki: Path, server_context: ServerContext
) -> None:
    client, server = connected(pki, server_context, "ECDHE-ECDSA-AES128-GCM-SHA256")
    client.send(b"a")
    (datagram,) = client.take_output()
    # A stale epoch-0 handshake record in front: OpenSSL drops it; our window follows what
    # OpenSSL authenticated record by record, so the hand-over need not wait.
    stale = b"\x16\xfe\xfd" + bytes(8) + (4).to_bytes(2, "big") + bytes(4)
    assert server.feed(stale + datagram) == [b"a"]
    assert handed_over(server)
    assert server.feed(datagram) == []
    client.send(b"b")
    assert move(client, server) == [b"b"]


def resumed_up_to_the_clients_finished(pki: Path, server_context: ServerContext
                                       ) -> tuple[SecureSession, SecureSession]:
    """A resumed handshake up to the client's last flight, which is not delivered yet."""
    first, _ = connected(pki, server_context, HANDOVER_SUITE)
    ticket = first.session_ticket()
    assert ticket is not None
    client = client_for(pki, HANDOVER_SUITE)
    client._set_resumption(ticket)
    server = SecureSession(server_context)
    client.start()
    for _ in range(4):
        if client.state is State.ESTABLISHED:
            break
        for datagram in client.take_output():
            server.feed(datagram)
        for datagram in server.take_output():
            client.feed(datagram)
    assert client.state is State.ESTABLISHED and client.resumed
    return client, server


def test_a_request_sharing_the_datagram_of_the_clients_finished(
    pki: Path, server_context: ServerContext
) -> None:
    # Resumed: the client finishes last and may send its request in the same datagram.
    client, server = resumed_up_to_the_clients_finished(pki, server_context)
    (finished,) = client.take_output()
    client.send(b"early")
    (request,) = client.take_output()
    assert server.feed(finished + request) == [b"early"]
    assert server.state is State.ESTABLISHED and server.resumed
    server.send(b"answer")  # the hand-over needs OpenSSL's last sequence number
    assert move(server, client) == [b"answer"]
    client.send(b"next")
    (second,) = client.take_output()
    assert server.feed(second) == [b"next"] and handed_over(server)
    assert server.feed(finished + request) == [] and server.feed(second) == []


def pair_of_protections(suite_name: str) -> tuple[RecordProtection, RecordProtection]:
    suite = SUITES[suite_name]
    def side(is_server: bool) -> RecordProtection:
        return RecordProtection.from_handshake(
            suite,
            master_secret=bytearray(range(48)),  # one each: from_handshake wipes it
            client_random=bytes(32),
            server_random=bytes([7]) * 32,
            is_server=is_server,
            epoch=1,
            next_write_sequence=1,
        )

    return side(True), side(False)


def test_replay_window_accepts_reordering_once_and_drops_the_too_old() -> None:
    server, client = pair_of_protections("ECDHE-ECDSA-AES128-GCM-SHA256")
    records = [client.seal(APPLICATION_DATA, b"%d" % i) for i in range(REPLAY_WINDOW + 10)]
    assert server.open(records[5]).application_data == [b"5"]
    assert server.open(records[2]).application_data == [b"2"]  # late, inside the window
    assert server.open(records[2]).application_data == []  # but only once
    assert server.open(records[REPLAY_WINDOW + 9]).application_data == [b"%d" % (REPLAY_WINDOW + 9)]
    assert server.open(records[3]).application_data == []  # fell out of the window
    assert server.open(records[REPLAY_WINDOW + 8]).application_data == [b"%d" % (REPLAY_WINDOW + 8)]


def test_alerts_end_the_session_and_warnings_do_not() -> None:
    server, client = pair_of_protections("ECDHE-PSK-CHACHA20-POLY1305")
    assert server.open(client.seal(ALERT, b"\x01\x5a")).alert is None  # warning: user_canceled
    opened = server.open(client.seal(APPLICATION_DATA, b"a") + client.seal(ALERT, b"\x02\x28"))
    assert opened.application_data == [b"a"] and opened.alert == (2, 40)
    assert server.open(client.seal(ALERT, b"\x01\x00")).alert == (1, 0)


def test_records_are_split_at_their_lengths_and_a_truncated_tail_is_ignored() -> None:
    _, client = pair_of_protections("PSK-AES128-CCM8")
    two = client.seal(APPLICATION_DATA, b"one") + client.seal(APPLICATION_DATA, b"two")
    assert [(kind, epoch, seq) for kind, epoch, seq, _, _ in split_records(two)] == [
        (APPLICATION_DATA, 1, 1),
        (APPLICATION_DATA, 1, 2),
    ]
    assert len(split_records(two[:-1])) == 1
    assert split_records(b"\x17\xfe\xff" + bytes(10))[0][1] == -1  # not DTLS 1.2: no epoch


def test_a_renegotiation_attempt_gets_no_renegotiation_and_the_session_goes_on() -> None:
    server, client = pair_of_protections("ECDHE-ECDSA-AES128-GCM-SHA256")
    hello = bytes([1]) + bytes(11)  # a ClientHello's handshake header, body irrelevant
    opened = server.open(client.seal(HANDSHAKE, hello))
    assert opened.renegotiation and opened.alert is None and opened.application_data == []
    assert server.open(client.seal(APPLICATION_DATA, b"go on")).application_data == [b"go on"]


def test_the_server_session_answers_renegotiation_with_a_warning(
    pki: Path, server_context: ServerContext
) -> None:
    client, server = connected(pki, server_context, "ECDHE-ECDSA-AES128-GCM-SHA256")
    client.send(b"a")
    move(client, server)
    assert handed_over(server)
    assert server._records is not None
    own = server._records
    # Seal a handshake record with the client's keys, as a renegotiating client would.
    peer = RecordProtection(  # copies: each RecordProtection wipes its own keys
        own.suite,
        read_key=bytearray(own._write_key),
        read_iv=bytearray(own._write_iv),
        write_key=bytearray(own._read_key),
        write_iv=bytearray(own._read_iv),
        epoch=own.epoch,
        next_write_sequence=own._highest_read + 10,  # clear of the client's next numbers
    )
    assert server.feed(peer.seal(HANDSHAKE, bytes([1]) + bytes(11))) == []
    (datagram,) = server.take_output()
    (record,) = split_records(datagram)
    kind, _, _, header, fragment = record
    assert kind == ALERT and peer._decrypt(ALERT, header[3:11], fragment) == b"\x01\x64"
    assert server.state is State.ESTABLISHED  # what OpenSSL does with NO_RENEGOTIATION set
    client.send(b"b")
    assert move(client, server) == [b"b"]


def test_an_empty_application_record_delivers_nothing() -> None:
    server, client = pair_of_protections("ECDHE-ECDSA-AES256-GCM-SHA384")
    opened = server.open(client.seal(APPLICATION_DATA, b"") + client.seal(APPLICATION_DATA, b"x"))
    assert opened.application_data == [b"x"] and opened.dropped == 0


def test_a_freed_session_takes_its_keys_out_of_the_cipher_cache(
    pki: Path, server_context: ServerContext
) -> None:
    client, server = connected(pki, server_context, "ECDHE-ECDSA-AES128-GCM-SHA256")
    client.send(b"a")
    move(client, server)  # opened by OpenSSL, then handed over
    client.send(b"b")
    move(client, server)  # opened by us: the read key's cipher is cached
    server.send(b"c")
    move(server, client)
    records = server._records
    assert records is not None
    cache = records.suite.cipher._objects
    assert records._read_handle in cache and records._write_handle in cache
    server.free()
    assert records._read_handle not in cache and records._write_handle not in cache


# --- replay protection across the hand-over (issue 16, item 1) -------------------------------

#: The on-path attacker's junk record of issue 16: application data, epoch 1, sequence 0,
#: empty. OpenSSL drops it; the old hand-over refused every datagram carrying it.
JUNK_RECORD = bytes.fromhex("17fefd0001000000000000" "0000")
HANDOVER_SUITE = "ECDHE-ECDSA-AES128-GCM-SHA256"


#: A header of another DTLS version; the largest record length the loaded OpenSSL reads and
#: what it takes from a memory BIO at once (measured per release series, see Framing).
DTLS_1_0 = b"\xfe\xff"
OPENSSL_MAX_LENGTH, OPENSSL_READ = dtls_records._FRAMING


def header(kind: int, version: bytes, length: int, epoch: int = 1, seq: int = 9) -> bytes:
    return bytes((kind,)) + version + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big") \
        + length.to_bytes(2, "big")


def relabelled(record: bytes, version: bytes) -> bytes:
    return record[:1] + version + record[3:]


def sealed_by(client: SecureSession, count: int) -> list[bytes]:
    """``count`` genuine datagrams of one record each, "m0", "m1"... in sequence order."""
    datagrams = []
    for i in range(count):
        client.send(b"m%d" % i)
        (datagram,) = client.take_output()
        datagrams.append(datagram)
    return datagrams


def test_junk_and_a_held_back_datagram_cannot_open_a_replay_after_the_hand_over(
    pki: Path, server_context: ServerContext
) -> None:
    client, server = connected(pki, server_context, HANDOVER_SUITE)
    m = sealed_by(client, 6)
    # The attacker pads m1..m4 with junk and holds m0 back: OpenSSL delivers each of them.
    for i in range(1, 5):
        assert server.feed(m[i] + JUNK_RECORD) == [b"m%d" % i]
    assert server.feed(m[0]) == [b"m0"]  # released last
    assert handed_over(server)
    for i in range(5):  # every record OpenSSL delivered stays delivered once
        assert server.feed(m[i]) == [], f"m{i} replayed"
    assert server.feed(m[5]) == [b"m5"]


def test_a_record_reordered_right_after_the_hand_over_is_delivered(
    pki: Path, server_context: ServerContext
) -> None:
    client, server = connected(pki, server_context, HANDOVER_SUITE)
    m = sealed_by(client, 3)
    assert server.feed(m[2]) == [b"m2"]
    assert handed_over(server)
    assert server.feed(m[1]) == [b"m1"]  # OpenSSL would have accepted it: a lost NON otherwise
    assert server.feed(m[0]) == [b"m0"]
    assert server.feed(m[1]) == []


#: Genuine records the client seals per example: more than the replay window, so that the
#: scripts below can jump past it.
GENUINE = REPLAY_WINDOW + 16


def _datagram(op: str, i: int, j: int, m: list[bytes], bye: bytes) -> bytes:
    if op == "send":
        return m[i]
    if op == "pair":  # two genuine records in one datagram
        return m[i] + m[j]
    if op == "tamper":
        return m[i][:-1] + bytes((m[i][-1] ^ 1,))
    if op == "junk-after":
        return m[i] + JUNK_RECORD
    if op == "junk-before":
        return JUNK_RECORD + m[i]
    if op == "old-epoch":  # the record relabelled with epoch 0, then the genuine one
        return m[i][:3] + b"\x00\x00" + m[i][5:] + m[j]
    if op == "forged-seq":  # a genuine body under another sequence number: unauthentic
        return m[i][:5] + m[j][5:11] + m[i][11:]
    # Records of another version: OpenSSL drops the header alone and reads on in the body.
    if op == "version-wrap":  # the genuine record inside is read
        return header(APPLICATION_DATA, DTLS_1_0, len(m[i])) + m[i] + m[j]
    if op == "version-relabelled":  # header dropped, the body read as junk
        return relabelled(m[i], DTLS_1_0) + m[j]
    if op == "version-past-end":  # inside, a header running past the datagram: all dumped
        return header(APPLICATION_DATA, DTLS_1_0, 13) \
            + header(APPLICATION_DATA, DTLS_1_2, 1024) + m[i]
    if op == "too-long":  # a length OpenSSL does not read as a record: the header dropped
        length = OPENSSL_MAX_LENGTH + 1
        return header(APPLICATION_DATA, DTLS_1_2, length) + m[i] + bytes(length - len(m[i])) \
            + m[j]
    if op == "bye-of-another-version":  # the client's close_notify, any minor version
        return relabelled(bye, DTLS_1_0) + m[i]
    # Epoch-1 records too short for the suite (GCM: explicit nonce + tag, 24 bytes): never
    # given to OpenSSL, which would take one for an internal error (dtls_records).
    if op == "short-before":
        return _short(j % 24, i) + m[i]
    if op == "short-after":
        return m[i] + _short(j % 24, i)
    if op == "short-alone":
        return _short(1 + j % 23, i)
    raise AssertionError(op)


def _short(length: int, seq: int) -> bytes:
    return header(APPLICATION_DATA, DTLS_1_2, length, seq=seq) + bytes(length)


_index = st.one_of(st.integers(0, 6), st.integers(0, GENUINE - 1))
_scripts = st.lists(
    st.tuples(
        st.sampled_from(
            ["send", "send", "pair", "tamper", "junk-after", "junk-before", "old-epoch",
             "forged-seq", "version-wrap", "version-relabelled", "version-past-end",
             "too-long", "bye-of-another-version", "short-before", "short-after",
             "short-alone"]
        ),
        _index,
        _index,
    ),
    min_size=1,
    max_size=8,
)


def _deliver(
    pki: Path, server_context: ServerContext, script: list[tuple[str, int, int]],
    hand_over_from: int | None,
) -> tuple[list[list[bytes]], bool]:
    """Run ``script`` against a fresh server; it may hand over from step ``hand_over_from``
    on (None: never, OpenSSL does all). Returns what it delivered, and whether it handed
    over (a close afterwards ends our record protection too)."""
    client, server = connected(pki, server_context, HANDOVER_SUITE)
    m = sealed_by(client, GENUINE)
    client.close()
    (bye,) = client.take_output()
    server._may_hand_over = lambda: False  # type: ignore[method-assign]
    delivered = []
    was_handed_over = False
    for step, (op, i, j) in enumerate(script):
        if step == hand_over_from:
            del server._may_hand_over  # the method again
        delivered.append(server.feed(_datagram(op, i, j, m, bye)))
        was_handed_over = was_handed_over or handed_over(server)
    return delivered, was_handed_over


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=_scripts)
def test_the_hand_over_delivers_exactly_what_openssl_alone_delivers(
    pki: Path, server_context: ServerContext, script: list[tuple[str, int, int]]
) -> None:
    reference, _ = _deliver(pki, server_context, script, None)
    for point in range(len(script)):
        delivered, was_handed_over = _deliver(pki, server_context, script, point)
        assert delivered == reference, f"hand-over allowed from step {point}"
        if any(reference[point:]):  # OpenSSL delivered something it could hand over at
            assert was_handed_over, f"no hand-over from step {point}"


# --- sequence number jumps (issue 16, item 2) ----------------------------------------------

_LAST_SEQUENCE = 2**48 - 1


@pytest.mark.parametrize(
    "jump", [REPLAY_WINDOW - 1, REPLAY_WINDOW, 2**32, _LAST_SEQUENCE - 1],
    ids=["window-1", "window", "2^32", "to-2^48-1"],
)
def test_a_sequence_jump_moves_the_window_at_once(jump: int) -> None:
    server, client = pair_of_protections("ECDHE-ECDSA-AES128-GCM-SHA256")
    first = client.seal(APPLICATION_DATA, b"first")  # sequence 1
    assert server.open(first).application_data == [b"first"]
    client.start_writing_at(1 + jump)
    far = client.seal(APPLICATION_DATA, b"far")
    started = time.perf_counter()
    assert server.open(far).application_data == [b"far"]
    assert time.perf_counter() - started < 0.5  # was 2.6 s and 1.17 GB for 2^32
    # RFC 6347 §4.1.2.6: a jump of the window size or more leaves nothing of the old window.
    assert 0 < server._window.bit_length() <= REPLAY_WINDOW
    assert server.open(far).application_data == []
    assert server.open(first).application_data == []  # seen (window-1) or too old
    client.start_writing_at(jump)  # the record just below the far one, never seen
    assert server.open(client.seal(APPLICATION_DATA, b"late")).application_data == [b"late"]


def test_the_last_sequence_number_is_accepted_and_nothing_after_it() -> None:
    server, client = pair_of_protections("PSK-AES128-CCM8")
    client.start_writing_at(_LAST_SEQUENCE)
    last = client.seal(APPLICATION_DATA, b"last")
    assert server.open(last).application_data == [b"last"]
    assert server.open(last).application_data == []
    with pytest.raises(OverflowError):
        client.seal(APPLICATION_DATA, b"none left")  # RFC 6347 §4.1: never wraps


def test_our_sequence_exhaustion_ends_the_session_cleanly(
    pki: Path, server_context: ServerContext
) -> None:
    client, server = connected(pki, server_context, HANDOVER_SUITE)
    client.send(b"a")
    assert move(client, server) == [b"a"] and handed_over(server)
    assert server._records is not None
    server._records.start_writing_at(_LAST_SEQUENCE)
    server.send(b"last")
    assert move(server, client) == [b"last"]
    with pytest.raises(OpenSSLError, match="exhausted"):
        server.send(b"one too many")
    assert server.state is State.FAILED and "exhausted" in (server.failure or "")
    server.close()  # no sequence number is left for a close_notify: nothing is sent
    assert server.take_output() == []
    server.free()


def test_a_renegotiation_attempt_after_exhaustion_ends_the_session(
    pki: Path, server_context: ServerContext
) -> None:
    client, server = connected(pki, server_context, HANDOVER_SUITE)
    client.send(b"a")
    move(client, server)
    own = server._records
    assert own is not None
    peer = RecordProtection(
        own.suite, read_key=bytearray(own._write_key), read_iv=bytearray(own._write_iv),
        write_key=bytearray(own._read_key), write_iv=bytearray(own._read_iv), epoch=own.epoch,
        next_write_sequence=own._highest_read + 10,
    )
    own.start_writing_at(_LAST_SEQUENCE + 1)
    # Our answer would be a warning alert, but there is no sequence number left for it.
    assert server.feed(peer.seal(HANDSHAKE, bytes([1]) + bytes(11))) == []
    assert server.state is State.FAILED and server.take_output() == []


# --- key material (issue 16, item 6) ----------------------------------------------------------


def test_secrets_are_kept_in_buffers_that_are_wiped(
    pki: Path, server_context: ServerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    masters: list[object] = []
    blocks: list[object] = []
    derive = RecordProtection.from_handshake.__func__  # type: ignore[attr-defined]
    real_prf = dtls_records.prf

    def spy(cls: type, suite: object, **kw: object) -> RecordProtection:
        masters.append(kw["master_secret"])
        return derive(cls, suite, **kw)  # type: ignore[no-any-return]

    def prf_spy(*args: object) -> object:
        blocks.append(real_prf(*args))  # type: ignore[arg-type]
        return blocks[-1]

    monkeypatch.setattr(RecordProtection, "from_handshake", classmethod(spy))
    monkeypatch.setattr(dtls_records, "prf", prf_spy)
    client, server = connected(pki, server_context, HANDOVER_SUITE)
    client.send(b"a")
    assert move(client, server) == [b"a"] and handed_over(server)
    # The master secret and the key block: wiped once the keys are derived.
    assert masters and blocks
    for secret in masters + blocks:
        assert isinstance(secret, bytearray) and not any(secret)
    records = server._records
    assert records is not None
    keys = [records._read_key, records._read_iv, records._write_key, records._write_iv]
    assert all(isinstance(k, bytearray) and any(k) for k in keys)
    server.free()  # the session's keys: wiped when it ends
    assert not any(any(k) for k in keys)


def test_a_record_of_another_version_frames_the_datagram_as_openssl_does(
    pki: Path, server_context: ServerContext
) -> None:
    # OpenSSL 3.0 drops only the 13-byte header of a record of another version and reads
    # on inside its body (see BoringSSL's TODO in dtls1_get_record); so do we (split_incoming).
    # Another version, length 13: inside it, a header whose length runs past the datagram.
    inner = b"\x17\xfe\xfd\x00\x01" + (1).to_bytes(6, "big") + (1024).to_bytes(2, "big")
    odd = b"\x17\xfe\xff\x00\x01" + (9).to_bytes(6, "big") + len(inner).to_bytes(2, "big")

    def deliveries(hand_over: bool) -> list[bytes]:
        client, server = connected(pki, server_context, HANDOVER_SUITE)
        if not hand_over:
            server._may_hand_over = lambda: False  # type: ignore[method-assign]
        m = sealed_by(client, 2)
        assert server.feed(m[0]) == [b"m0"] and handed_over(server) is hand_over
        return server.feed(odd + inner + m[1])

    assert deliveries(hand_over=False) == []  # OpenSSL: m1 dumped as a partial record
    assert deliveries(hand_over=True) == []  # and so do we


def _framing(case: str, m: list[bytes], bye: bytes) -> bytes:
    if case == "version-wrap":  # OpenSSL reads the genuine records inside it
        return header(APPLICATION_DATA, DTLS_1_0, len(m[1])) + m[1] + m[2]
    if case == "tls-version-wrap":
        return header(APPLICATION_DATA, b"\x03\x03", len(m[1])) + m[1] + m[2]
    if case == "version-relabelled":  # dropped: header alone, then its body as junk
        return relabelled(m[1], DTLS_1_0) + m[2]
    if case == "longest-record":  # read as a record (junk), running past the datagram
        return header(APPLICATION_DATA, DTLS_1_2, OPENSSL_MAX_LENGTH) + m[1] + m[2]
    if case == "too-long-within-the-datagram":  # the header alone is dropped
        length = OPENSSL_MAX_LENGTH + 1
        return header(APPLICATION_DATA, DTLS_1_2, length) + m[1] + bytes(length - len(m[1])) \
            + m[2]
    if case == "datagram-longer-than-openssl-reads":  # read as two datagrams
        pad = OPENSSL_READ - 2 * RECORD_HEADER
        return header(APPLICATION_DATA, DTLS_1_2, pad) + bytes(pad) + m[1][:13] + m[1] + m[2]
    if case == "short-record":  # too short for the suite: kept from OpenSSL
        return _short(23, 7) + m[1] + _short(1, 8) + m[2]
    if case == "short-record-in-a-long-datagram":  # the rest framed as without it
        pad = OPENSSL_READ - 2 * RECORD_HEADER - 10
        return header(APPLICATION_DATA, DTLS_1_2, pad) + bytes(pad) + _short(10, 7) \
            + m[1][:13] + m[1] + m[2]
    if case == "close-notify-of-another-minor-version":  # alerts need only the major version
        return relabelled(bye, DTLS_1_0) + m[1]
    if case == "close-notify-of-another-major-version":
        return relabelled(bye, b"\x03\x03") + m[1]
    raise AssertionError(case)


FRAMING_CASES = [
    "version-wrap", "tls-version-wrap", "version-relabelled", "longest-record",
    "too-long-within-the-datagram", "datagram-longer-than-openssl-reads",
    "close-notify-of-another-minor-version", "close-notify-of-another-major-version",
    "short-record", "short-record-in-a-long-datagram",
]


@pytest.mark.parametrize("case", FRAMING_CASES)
def test_datagrams_are_framed_as_openssl_frames_them(
    pki: Path, server_context: ServerContext, case: str
) -> None:
    def deliveries(hand_over: bool) -> tuple[list[list[bytes]], State]:
        client, server = connected(pki, server_context, HANDOVER_SUITE)
        if not hand_over:
            server._may_hand_over = lambda: False  # type: ignore[method-assign]
        m = sealed_by(client, 4)
        client.close()
        (bye,) = client.take_output()
        assert server.feed(m[0]) == [b"m0"] and handed_over(server) is hand_over
        return [server.feed(_framing(case, m, bye)), server.feed(m[3])], server.state

    assert deliveries(hand_over=True) == deliveries(hand_over=False)


# --- records OpenSSL cannot open, on sessions it holds ----------------------------------

#: The ECDHE-PSK CBC suite our PSK contexts offer; its sessions stay on OpenSSL.
CBC_SUITE = "ECDHE-PSK-AES128-CBC-SHA256"
#: The shortest protected fragment of each suite: explicit nonce + tag (GCM, CCM), the tag
#: alone (ChaCha20-Poly1305, RFC 7905), IV + one block + MAC (CBC); measured against
#: OpenSSL 3.0.19: every non-empty shorter epoch-1 record put the session in an internal
#: error (or, CBC with encrypt-then-MAC, a fatal decode_error), whatever its content type.
SHORTEST = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": 24,
    "ECDHE-ECDSA-AES256-GCM-SHA384": 24,
    "ECDHE-ECDSA-CHACHA20-POLY1305": 16,
    "ECDHE-PSK-CHACHA20-POLY1305": 16,
    "PSK-AES128-GCM-SHA256": 24,
    "PSK-AES128-CCM": 24,
    "PSK-AES128-CCM8": 16,
    CBC_SUITE: 64,
}


def on_openssl(pki: Path, server_context: ServerContext, suite: str
               ) -> tuple[SecureSession, SecureSession]:
    """An established pair whose server never hands over: OpenSSL opens every record."""
    client, server = connected(pki, server_context, suite)
    server._may_hand_over = lambda: False  # type: ignore[method-assign]
    client.send(b"first")
    assert move(client, server) == [b"first"]
    server.send(b"back")
    assert move(server, client) == [b"back"]
    assert not handed_over(server)
    return client, server


def short_record(kind: int, length: int, seq: int = 1000) -> bytes:
    return header(kind, DTLS_1_2, length, epoch=1, seq=seq) + os.urandom(length)


@pytest.mark.parametrize("role", ["server", "client"])
@pytest.mark.parametrize("suite", [*OPENSSL_CHECKED, CBC_SUITE])
def test_a_record_too_short_to_authenticate_leaves_an_openssl_session_working(
    pki: Path, server_context: ServerContext, suite: str, role: str
) -> None:
    # RFC 6347 §4.1.2.7: an invalid record is discarded and the association goes on.
    assert dtls_records.shortest_fragment(suite) == SHORTEST[suite]
    for length in (1, SHORTEST[suite] // 2, SHORTEST[suite] - 1):
        for kind in (APPLICATION_DATA, ALERT, HANDSHAKE, 20):
            client, server = on_openssl(pki, server_context, suite)
            victim, peer = (server, client) if role == "server" else (client, server)
            forged = short_record(kind, length)
            assert victim.feed(forged) == []
            assert victim.take_output() == []  # no alert: nothing happened
            peer.send(b"genuine")
            assert move(peer, victim) == [b"genuine"], f"{length} bytes, type {kind}"
            victim.send(b"answer")
            assert move(victim, peer) == [b"answer"]
            assert (victim.state, peer.state) == (State.ESTABLISHED, State.ESTABLISHED)


@pytest.mark.parametrize("suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", "PSK-AES128-CCM8"])
def test_a_short_record_in_the_same_datagram_as_genuine_ones(
    pki: Path, server_context: ServerContext, suite: str
) -> None:
    client, server = on_openssl(pki, server_context, suite)
    m = sealed_by(client, 2)
    forged = short_record(APPLICATION_DATA, SHORTEST[suite] - 1)
    assert server.feed(m[0] + forged + m[1]) == [b"m0", b"m1"]
    client.send(b"next")
    assert move(client, server) == [b"next"]


def _handshake_with_a_short_record(
    client: SecureSession, server: SecureSession, victim: SecureSession, at_round: int
) -> int:
    """``handshake``, with epoch-1 records given to ``victim`` before each of its datagrams
    of round ``at_round``: as short as its suite allows once this handshake negotiated it,
    15 bytes (shorter than any suite allows) before. Returns how many were given."""
    given = 0
    client.start()
    for i in range(12):
        moved = False
        for sink, source in ((server, client), (client, server)):
            for datagram in source.take_output():
                if sink is victim and i == at_round:
                    known = ssl.SSL_get_pending_cipher(victim._ssl) != ffi.NULL
                    victim.feed(short_record(HANDSHAKE, 23 if known else 15, seq=1))
                    given += known
                sink.feed(datagram)
                moved = True
        if not moved:
            break
    return given


def test_a_short_record_during_the_handshake_does_not_break_it(
    pki: Path, server_context: ServerContext
) -> None:
    # Before the read epoch changes OpenSSL keeps epoch-1 records and opens them after the
    # peer's ChangeCipherSpec: during the handshake each side discards what cannot
    # authenticate under the suite it negotiated (or, before that, under any suite).
    for victim_role in ("server", "client"):
        given = 0
        for at_round in range(3):
            client = client_for(pki, "ECDHE-ECDSA-AES128-GCM-SHA256")
            server = SecureSession(server_context)
            server._may_hand_over = lambda: False  # type: ignore[method-assign]
            victim = server if victim_role == "server" else client
            given += _handshake_with_a_short_record(client, server, victim, at_round)
            where = f"{victim_role}, round {at_round}"
            assert (client.state, server.state) == (State.ESTABLISHED,) * 2, where
            client.send(b"request")
            assert move(client, server) == [b"request"], where
            server.send(b"answer")
            assert move(server, client) == [b"answer"], where
        assert given >= 2, victim_role  # records of 23 bytes, the suite known


def test_an_error_openssl_reports_ends_the_session_instead_of_hiding_it(
    pki: Path, server_context: ServerContext
) -> None:
    # With encrypt-then-MAC (RFC 7366, negotiated between OpenSSL peers for CBC suites)
    # OpenSSL 3.0 answers an epoch-1 record whose MAC fails with a fatal bad_record_mac,
    # whatever its length: the session cannot go on, so it must not look established.
    client, server = on_openssl(pki, server_context, CBC_SUITE)
    forged = short_record(APPLICATION_DATA, SHORTEST[CBC_SUITE])
    assert server.feed(forged) == []
    assert server.state is State.FAILED and "bad record mac" in (server.failure or "")
    (alert,) = server.take_output()  # OpenSSL's fatal alert tells the client
    assert client.feed(alert) == []
    assert client.state is State.FAILED and "alert" in (client.failure or "")
    with pytest.raises(OpenSSLError):
        server.send(b"too late")


def test_an_openssl_series_not_measured_keeps_every_session(
    pki: Path, server_context: ServerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our framing copies the loaded OpenSSL's, measured per release series; on another
    # series OpenSSL keeps the session for its whole life, and it still delivers.
    monkeypatch.setattr(dtls_records, "FRAMING", None)
    client, server = connected(pki, server_context, HANDOVER_SUITE)
    m = sealed_by(client, 3)
    assert [server.feed(d) for d in m] == [[b"m0"], [b"m1"], [b"m2"]]
    assert not handed_over(server)
    server.send(b"back")
    assert [client.feed(d) for d in server.take_output()] == [[b"back"]]


def test_the_framing_is_the_loaded_openssls() -> None:
    number = openssl_ffi.crypto.OpenSSL_version_num()
    series = (number >> 28, (number >> 20) & 0xFF)
    assert dtls_records.FRAMING == dtls_records.FRAMING_BY_SERIES.get(series)


# --- a resumed client's Finished sent again (issue 21's failover storm) --------------------


def _resumed_and_answered(pki: Path, server_context: ServerContext, hand_over: bool
                          ) -> tuple[SecureSession, SecureSession, list[bytes]]:
    """A resumed session with requests answered, and the server's retransmission of its
    flight (ServerHello .. Finished), made before the client's Finished reached it."""
    client, server = resumed_up_to_the_clients_finished(pki, server_context)
    if not hand_over:
        server._may_hand_over = lambda: False  # type: ignore[method-assign]
    finished = client.take_output()  # held back: the server's timer fires first
    timeout = server.timeout()
    assert timeout is not None and timeout <= 2.0
    time.sleep(timeout + 0.05)
    server.handle_timeout()
    retransmitted = server.take_output()
    assert retransmitted
    for datagram in finished:
        assert server.feed(datagram) == []
    client.send(b"request")
    assert move(client, server) == [b"request"]
    server.send(b"answer")
    assert move(server, client) == [b"answer"]
    client.send(b"next")
    assert move(client, server) == [b"next"]
    assert handed_over(server) is hand_over
    return client, server, retransmitted


@pytest.mark.parametrize("hand_over", [False, True], ids=["openssl", "hand-over"])
def test_a_resumed_clients_finished_sent_again_is_ignored_as_openssl_ignores_it(
    pki: Path, server_context: ServerContext, hand_over: bool
) -> None:
    # The server's flight reached the client twice (our retransmission timer fired while the
    # client's Finished waited in our queue): an OpenSSL client that finished a resumed
    # handshake sends its last flight again (RFC 6347 §4.2.4). After the hand-over our
    # record layer took that Finished for a renegotiation and answered no_renegotiation,
    # which OpenSSL's client treats as fatal: 3,410 of 4,000 clients in a storm.
    client, server, server_flight = _resumed_and_answered(pki, server_context, hand_over)
    for datagram in server_flight:
        assert client.feed(datagram) == []
    again = client.take_output()
    assert again, "the client did not send its last flight again"
    assert [record for datagram in again for record in server.feed(datagram)] == []
    for datagram in server.take_output():  # OpenSSL's side may send its own flight again
        assert client.feed(datagram) == []
    assert (client.state, server.state) == (State.ESTABLISHED, State.ESTABLISHED)
    client.send(b"after")
    assert move(client, server) == [b"after"]
    server.send(b"still here")
    assert move(server, client) == [b"still here"]


# --- what a handshake flight sent again keeps (RFC 6347 §4.2.4): the server drops a resend
# whose first copy still waits for its workers (dtls_sessions.flight_signature) ------------

def sent_again(session: SecureSession) -> list[bytes]:
    """The session's last flight as OpenSSL sends it again when its timer runs out."""
    timeout = session.timeout()
    assert timeout is not None and timeout <= 2.0
    time.sleep(timeout + 0.05)
    session.handle_timeout()
    return session.take_output()


def test_openssl_flights_sent_again_keep_their_signature(
    pki: Path, server_context: ServerContext
) -> None:
    client, server = client_for(pki, HANDOVER_SUITE), SecureSession(server_context)
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
    signatures = [flight_signature(d) for d in last]
    assert None not in signatures
    assert [flight_signature(d) for d in last_again] == signatures
    assert set(signatures).isdisjoint(flight_signature(d) for d in hello)
    for datagram in last:
        server.feed(datagram)
    assert server.state is State.ESTABLISHED


def test_application_data_and_torn_records_have_no_signature(
    pki: Path, server_context: ServerContext
) -> None:
    client, _ = connected(pki, server_context, HANDOVER_SUITE)
    client.send(b"ping")
    (request,) = client.take_output()
    assert flight_signature(request) is None  # equal lengths are not repeats
    record = bytes((22, 0xFE, 0xFD, 0, 0)) + bytes(6) + (4).to_bytes(2, "big") + b"abcd"
    assert flight_signature(record) is not None
    assert flight_signature(record[:-1]) is None  # the length says more than is there
    assert flight_signature(record[:12]) is None  # a torn header
    assert flight_signature(record + request) is None  # a handshake, then data
    assert flight_signature(b"") is None
    other_sequence = record[:5] + (7).to_bytes(6, "big") + record[11:]
    assert flight_signature(other_sequence) == flight_signature(record)
    assert flight_signature(record[:-1] + b"e") != flight_signature(record)
