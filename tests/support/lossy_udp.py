"""A UDP relay that drops a share of datagrams, for tests and benches of loss recovery.

Between one client and one server address: each datagram (either way) is dropped with
probability ``loss``, drawn from a ``random.Random(seed)``, so a run is repeatable for a
given order of datagrams. ``loss`` may change at any time (e.g. 0 during the DTLS handshake).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any


class LossyRelay:
    def __init__(self, target: tuple[str, int], loss: float, seed: int) -> None:
        self.target = target
        self.loss = loss
        self.random = random.Random(seed)
        self.forwarded = 0
        self.dropped = 0
        self.port = 0
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None
        self._client: tuple[str, int] | None = None

    @classmethod
    async def start(cls, target: tuple[str, int], *, loss: float = 0.0,
                    seed: int = 19) -> LossyRelay:
        relay = cls(target, loss, seed)
        loop = asyncio.get_running_loop()
        front, _ = await loop.create_datagram_endpoint(
            lambda: _Side(relay.from_client), local_addr=("127.0.0.1", 0))
        back, _ = await loop.create_datagram_endpoint(
            lambda: _Side(relay.from_server), remote_addr=target)
        relay._front, relay._back = front, back  # type: ignore[assignment]
        relay.port = front.get_extra_info("sockname")[1]
        return relay

    def _keep(self) -> bool:
        if self.loss > 0 and self.random.random() < self.loss:
            self.dropped += 1
            return False
        self.forwarded += 1
        return True

    def from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        self._client = addr
        if self._keep() and self._back is not None:
            self._back.sendto(data)

    def from_server(self, data: bytes, _addr: tuple[str, int]) -> None:
        if self._client is not None and self._keep() and self._front is not None:
            self._front.sendto(data, self._client)

    def close(self) -> None:
        for side in (self._front, self._back):
            if side is not None:
                side.close()


class _Side(asyncio.DatagramProtocol):
    def __init__(self, receive: Any) -> None:
        self.receive = receive

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.receive(data, addr)
