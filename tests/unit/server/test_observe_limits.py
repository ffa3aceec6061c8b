"""Per-session limits of the server role's Observe part (issue 17 item 3): a cap on the
observations of one session (RFC 7641 §4.1: declined registrations are answered without
Observe), and notifications sent in bounded batches, one batch per loop turn.

The role runs in memory: a session with a real CoAP message layer, datagrams collected from a
fake connection, the clock passed by hand. Work is counted in notifications, not timed.
"""

from __future__ import annotations

from collections.abc import Iterator

import cbor2
import pytest

from gateway.coap.codes import MessageType
from gateway.coap.layer import MessageLayer
from gateway.coap.message import CoapMessage
from gateway.coap.udp_codec import decode_udp, encode_udp
from gateway.dots.message import Requester
from gateway.dots.mitigation import MitigationStore
from gateway.dots.server import DotsServerCore
from gateway.server.role import ServerRole
from gateway.server.session import SignalSession
from gateway.transport.tls_context import Kind

CUID = "dz6pHjaADkaFTbjr0JGBpw"
BASE = (".well-known", "dots", "mitigate", f"cuid={CUID}")


class FakeConn:
    remote = "192.0.2.1:5000"
    local = "192.0.2.2:4646"
    kind = Kind.DTLS

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, _reason: str) -> None:
        pass


class Client:
    """One signal session of the role, driven datagram by datagram."""

    def __init__(self, role: ServerRole) -> None:
        self.role = role
        self.conn = FakeConn()
        dots = role.core.open_session(Requester("cred-a"), role.clock())
        self.session = SignalSession(role, self.conn, dots, MessageLayer(), "client-a")
        role.sessions[dots.id] = self.session
        self.mid = 0

    def request(self, code: int, path: tuple[str, ...], payload: bytes = b"", *,
                observe: int | None = None, token: bytes = b"") -> list[CoapMessage]:
        """Send one NON request; every message the role sent in that turn."""
        self.mid += 1
        token = token or self.mid.to_bytes(4, "big")
        options = CoapMessage.request(code, path, observe=observe,
                                      content_format=271 if payload else None).options
        message = CoapMessage(MessageType.NON, code, self.mid, token, options, payload)
        now = self.role.clock()
        self.session.layer.receive(encode_udp(message), now)
        self.role.pump(self.session, now)
        return self.take()

    def take(self) -> list[CoapMessage]:
        sent = [decode_udp(d) for d in self.conn.sent]
        self.conn.sent.clear()
        return sent

    def turn(self) -> list[CoapMessage]:
        """One run of the session's timer: what the next loop turn would send."""
        self.role._notify_due(self.session, self.role.clock())
        self.session.flush()
        return self.take()


def mitigation(prefix: str) -> bytes:
    return cbor2.dumps({1: {2: [{6: [prefix], 14: 3600}]}})


@pytest.fixture
async def role() -> Iterator[ServerRole]:
    role = ServerRole(DotsServerCore(MitigationStore()), clock=lambda: 100.0)
    yield role
    for session in list(role.sessions.values()):
        session.connection_lost("test over")


async def test_observations_beyond_the_session_cap_are_declined(role: ServerRole) -> None:
    client = Client(role)
    (created,) = client.request(3, (*BASE, "mid=1"), mitigation("10.0.0.0/24"))
    assert created.code == 0x41
    for i in range(1024):  # the default cap
        (answer,) = client.request(1, (*BASE, "mid=1"), observe=0)
        assert answer.code == 0x45 and answer.observe is not None, i
    (declined,) = client.request(1, (*BASE, "mid=1"), observe=0)
    # RFC 7641 §4.1: the answer is a plain 2.05, without the Observe option.
    assert declined.code == 0x45 and declined.observe is None
    assert len(client.session.observations) == 1024
    assert role.observations_declined == 1
    # Re-registering a token the session already observes with is not a new observation.
    (again,) = client.request(1, (*BASE, "mid=1"), observe=0, token=(5).to_bytes(4, "big"))
    assert again.observe is not None and role.observations_declined == 1


async def test_one_change_observed_many_times_is_notified_in_bounded_batches(
        role: ServerRole) -> None:
    client = Client(role)
    client.request(3, (*BASE, "mid=1"), mitigation("10.0.0.0/24"))
    tokens = set()
    for _ in range(600):
        (answer,) = client.request(1, (*BASE, "mid=1"), observe=0)
        tokens.add(answer.token)
    sent = client.request(4, (*BASE, "mid=1"))  # one change, 600 observers
    notes = [m for m in sent if m.token in tokens]
    # The DELETE's own turn sends at most one batch (observe.NOTIFICATION_BUDGET = 64), not
    # all 600 notifications.
    assert 0 < len(notes) <= 64
    assert any(m.code == 0x42 for m in sent)  # the DELETE was answered in that turn
    for _ in range(20):  # the rest, batch by batch, on the following turns
        batch = [m for m in client.turn() if m.token in tokens]
        assert len(batch) <= 64
        notes += batch
        if not client.session.pending_notifications:
            break
    assert sorted(m.token for m in notes) == sorted(tokens)  # each observer once


async def test_notification_batches_count_the_mitigations_they_list(role: ServerRole) -> None:
    client = Client(role)
    for i in range(200):
        client.request(3, (*BASE, f"mid={i + 1}"), mitigation(f"10.0.{i}.0/24"))
    tokens = {client.request(1, BASE, observe=0)[0].token for _ in range(5)}
    sent = client.request(4, (*BASE, "mid=1"))
    # Each notification lists all 200 mitigations: one per turn.
    assert len([m for m in sent if m.token in tokens]) == 1
    assert len([m for m in client.turn() if m.token in tokens]) == 1
