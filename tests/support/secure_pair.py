"""Two ``SecureSession`` objects joined in memory: real handshakes, no sockets."""

from __future__ import annotations

from gateway.transport.secure_session import SecureSession


def handshake(client: SecureSession, server: SecureSession, rounds: int = 12) -> None:
    """Move datagrams both ways until neither side has anything left to send."""
    client.start()
    for _ in range(rounds):
        moved = False
        for datagram in client.take_output():
            server.feed(datagram)
            moved = True
        for datagram in server.take_output():
            client.feed(datagram)
            moved = True
        if not moved:
            return


def move(source: SecureSession, sink: SecureSession) -> list[bytes]:
    """Deliver what ``source`` has to send; the application data ``sink`` got from it."""
    return [record for datagram in source.take_output() for record in sink.feed(datagram)]
