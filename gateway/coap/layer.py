"""The CoAP message layer of one DTLS session (RFC 7252 §4), sans-I/O.

:class:`MessageLayer` serves one remote endpoint over DTLS/UDP: message types, message IDs,
retransmission of Confirmable messages, deduplication, piggybacked and separate responses,
Reset handling, and our own deadline for Non-confirmable requests. Its TLS/TCP counterpart
is :class:`~gateway.coap.tcp_layer.TcpLayer`; :func:`outgoing` serves the transport glue
for either.

Driven by inputs ``receive(data, now)``, ``send_*(..., now)`` and ``handle_timer(now)``;
``next_event()``, ``get_timer()`` and ``datagrams_to_send()`` are pulled by the transport
glue. Time is passed in, randomness is injected, and all state is bounded: the
deduplication cache by entry count, outstanding exchanges by ``max_outstanding``. The layer
holds bytes and values only, never a transport object.
"""

from __future__ import annotations

import random as _random
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable

from gateway.coap.codes import (
    BAD_OPTION,
    EMPTY,
    REQUEST_ENTITY_TOO_LARGE,
    MessageType,
    format_code,
    is_request_code,
    is_response_code,
)
from gateway.coap.dedup import Answer, DedupCache
from gateway.coap.errors import CoapFormatError, CoapUsageError
from gateway.coap.events import (
    Event,
    FailureReason,
    MessageDropped,
    RequestFailed,
    RequestKey,
    RequestReceived,
    Reset,
    ResponseReceived,
    ResponseTimedOut,
)
from gateway.coap.message import DEFAULT_MAX_MESSAGE_SIZE, CoapMessage
from gateway.coap.options import (
    DEFAULT_KNOWN_OPTIONS,
    OptionNumber,
    encode_uint,
    option_names,
    options_to_refuse,
)
from gateway.coap.reliability import Retransmissions, TransmissionParameters
from gateway.coap.tcp_layer import TcpLayer
from gateway.coap.udp_codec import decode_udp, empty_ack, encode_udp_fields, reset

CON, NON, ACK, RST = MessageType.CON, MessageType.NON, MessageType.ACK, MessageType.RST
_AWAIT, _ACKED, _ANSWERED = Answer.AWAIT_ANSWER, Answer.ACKNOWLEDGED, Answer.ANSWERED


class _Exchange:
    """A request of ours awaiting its response, or an established observation."""

    __slots__ = ("confirmable", "data", "expires_at", "lifetime", "mid", "multiple", "observe",
                 "token")

    def __init__(self, token: bytes, mid: int, confirmable: bool, lifetime: float,
                 expires_at: float | None, observe: bool, data: bytes = b"",
                 multiple: bool = False) -> None:
        self.token = token
        self.data = data  # a NON request as sent: its copies go out byte for byte
        self.mid = mid
        self.confirmable = confirmable
        self.lifetime = lifetime
        self.expires_at = expires_at  # None: CON still being retransmitted, or observing
        self.observe = observe
        self.multiple = multiple  # Q-Block2: several responses until cancelled or expired


