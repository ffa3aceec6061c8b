"""The CoAP layer of one TLS/TCP connection (RFC 8323), sans-I/O.

:class:`TcpLayer` frames the byte stream, sends our Capabilities and Settings Message
first and insists the peer's comes first too, answers Ping with Pong, reports Release, and
sends or honours Abort. Requests and responses are matched by token only: over TCP there
are no message types, message IDs, acknowledgements or retransmissions, and so no
deduplication either.

Driven like :class:`~gateway.coap.layer.MessageLayer`: ``receive(data, now)``,
``send_*(..., now)`` and ``handle_timer(now)`` in; ``next_event()``, ``get_timer()`` and
``data_to_send()`` pulled out. Outstanding requests are bounded by ``max_outstanding``,
remembered Pings by eight, and the framer by its size limit.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping

from gateway.coap.codes import (
    BAD_OPTION,
    EMPTY,
    format_code,
    is_request_code,
    is_response_code,
)
from gateway.coap.errors import CoapFormatError, CoapUsageError, MessageTooLarge
from gateway.coap.events import (
    ConnectionAborted,
    CsmReceived,
    Event,
    MessageDropped,
    PongReceived,
    ReleaseReceived,
    RequestFailed,
    RequestKey,
    RequestReceived,
    ResponseReceived,
)
from gateway.coap.message import DEFAULT_MAX_MESSAGE_SIZE, CoapMessage
from gateway.coap.options import (
    ABORT_BAD_CSM_OPTION,
    CSM_BLOCK_WISE_TRANSFER,
    CSM_MAX_MESSAGE_SIZE,
    DEFAULT_KNOWN_OPTIONS,
    PING_CUSTODY,
    RELEASE_ALTERNATIVE_ADDRESS,
    RELEASE_HOLD_OFF,
    SIGNALING_OPTION_SPECS,
    OptionNumber,
    OptionSpec,
    SignalCode,
    check_options,
    decode_uint,
    encode_uint,
    option_names,
)
from gateway.coap.tcp_framing import TcpFramer, encode_tcp


class TcpLayer:
    """RFC 8323 layer for one TLS/TCP connection.

    Our CSM is queued on construction (RFC 8323 §5.3: it is the first message each side
    sends); the peer's first message must be a CSM, anything else aborts the connection.
    Requests wait ``lifetime`` seconds (default ``request_lifetime``) for a response; there
    is no retransmission. Over TCP, requests and responses are matched by token only.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        block_wise: bool = False,
        token_source: Callable[[int], bytes] = secrets.token_bytes,
        token_length: int = 4,
        request_lifetime: float = 60.0,
        max_outstanding: int = 64,
        known_options: frozenset[int] = DEFAULT_KNOWN_OPTIONS,
    ) -> None:
        if not 1 <= token_length <= 8:
            raise CoapUsageError(f"token_length must be 1..8: {token_length}")
        self._framer = TcpFramer(max_message_size)
        self.max_message_size = max_message_size
        self._token_source = token_source
        self.token_length = token_length
        self.request_lifetime = request_lifetime
        self.max_outstanding = max_outstanding
        self.known_options = known_options
        self.peer_max_message_size = DEFAULT_MAX_MESSAGE_SIZE  # until the peer's CSM
        self.peer_block_wise = False
        self.csm_received = False
        self.closed = False
        self._exchanges: dict[bytes, tuple[float | None, bool]] = {}  # token -> expiry, observe
        self._pings: OrderedDict[bytes, float] = OrderedDict()
        self._events: deque[Event] = deque()
        self._out = bytearray()
        csm = [(CSM_MAX_MESSAGE_SIZE, encode_uint(max_message_size))]
        if block_wise:
            csm.append((CSM_BLOCK_WISE_TRANSFER, b""))
        self._out += encode_tcp(CoapMessage(None, SignalCode.CSM, 0, b"", tuple(csm)))

    # --- outputs -----------------------------------------------------------------------------

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        deadlines = [at for at, _ in self._exchanges.values() if at is not None]
        return min(deadlines) if deadlines else None

    @property
    def outstanding(self) -> int:
        return len(self._exchanges)

    # --- sending -----------------------------------------------------------------------------

    def send_request(self, msg: CoapMessage, now: float, *,
                     lifetime: float | None = None) -> bytes:
        self._check_open()
        if not is_request_code(msg.code):
            raise CoapUsageError(f"send_request with code {format_code(msg.code)}")
        if len(self._exchanges) >= self.max_outstanding:
            raise CoapUsageError(f"more than {self.max_outstanding} outstanding requests")
        token = msg.token or self._new_token()
        if token in self._exchanges:
            raise CoapUsageError(f"token {token.hex()} is in use")
        self._write(CoapMessage(None, msg.code, 0, token, msg.options, msg.payload))
        observe = msg.option(OptionNumber.OBSERVE) == b""
        self._exchanges[token] = (now + (self.request_lifetime if lifetime is None
                                         else lifetime), observe)
        return token

    def cancel_request(self, token: bytes) -> bool:
        return self._exchanges.pop(token, None) is not None

    def send_response(self, key: RequestKey, response: CoapMessage, now: float) -> None:
        self._check_open()
        if not is_response_code(response.code):
            raise CoapUsageError(f"send_response with code {format_code(response.code)}")
        self._write(CoapMessage(None, response.code, 0, key.token, response.options,
                                response.payload))

    def send_notification(self, token: bytes, notification: CoapMessage, now: float) -> None:
        self.send_response(RequestKey(token), notification, now)

    def send_ping(self, now: float, *, custody: bool = False) -> bytes:
        """Send a Ping (RFC 8323 §5.4); the answer arrives as :class:`PongReceived`."""
        self._check_open()
        token = self._new_token()
        if len(self._pings) >= 8:
            self._pings.popitem(last=False)
        self._pings[token] = now
        options = ((PING_CUSTODY, b""),) if custody else ()
        self._write(CoapMessage(None, SignalCode.PING, 0, token, options))
        return token

    def release(self, now: float, *, alternative_addresses: tuple[str, ...] = (),
                hold_off: int | None = None) -> None:
        """Ask the peer to close the connection (RFC 8323 §5.5)."""
        self._check_open()
        options = [(RELEASE_ALTERNATIVE_ADDRESS, a.encode("utf-8"))
                   for a in alternative_addresses]
        if hold_off is not None:
            options.append((RELEASE_HOLD_OFF, encode_uint(hold_off)))
        self._write(CoapMessage(None, SignalCode.RELEASE, 0, b"", tuple(options)))

    def abort(self, diagnostic: str, now: float, *, bad_csm_option: int | None = None) -> None:
        """Send Abort (RFC 8323 §5.6) and close; send ``data_to_send()``, then close the
        connection."""
        if self.closed:
            return
        options = (((ABORT_BAD_CSM_OPTION, encode_uint(bad_csm_option)),)
                   if bad_csm_option is not None else ())
        data = encode_tcp(CoapMessage(None, SignalCode.ABORT, 0, b"", options,
                                      diagnostic.encode("utf-8")))
        self._shut(diagnostic, by_peer=False)
        self._out += data

    def close(self) -> None:
        """Drop all state, including unsent bytes."""
        self._shut("closed", by_peer=None)

    # --- receiving ---------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> None:
        if self.closed:
            return
        try:
            messages = self._framer.feed(data)
        except MessageTooLarge as exc:  # RFC 8323 §5.3.1: we announced our limit
            self.abort(exc.reason, now)
            return
        except CoapFormatError as exc:  # a stream cannot resynchronize
            self.abort(f"format error: {exc.reason}", now)
            return
        for msg in messages:
            if self.closed:
                return
            self._dispatch(msg, now)

    def handle_timer(self, now: float) -> None:
        for token, (at, _) in list(self._exchanges.items()):
            if at is not None and at <= now:
                del self._exchanges[token]
                self._events.append(RequestFailed(token, "timeout"))

    def _dispatch(self, msg: CoapMessage, now: float) -> None:
        code = msg.code
        if not self.csm_received and code != SignalCode.CSM:
            # RFC 8323 §3.3: a missing CSM is a connection error
            self.abort("expected CSM as the first message", now)
            return
        if code >> 5 == 7:
            self._on_signal(msg, now)
        elif code == EMPTY:
            pass  # RFC 8323 §3.4: Empty messages MUST be ignored (keepalive)
        elif is_request_code(code):
            self._on_request(msg)
        elif is_response_code(code):
            self._on_response(msg, now)
        else:
            self._events.append(MessageDropped(f"reserved code {format_code(code)}"))

    def _on_request(self, msg: CoapMessage) -> None:
        bad, ignored = check_options(msg.options, self.known_options)
        if bad:  # RFC 7252 §5.4.1 (no types over TCP: always answered)
            names = option_names(bad)
            self._write(CoapMessage(None, BAD_OPTION, 0, msg.token, (),
                                    f"unrecognized: {names}".encode()), check=False)
            self._events.append(MessageDropped(f"request with bad critical options {names}"))
            return
        if ignored:
            msg = msg.without_options(*ignored)
        self._events.append(RequestReceived(msg, RequestKey(msg.token)))

    def _on_response(self, msg: CoapMessage, now: float) -> None:
        entry = self._exchanges.get(msg.token)
        if entry is None:
            self._events.append(MessageDropped(f"response {format_code(msg.code)} "
                                               "for unknown token"))
            return
        bad, ignored = check_options(msg.options, self.known_options)
        if bad:
            del self._exchanges[msg.token]
            self._events.append(RequestFailed(msg.token, "bad-option"))
            return
        if ignored:
            msg = msg.without_options(*ignored)
        _, observe = entry
        if observe and msg.code >> 5 == 2 and msg.has_option(OptionNumber.OBSERVE):
            self._exchanges[msg.token] = (None, True)  # observation established (RFC 7641)
        else:
            del self._exchanges[msg.token]
        self._events.append(ResponseReceived(msg.token, msg))

    def _on_signal(self, msg: CoapMessage, now: float) -> None:
        code = msg.code
        specs: Mapping[int, OptionSpec] | None = SIGNALING_OPTION_SPECS.get(code)
        if specs is None:
            # Unassigned signaling code: RFC 8323 defines no handling; we ignore it like an
            # unknown elective (aiocoap aborts instead).
            self._events.append(MessageDropped(f"unknown signal {format_code(code)}"))
            return
        bad, _ = check_options(msg.options, frozenset(specs), specs)
        if code == SignalCode.CSM:
            if bad:  # RFC 8323 §5.3: unknown critical CSM option -> Abort with Bad-CSM-Option
                self.abort(f"unsupported CSM option {bad[0]}", now, bad_csm_option=bad[0])
                return
            size = msg.option(CSM_MAX_MESSAGE_SIZE)
            if size is not None and len(size) <= 4:
                self.peer_max_message_size = decode_uint(size)
            if msg.has_option(CSM_BLOCK_WISE_TRANSFER):
                self.peer_block_wise = True
            self.csm_received = True
            self._events.append(CsmReceived(self.peer_max_message_size, self.peer_block_wise))
            return
        if bad:  # unknown critical option (RFC 7252 §5.4.1); a stream cannot reject one
            # message, so the connection goes, as aiocoap does too
            self.abort(f"unsupported option {bad[0]} in {format_code(code)}", now)
            return
        if code == SignalCode.PING:
            # RFC 8323 §5.4: answer with a Pong carrying the Ping's token
            self._write(CoapMessage(None, SignalCode.PONG, 0, msg.token), check=False)
        elif code == SignalCode.PONG:
            sent_at = self._pings.pop(msg.token, None)
            if sent_at is not None:
                self._events.append(PongReceived(msg.token, now - sent_at))
        elif code == SignalCode.RELEASE:
            addresses = tuple(v.decode("utf-8", "replace")
                              for v in msg.option_values(RELEASE_ALTERNATIVE_ADDRESS))
            hold = msg.option(RELEASE_HOLD_OFF)
            self._events.append(ReleaseReceived(
                addresses, decode_uint(hold) if hold is not None and len(hold) <= 3 else None))
        elif code == SignalCode.ABORT:
            self._shut(msg.payload.decode("utf-8", "replace"), by_peer=True)

    # --- helpers -----------------------------------------------------------------------------

    def _write(self, msg: CoapMessage, *, check: bool = True) -> None:
        """Queue a message. What our caller sends must fit the peer's limit; the few small
        answers the layer makes itself are sent regardless (a peer announcing a limit below
        them is not worth an exception on receive)."""
        data = encode_tcp(msg)
        if check and len(data) > self.peer_max_message_size:  # RFC 8323 §5.3.1
            raise CoapUsageError(f"message of {len(data)} bytes exceeds the peer's "
                                 f"Max-Message-Size {self.peer_max_message_size}")
        self._out += data

    def _shut(self, diagnostic: str, *, by_peer: bool | None) -> None:
        self.closed = True
        self._pings.clear()
        self._out.clear()
        self._framer = TcpFramer(self.max_message_size)  # drop any buffered partial frame
        if by_peer is None:  # close(): drop everything, report nothing
            self._exchanges.clear()
            self._events.clear()
            return
        # Abort: events already queued stay; every outstanding request ends with the
        # connection, reported as "reset" so that waiters wake up.
        for token in list(self._exchanges):
            self._events.append(RequestFailed(token, "reset"))
        self._exchanges.clear()
        self._events.append(ConnectionAborted(diagnostic, by_peer))

    def _new_token(self) -> bytes:
        for _ in range(16):
            token = self._token_source(self.token_length)
            if token not in self._exchanges and token not in self._pings:
                return token
        raise CoapUsageError("token source keeps returning tokens in use")

    def _check_open(self) -> None:
        if self.closed:
            raise CoapUsageError("connection layer is closed")
