"""Reliable transmission of our Confirmable messages over UDP (RFC 7252 §4.2, §4.8).

Owns the transmission parameters and the Confirmable messages we sent that await an ACK or
a Reset: each keeps its encoded bytes and its retransmission schedule, a first timeout
drawn between ACK_TIMEOUT and ACK_TIMEOUT * ACK_RANDOM_FACTOR that doubles with each
retransmission, up to MAX_RETRANSMIT. What an ACK, a Reset or giving up means for the
exchange is decided by :class:`~gateway.coap.layer.MessageLayer`, which composes this.
Time arrives as ``now``; randomness is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.coap.errors import CoapUsageError


@dataclass(frozen=True, slots=True)
class TransmissionParameters:
    """CoAP transmission parameters (RFC 7252 §4.8) with the DOTS defaults (RFC 9132 §4.5.2:
    max-retransmit 3, ack-timeout 2 s, ack-random-factor 1.5); DOTS negotiates the first
    three per session. Durations are seconds; the derived values follow RFC 7252 §4.8.2."""

    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 3
    max_latency: float = 100.0

    def __post_init__(self) -> None:
        if self.ack_timeout <= 0 or self.ack_random_factor < 1 or self.max_retransmit < 0:
            raise CoapUsageError(f"invalid transmission parameters: {self}")

    @property
    def max_transmit_span(self) -> float:
        return self.ack_timeout * ((1 << self.max_retransmit) - 1) * self.ack_random_factor

    @property
    def max_transmit_wait(self) -> float:
        return self.ack_timeout * ((1 << (self.max_retransmit + 1)) - 1) * self.ack_random_factor

    @property
    def exchange_lifetime(self) -> float:
        # PROCESSING_DELAY is ACK_TIMEOUT (RFC 7252 §4.8.2)
        return self.max_transmit_span + 2 * self.max_latency + self.ack_timeout

    @property
    def non_lifetime(self) -> float:
        return self.max_transmit_span + self.max_latency


class PendingCon:
    """A Confirmable message of ours awaiting ACK or RST (RFC 7252 §4.2)."""

    __slots__ = ("data", "is_request", "next_at", "retransmissions", "max_retransmit",
                 "timeout", "token")

    def __init__(self, data: bytes, token: bytes, is_request: bool, timeout: float,
                 max_retransmit: int, now: float) -> None:
        self.data = data
        self.token = token
        self.is_request = is_request
        self.timeout = timeout
        self.max_retransmit = max_retransmit
        self.retransmissions = 0
        self.next_at = now + timeout


class Retransmissions:
    """Our Confirmable messages awaiting ACK or RST, by message ID.

    Parameters are passed with each message, so a message keeps the schedule it started
    with when the session's parameters change. The caller bounds how many it adds.
    """

    def __init__(self, random: Callable[[], float]) -> None:
        self._random = random
        self._pending: dict[int, PendingCon] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, mid: int) -> bool:
        return mid in self._pending

    def get(self, mid: int) -> PendingCon | None:
        return self._pending.get(mid)

    def pop(self, mid: int) -> PendingCon | None:
        """Stop retransmitting ``mid`` (acknowledged, reset, or no longer wanted)."""
        return self._pending.pop(mid, None)

    def clear(self) -> None:
        self._pending.clear()

    def add(self, mid: int, data: bytes, token: bytes, is_request: bool,
            parameters: TransmissionParameters, now: float) -> None:
        """Schedule the first retransmission of the datagram ``data`` just sent."""
        timeout = self._initial_timeout(parameters)
        self._pending[mid] = PendingCon(data, token, is_request, timeout,
                                        parameters.max_retransmit, now)

    def forget_request(self, mid: int, token: bytes) -> None:
        """Stop retransmitting our request ``mid`` if it is still the one with ``token``."""
        pending = self._pending.get(mid)
        if pending is not None and pending.is_request and pending.token == token:
            del self._pending[mid]

    def next_deadline(self) -> float | None:
        deadline: float | None = None
        for pending in self._pending.values():
            if deadline is None or pending.next_at < deadline:
                deadline = pending.next_at
        return deadline

    def handle_timer(self, now: float) -> tuple[list[bytes], list[tuple[int, PendingCon]]]:
        """Retransmit what is due (RFC 7252 §4.2: the timeout doubles each time).

        Returns the datagrams to send again, and the messages given up after
        MAX_RETRANSMIT retransmissions (removed here), with their message IDs, in order.
        """
        resend: list[bytes] = []
        given_up: list[tuple[int, PendingCon]] = []
        for mid, pending in list(self._pending.items()):
            if pending.next_at > now:
                continue
            if pending.retransmissions < pending.max_retransmit:
                pending.retransmissions += 1
                pending.timeout *= 2
                pending.next_at = now + pending.timeout
                resend.append(pending.data)
                continue
            del self._pending[mid]  # MAX_RETRANSMIT reached: give up
            given_up.append((mid, pending))
        return resend, given_up

    def _initial_timeout(self, params: TransmissionParameters) -> float:
        # RFC 7252 §4.2: random between ACK_TIMEOUT and ACK_TIMEOUT * ACK_RANDOM_FACTOR
        return params.ack_timeout * (1 + self._random() * (params.ack_random_factor - 1))