class MessageLayer:
    """RFC 7252 message layer for one DTLS session (one remote endpoint).

    Deduplication keeps at most ``dedup_max_entries`` of the peer's message IDs, each with
    our encoded reply; :class:`~gateway.coap.dedup.DedupCache` explains the trade-off
    against the lifetimes RFC 7252 §4.5 asks for.

    Our NON requests are tracked for ``lifetime`` seconds (per request, default
    ``non_request_lifetime``) and then fail with ``timeout``; a CON request that received an
    empty ACK waits ``lifetime`` seconds (default EXCHANGE_LIFETIME) for the separate
    response. An Observe registration (request with Observe 0) keeps its token after a 2.xx
    response carrying Observe, until a response without Observe, a Reset, or
    :meth:`cancel_request`.
    """

    def __init__(
        self,
        *,
        parameters: TransmissionParameters | None = None,
        random: Callable[[], float] = _random.random,
        token_source: Callable[[int], bytes] = secrets.token_bytes,
        token_length: int = 4,
        initial_mid: int | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        dedup_max_entries: int = 64,
        dedup_con_lifetime: float | None = None,
        dedup_non_lifetime: float | None = None,
        non_request_lifetime: float | None = None,
        max_outstanding: int = 64,
        known_options: frozenset[int] = DEFAULT_KNOWN_OPTIONS,
    ) -> None:
        if not 1 <= token_length <= 8:
            raise CoapUsageError(f"token_length must be 1..8: {token_length}")
        if dedup_max_entries < 1 or max_outstanding < 1:
            raise CoapUsageError("dedup_max_entries and max_outstanding must be positive")
        self.parameters = parameters or TransmissionParameters()
        self._token_source = token_source
        self.token_length = token_length
        self._next_mid = (int(random() * 0x10000) if initial_mid is None else initial_mid) & 0xFFFF
        self.max_message_size = max_message_size
        self._non_request_lifetime = non_request_lifetime
        self.max_outstanding = max_outstanding
        self.known_options = known_options
        self._retransmissions = Retransmissions(random)  # our CONs by message ID
        self._exchanges: dict[bytes, _Exchange] = {}  # our requests by token
        #: Our NON messages by message ID, in sending order, for a Reset that may answer one
        #: (mid -> token, is request, forgotten at): kept NON_LIFETIME, then the ID may be
        #: reused (RFC 7252 §4.4/§4.8.2), and at most ``dedup_max_entries``.
        self._sent_non: OrderedDict[int, tuple[bytes, bool, float]] = OrderedDict()
        self._seen = DedupCache(dedup_max_entries, dedup_con_lifetime, dedup_non_lifetime)
        self._events: deque[Event] = deque()
        self._datagrams: list[bytes] = []
        self.closed = False

    # --- configuration -----------------------------------------------------------------------

    def set_parameters(self, parameters: TransmissionParameters) -> None:
        """New parameters apply to messages sent from now on; those already in flight keep
        their schedule."""
        self.parameters = parameters

    @property
    def non_request_lifetime(self) -> float:
        if self._non_request_lifetime is not None:
            return self._non_request_lifetime
        return self.parameters.non_lifetime

    @property
    def dedup_max_entries(self) -> int:
        return self._seen.max_entries

    @property
    def dedup_entries(self) -> int:
        return len(self._seen)

    @property
    def outstanding(self) -> int:
        """Our requests and observations not finished yet."""
        return len(self._exchanges)

    # --- outputs -----------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self) -> list[bytes]:
        out, self._datagrams = self._datagrams, []
        return out

    def get_timer(self) -> float | None:
        deadline = self._retransmissions.next_deadline()
        for exchange in self._exchanges.values():
            at = exchange.expires_at
            if at is not None and (deadline is None or at < deadline):
                deadline = at
        return deadline

    # --- sending -----------------------------------------------------------------------------

    def send_request(self, msg: CoapMessage, now: float, *, confirmable: bool = True,
                     lifetime: float | None = None, multiple: bool = False) -> bytes:
        """Send a request; returns its token (``msg.token``, or a fresh one if empty).

        The outcome arrives as :class:`ResponseReceived` or :class:`RequestFailed`. With
        ``multiple`` (a Q-Block2 request, RFC 9177 §4.4: one request, a burst of responses)
        every response arrives until :meth:`cancel_request` or ``lifetime`` ends it.
        """
        self._check_open()
        if not is_request_code(msg.code):
            raise CoapUsageError(f"send_request with code {format_code(msg.code)}")
        if len(self._exchanges) >= self.max_outstanding:
            raise CoapUsageError(f"more than {self.max_outstanding} outstanding requests")
        token = msg.token or self._new_token()
        if token in self._exchanges:
            raise CoapUsageError(f"token {token.hex()} is in use")
        mid = self._allocate_mid()
        mtype = CON if confirmable else NON
        data = encode_udp_fields(mtype, msg.code, mid, token, msg.options, msg.payload)
        params = self.parameters
        if confirmable:
            self._retransmissions.add(mid, data, token, True, params, now)
            lifetime = params.exchange_lifetime if lifetime is None else lifetime
            expires_at = None  # until the empty ACK; retransmission gives up on its own
        else:
            self._remember_non(mid, token, True, now)
            lifetime = self.non_request_lifetime if lifetime is None else lifetime
            expires_at = now + lifetime
        observe = msg.option(OptionNumber.OBSERVE) == b""  # Observe 0: register (RFC 7641)
        self._exchanges[token] = _Exchange(token, mid, confirmable, lifetime, expires_at,
                                           observe, b"" if confirmable else data, multiple)
        self._datagrams.append(data)
        return token

    def resend_request(self, token: bytes, now: float) -> bool:
        """Send a NON request of ours again, as the same message: same Message ID and same
        token. RFC 7252 §4.3: a sender MAY transmit multiple copies of a NON message, and
        the Message ID lets the receiver act only once (§4.5, duplicate detection); the
        answer is matched by token alone (§5.3.2), so whichever copy it answers completes
        the exchange. False (nothing sent) when the request is not waiting any more or was
        a CON (the retransmission timer resends those)."""
        self._check_open()
        exchange = self._exchanges.get(token)
        if exchange is None or exchange.confirmable or not exchange.data:
            return False
        self._remember_non(exchange.mid, token, True, now)
        self._datagrams.append(exchange.data)
        return True

    def cancel_request(self, token: bytes) -> bool:
        """Forget a request or observation: no retransmission, no event. Later responses
        with this token are treated as unknown (and a notification is answered with RST)."""
        exchange = self._exchanges.pop(token, None)
        if exchange is None:
            return False
        self._retransmissions.forget_request(exchange.mid, token)
        return True

    def send_ack(self, key: RequestKey, now: float) -> bool:
        """Acknowledge a CON request now with an empty ACK; its response will then be sent
        as a separate response (RFC 7252 §5.2.2). Returns False (and sends nothing) for a
        NON request or one already acknowledged or answered."""
        self._check_open()
        if key.mtype is not CON or key.mid is None:
            return False
        seen = self._seen.for_request(key.mid, key.token)
        if seen is not None and seen.state is not _AWAIT:
            return False
        ack = empty_ack(key.mid)
        if seen is not None:
            seen.set_state(key.mid, _ACKED, ack)
        else:  # evicted from the cache: note it again, or the response would be piggybacked
            expires_at = now + self._dedup_lifetime(True)
            self._seen.remember(key.mid, expires_at, key.token, _ACKED, ack)
        self._datagrams.append(ack)
        return True

    def send_response(self, key: RequestKey, response: CoapMessage, now: float, *,
                      confirmable: bool | None = None) -> int:
        """Answer a received request; returns the message ID used.

        A CON request not acknowledged yet gets the response piggybacked in the ACK.
        Otherwise the response is separate: CON by default after a CON request (then
        retransmitted like a request), NON after a NON request (RFC 7252 §5.2.3);
        ``confirmable`` overrides that choice. The encoded response to a NON request is
        cached, so a retransmitted request gets it again without reaching the role.
        """
        self._check_open()
        if key.mid is None or key.mtype not in (CON, NON):
            raise CoapUsageError("send_response needs the key of a UDP request")
        if not is_response_code(response.code):
            raise CoapUsageError(f"send_response with code {format_code(response.code)}")
        seen = self._seen.for_request(key.mid, key.token)
        if seen is not None and not seen.allows(_ANSWERED):
            seen.set_state(key.mid, _ANSWERED, None)  # raises: answered already
        token = key.token
        if key.mtype is CON and (seen is None or seen.state is _AWAIT):
            mid = key.mid
            data = encode_udp_fields(ACK, response.code, mid, token, response.options,
                                     response.payload)
            self._datagrams.append(data)
            reply: bytes | None = data
        else:
            con = confirmable if confirmable is not None else key.mtype is CON
            mid, data = self._send_separate(token, response, now, con)
            # a duplicate of an acknowledged CON gets the empty ACK again, a NON the response
            reply = data if key.mtype is NON else seen.reply if seen is not None else None
        if seen is not None:
            seen.set_state(key.mid, _ANSWERED, reply)
        else:  # evicted (or never cached): cache the answer for duplicates from now on
            self._seen.remember(key.mid, now + self._dedup_lifetime(key.mtype is CON), token,
                                _ANSWERED, reply)
        return mid

    def send_notification(self, token: bytes, notification: CoapMessage, now: float, *,
                          confirmable: bool = False) -> int:
        """Send an Observe notification (a response with a new message ID) for ``token``;
        returns its message ID. A Reset of it arrives as :class:`Reset`, an unacknowledged
        CON one as :class:`ResponseTimedOut`."""
        self._check_open()
        if not is_response_code(notification.code):
            raise CoapUsageError(f"notification with code {format_code(notification.code)}")
        return self._send_separate(token, notification, now, confirmable)[0]

    def close(self) -> None:
        """Drop all state; later input is ignored and sending raises."""
        self._retransmissions.clear()
        self._exchanges.clear()
        self._sent_non.clear()
        self._seen.clear()
        self._events.clear()
        self._datagrams.clear()
        self.closed = True

    # --- receiving ---------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        """Process one decrypted datagram from the peer."""
        if self.closed:
            return
        self._seen.purge(now)
        try:
            msg = decode_udp(data)
        except CoapFormatError as exc:
            if exc.mtype is CON and exc.mid is not None:
                self._datagrams.append(reset(exc.mid))  # RFC 7252 §4.2: reject CON with RST
            self._drop(f"format error: {exc.reason}")  # §4.3: a NON is silently dropped
            return
        mtype, code = msg.mtype, msg.code
        if mtype is ACK:
            if is_request_code(code):
                self._drop("ACK carrying a request")  # RFC 7252 §4.2
            else:
                self._on_ack(msg, now)
        elif mtype is RST:
            if code != EMPTY:
                self._drop("non-empty RST")  # RFC 7252 §4.2: a Reset is Empty
            else:
                self._on_reset(msg.mid)
        elif code == EMPTY:
            if mtype is CON:
                self._datagrams.append(reset(msg.mid))  # RFC 7252 §4.3: CoAP ping
            else:
                self._drop("empty NON")  # RFC 7252 §4.3: a NON is never Empty
        elif is_request_code(code):
            self._on_request(msg, len(data), now)
        elif is_response_code(code):
            self._on_response(msg, now)
        else:  # reserved classes 1, 3, 6, 7 (RFC 7252 §3)
            if mtype is CON:
                self._datagrams.append(reset(msg.mid))
            self._drop(f"reserved code {format_code(code)}")

    def handle_timer(self, now: float) -> None:
        """Retransmit due CON messages (RFC 7252 §4.2: the timeout doubles each time) and
        fail what has run out of time."""
        if self.closed:
            return
        resend, given_up = self._retransmissions.handle_timer(now)
        self._datagrams.extend(resend)
        for mid, pending in given_up:
            if pending.is_request:
                self._fail(pending.token, "timeout")
            else:
                self._events.append(ResponseTimedOut(mid, pending.token))
        for token, exchange in list(self._exchanges.items()):
            if exchange.expires_at is not None and exchange.expires_at <= now:
                self._fail(token, "timeout")

    # --- receive paths -----------------------------------------------------------------------

    def _on_request(self, msg: CoapMessage, size: int, now: float) -> None:
        mid = msg.mid
        confirmable = msg.mtype is CON
        seen = self._seen.get(mid)
        if seen is not None:  # RFC 7252 §4.5: a duplicate is processed only once
            if seen.reply is not None:
                self._datagrams.append(seen.reply)
            elif confirmable and seen.state is _AWAIT:
                # §4.5: acknowledge each duplicate CON; the response becomes a separate one.
                ack = empty_ack(mid)
                seen.set_state(mid, _ACKED, ack)
                self._datagrams.append(ack)
            return
        lifetime = self._dedup_lifetime(confirmable)
        if size > self.max_message_size:
            reply = self._layer_response(
                msg, REQUEST_ENTITY_TOO_LARGE,
                f"request of {size} bytes exceeds {self.max_message_size}",
                ((OptionNumber.SIZE1, encode_uint(self.max_message_size)),))
            self._seen.remember(mid, now + lifetime, msg.token, _ANSWERED, reply)
            self._drop(f"request of {size} bytes")
            return
        bad, ignored = options_to_refuse(msg.options, self.known_options)
        if bad:
            names = option_names(bad)
            if confirmable:  # RFC 7252 §5.4.1: 4.02 with a diagnostic payload
                reply = self._layer_response(msg, BAD_OPTION, f"unrecognized: {names}")
            else:  # §5.4.1: a NON message is rejected (§4.3)
                reply = reset(mid)
                self._datagrams.append(reply)
            self._seen.remember(mid, now + lifetime, msg.token, _ANSWERED, reply)
            self._drop(f"request with bad critical options {names}")
            return
        if ignored:  # RFC 7252 §5.4.3, §5.4.5: malformed elective options are ignored
            msg = msg.without_options(*ignored)
        self._seen.remember(mid, now + lifetime, msg.token, _AWAIT, None)
        self._events.append(RequestReceived(msg, RequestKey(msg.token, mid, msg.mtype)))

    def _on_response(self, msg: CoapMessage, now: float) -> None:
        """A CON or NON response (separate response or notification)."""
        mid = msg.mid
        confirmable = msg.mtype is CON
        seen = self._seen.get(mid)
        if seen is not None:  # duplicate: ACK again, process once (RFC 7252 §4.5)
            if seen.reply is not None:
                self._datagrams.append(seen.reply)
            return
        expires_at = now + self._dedup_lifetime(confirmable)
        exchange = self._exchanges.get(msg.token)
        if exchange is None:
            if confirmable or msg.option(OptionNumber.OBSERVE) is not None:
                # RFC 7252 §4.2 (unknown CON); RFC 7641 §3.6 (unwanted notification)
                self._seen.remember(mid, expires_at, msg.token, _ANSWERED, reset(mid))
                self._datagrams.append(reset(mid))
            self._drop(f"response {format_code(msg.code)} for unknown token")
            return
        bad, ignored = options_to_refuse(msg.options, self.known_options)
        if bad:  # RFC 7252 §5.4.1: the response is rejected
            reply = reset(mid) if confirmable else None
            self._seen.remember(mid, expires_at, msg.token, _ANSWERED, reply)
            if reply is not None:
                self._datagrams.append(reply)
            self._fail(msg.token, "bad-option")
            return
        reply = empty_ack(mid) if confirmable else None
        self._seen.remember(mid, expires_at, msg.token, _ANSWERED, reply)
        if reply is not None:
            self._datagrams.append(reply)
        self._complete(exchange, msg.without_options(*ignored) if ignored else msg, now)

    def _on_ack(self, msg: CoapMessage, now: float) -> None:
        mid = msg.mid
        pending = self._retransmissions.get(mid)
        if pending is None:
            return  # RFC 7252 §4.2: an unknown ACK is silently ignored (often a late one)
        if not pending.is_request:
            if msg.code == EMPTY:
                self._retransmissions.pop(mid)  # our CON response or notification was delivered
            else:
                self._drop("ACK of a response carrying a response")
            return
        exchange = self._exchanges.get(pending.token)
        if msg.code == EMPTY:  # RFC 7252 §5.2.2: the response will come separately
            self._retransmissions.pop(mid)
            if exchange is not None:
                exchange.expires_at = now + exchange.lifetime
            return
        if msg.token != pending.token:  # RFC 7252 §5.3.2: must match the request
            self._drop("piggybacked response with another token")
            return
        self._retransmissions.pop(mid)
        if exchange is None:
            return
        bad, ignored = options_to_refuse(msg.options, self.known_options)
        if bad:  # RFC 7252 §5.4.1: reject; an ACK cannot be answered, so just fail
            self._fail(pending.token, "bad-option")
            return
        self._complete(exchange, msg.without_options(*ignored) if ignored else msg, now)

    def _on_reset(self, mid: int) -> None:
        pending = self._retransmissions.pop(mid)
        if pending is not None:
            if pending.is_request:
                self._fail(pending.token, "reset")
            else:
                self._events.append(Reset(mid, pending.token))
            return
        sent = self._sent_non.pop(mid, None)
        if sent is None:
            return  # RST for something we no longer know
        token, is_request, _ = sent
        exchange = self._exchanges.get(token)
        if is_request and exchange is not None and exchange.mid == mid:
            self._fail(token, "reset")
        else:
            self._events.append(Reset(mid, token))

    def _complete(self, exchange: _Exchange, msg: CoapMessage, now: float) -> None:
        token = exchange.token
        # RFC 7252 §5.2.2: a CON response implies the ACK of our request
        self._retransmissions.forget_request(exchange.mid, token)
        if exchange.multiple:
            if exchange.expires_at is None:  # a CON answered: the burst has its lifetime
                exchange.expires_at = now + exchange.lifetime
        elif exchange.observe and msg.code >> 5 == 2 and msg.has_option(OptionNumber.OBSERVE):
            exchange.expires_at = None  # RFC 7641 §3.1: observation established
            exchange.data = b""  # answered: never sent again
        else:
            del self._exchanges[token]
        self._events.append(ResponseReceived(token, msg))

    # --- helpers -----------------------------------------------------------------------------

    def _send_separate(self, token: bytes, response: CoapMessage, now: float,
                       confirmable: bool) -> tuple[int, bytes]:
        mid = self._allocate_mid()
        mtype = CON if confirmable else NON
        data = encode_udp_fields(mtype, response.code, mid, token, response.options,
                                 response.payload)
        if confirmable:
            if len(self._retransmissions) >= 2 * self.max_outstanding:
                raise CoapUsageError("too many unacknowledged CON messages")
            self._retransmissions.add(mid, data, token, False, self.parameters, now)
        else:
            self._remember_non(mid, token, False, now)
        self._datagrams.append(data)
        return mid, data

    def _layer_response(self, request: CoapMessage, code: int, diagnostic: str,
                        options: tuple[tuple[int, bytes], ...] = ()) -> bytes:
        """An error response the layer sends itself: piggybacked for CON, NON for NON."""
        if request.mtype is CON:
            mtype, mid = ACK, request.mid
        else:
            mtype, mid = NON, self._allocate_mid()
        data = encode_udp_fields(mtype, code, mid, request.token, options,
                                 diagnostic.encode("utf-8"))
        self._datagrams.append(data)
        return data

    def _fail(self, token: bytes, reason: FailureReason) -> None:
        exchange = self._exchanges.pop(token, None)
        if exchange is None:
            return
        self._retransmissions.forget_request(exchange.mid, token)
        self._events.append(RequestFailed(token, reason))

    def _remember_non(self, mid: int, token: bytes, is_request: bool, now: float) -> None:
        # Forgotten by age too, not only by count: a session that sends a heartbeat and
        # answers one every 30 s reached the 64 entries after 16 minutes, ~8 KiB it held
        # for nothing (the 50,000-session soak's RSS grew by ~400 MiB in 10 minutes).
        sent = self._sent_non
        for _ in range(len(sent)):  # sending order is expiry order: stop at the first live
            if next(iter(sent.values()))[2] > now:
                break
            sent.popitem(last=False)
        sent.pop(mid, None)  # a resent NON goes to the back with its new expiry
        if len(sent) >= self.dedup_max_entries:
            sent.popitem(last=False)
        sent[mid] = (token, is_request, now + self.parameters.non_lifetime)

    def _dedup_lifetime(self, confirmable: bool) -> float:
        return self._seen.lifetime(confirmable, self.parameters)

    def _allocate_mid(self) -> int:
        mid = self._next_mid
        while mid in self._retransmissions or mid in self._sent_non:
            mid = (mid + 1) & 0xFFFF
        self._next_mid = (mid + 1) & 0xFFFF
        return mid

    def _new_token(self) -> bytes:
        for _ in range(16):
            token = self._token_source(self.token_length)
            if token not in self._exchanges:
                return token
        raise CoapUsageError("token source keeps returning tokens in use")

    def _drop(self, reason: str) -> None:
        self._events.append(MessageDropped(reason))

    def _check_open(self) -> None:
        if self.closed:
            raise CoapUsageError("message layer is closed")


def outgoing(layer: MessageLayer | TcpLayer) -> list[bytes]:
    """What a layer wants sent, as the units its transport sends: datagrams for UDP, one
    stream chunk for TCP (nothing when there is nothing)."""
    if isinstance(layer, TcpLayer):
        data = layer.data_to_send()
        return [data] if data else []
    return layer.datagrams_to_send()
