"""Deduplication of the peer's messages (RFC 7252 §4.5) and where our answer to each stands.

Owns the bounded cache of message IDs the peer used recently over UDP. Each entry keeps the
request's token, the :class:`Answer` state (changes go through one table, and a refused
change leaves the entry as it was) and the encoded reply a duplicate gets again. Which
reply that is, and when a message counts as answered, is decided by
:class:`~gateway.coap.layer.MessageLayer`, which composes this cache.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict

from gateway.coap.errors import CoapUsageError
from gateway.coap.reliability import TransmissionParameters

log = logging.getLogger("gateway.coap.layer")  # one logger for the message layer's lines


class Answer(enum.Enum):
    """Where the answer to one message received from the peer stands."""

    AWAIT_ANSWER = "await-answer"  # request delivered to the role, nothing sent yet
    ACKNOWLEDGED = "acknowledged"  # empty ACK sent; a separate response is due
    ANSWERED = "answered"  # response, ACK or rejection sent: duplicates get ``reply``


_AWAIT, _ACKED, _ANSWERED = Answer.AWAIT_ANSWER, Answer.ACKNOWLEDGED, Answer.ANSWERED

#: The allowed changes of :class:`Answer`; anything else is a caller bug (answering twice).
_ANSWER_TRANSITIONS: frozenset[tuple[Answer, Answer]] = frozenset({
    (_AWAIT, _ACKED),  # send_ack, or a duplicate CON while the role works (RFC 7252 §4.5)
    (_AWAIT, _ANSWERED),  # piggybacked, or the response to a NON
    (_ACKED, _ANSWERED),  # the separate response (RFC 7252 §5.2.2)
})


class SeenMessage:
    """A message ID the peer used recently (RFC 7252 §4.5) and what we answered to it."""

    __slots__ = ("expires_at", "reply", "state", "token")

    def __init__(self, expires_at: float, token: bytes, state: Answer,
                 reply: bytes | None) -> None:
        self.expires_at = expires_at
        self.token = token
        self.state = state
        self.reply = reply

    def allows(self, new: Answer) -> bool:
        """Whether :meth:`set_state` would accept ``new``."""
        return (self.state, new) in _ANSWER_TRANSITIONS

    def set_state(self, mid: int, new: Answer, reply: bytes | None) -> None:
        """Move to ``new``; a refused transition raises and leaves the entry unchanged."""
        if (self.state, new) not in _ANSWER_TRANSITIONS:
            raise CoapUsageError(f"message mid={mid}: {self.state.value} -> {new.value} "
                                 "is not allowed (answered already?)")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("coap mid=%d: %s -> %s", mid, self.state.value, new.value)
        self.state = new
        self.reply = reply


class DedupCache:
    """The peer's recent message IDs with what we answered, in arrival order.

    Trade-off: RFC 7252 §4.5 wants a message ID remembered for EXCHANGE_LIFETIME (CON,
    ~223 s with DOTS defaults) or NON_LIFETIME (NON). We keep at most ``max_entries`` IDs
    per session (oldest evicted first), each with the encoded reply only (4 bytes for an
    ACK or RST, or our encoded response), so a session holds at most ``max_entries`` small
    records plus that many cached responses. A peer that sends more than that many
    messages within the lifetime can get a retransmission processed twice; DOTS traffic
    (a heartbeat every 30 s plus occasional mitigation requests) stays far below 64.

    ``con_lifetime`` and ``non_lifetime`` override the lifetimes derived from the
    transmission parameters.
    """

    def __init__(self, max_entries: int, con_lifetime: float | None = None,
                 non_lifetime: float | None = None) -> None:
        self.max_entries = max_entries
        self._con_lifetime = con_lifetime
        self._non_lifetime = non_lifetime
        self._seen: OrderedDict[int, SeenMessage] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def get(self, mid: int) -> SeenMessage | None:
        return self._seen.get(mid)

    def for_request(self, mid: int | None, token: bytes) -> SeenMessage | None:
        """The entry of the request with this message ID, unless the ID now belongs to
        another message (another token)."""
        seen = self._seen.get(mid) if mid is not None else None
        return seen if seen is not None and seen.token == token else None

    def remember(self, mid: int, expires_at: float, token: bytes, state: Answer,
                 reply: bytes | None) -> None:
        seen = self._seen
        if len(seen) >= self.max_entries:
            seen.popitem(last=False)  # the bound wins over the lifetime (class docstring)
        seen[mid] = SeenMessage(expires_at, token, state, reply)

    def purge(self, now: float) -> None:
        # Entries are in arrival order; CON and NON lifetimes differ, so an unexpired entry
        # at the front can shield expired ones behind it until it expires or is evicted.
        seen = self._seen
        while seen:
            first = next(iter(seen.values()))
            if first.expires_at > now:
                break
            seen.popitem(last=False)

    def clear(self) -> None:
        self._seen.clear()

    def lifetime(self, confirmable: bool, parameters: TransmissionParameters) -> float:
        """How long a message ID of this kind is remembered (RFC 7252 §4.5)."""
        if confirmable:
            if self._con_lifetime is not None:
                return self._con_lifetime
            return parameters.exchange_lifetime
        if self._non_lifetime is not None:
            return self._non_lifetime
        return parameters.non_lifetime
