"""One signal-channel connection of a DOTS client: a (D)TLS connection and its CoAP layer.

``ClientSession`` feeds decrypted records to the CoAP layer (``MessageLayer`` over DTLS,
``TcpLayer`` over TLS), sends what the layer produces, re-arms the layer's one timer, and
routes the layer's events: responses and notifications to the callback registered with the
request's token, requests from the server (its ``PUT /hb``) to the owner, and the end of the
connection to ``on_closed``. It makes no DOTS decisions; the client role does.

Asyncio glue only, like ``gateway.server.role``; must not import the client role.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from gateway.client.connect import Endpoint, Transport
from gateway.coap.events import (
    ConnectionAborted,
    ReleaseReceived,
    RequestFailed,
    RequestKey,
    RequestReceived,
    ResponseReceived,
)
from gateway.coap.layer import MessageLayer, outgoing
from gateway.coap.message import CoapMessage
from gateway.coap.reliability import TransmissionParameters
from gateway.coap.tcp_layer import TcpLayer

log = logging.getLogger(__name__)

#: Called with the response (or notification), or with None and a failure reason
#: ("timeout", "reset", "bad-option", "closed").
ResponseCallback = Callable[[CoapMessage | None, str], None]


class SessionOwner(Protocol):
    def request_received(self, session: ClientSession, message: CoapMessage, key: RequestKey,
                         now: float) -> CoapMessage | None: ...

    def session_closed(self, session: ClientSession, reason: str) -> None: ...


class ClientSession:
    """The CoAP side of one connection; ``connection`` is set once the handshake is done."""

    def __init__(self, owner: SessionOwner, endpoint: Endpoint, clock: Callable[[], float],
                 parameters: TransmissionParameters | None = None, *,
                 max_outstanding: int = 64) -> None:
        self.owner = owner
        self.endpoint = endpoint
        self.clock = clock
        self.layer: MessageLayer | TcpLayer
        if endpoint.transport is Transport.TCP:
            self.layer = TcpLayer(max_outstanding=max_outstanding)
        else:
            self.layer = MessageLayer(parameters=parameters, max_outstanding=max_outstanding)
        self.connection: Any = None  # DtlsClientConnection | TlsClientConnection
        self.closed = False
        self.close_reason = ""
        #: The server answered a Q-Block request with 4.02 (RFC 9177 §4.1): Block2 only.
        self.q_block_refused = False
        self._callbacks: dict[bytes, ResponseCallback] = {}
        self._observe_tokens: set[bytes] = set()
        self._multiple: set[bytes] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    @property
    def reliable(self) -> bool:
        return self.endpoint.transport is Transport.TCP

    @property
    def ticket(self) -> bytes | None:
        """The (D)TLS session to offer for resumption next time (RFC 9132 §4.7, §7.1)."""
        return None if self.connection is None else self.connection.ticket

    @property
    def resumed(self) -> bool:
        return self.connection is not None and self.connection.session.resumed

    # --- connection callbacks ----------------------------------------------------------------

    def attach(self, connection: Any) -> None:
        self.connection = connection
        self._flush()  # the TCP layer's CSM goes first (RFC 8323 §5.3)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        now = self.clock()
        self.layer.receive(data, now)
        self._pump(now)

    def connection_lost(self, reason: str) -> None:
        if self.connection is None:
            return  # a handshake that failed: the attempt reports it
        self._shut(reason)

    # --- API for the role --------------------------------------------------------------------

    def send_request(self, message: CoapMessage, callback: ResponseCallback, *,
                     confirmable: bool, lifetime: float | None, multiple: bool = False) -> bytes:
        """Send a request; ``callback`` gets its response, each notification of an
        observation (a GET with Observe 0), or the failure. Returns the token. With
        ``multiple`` (Q-Block2, over DTLS only) every response reaches ``callback`` until
        ``forget`` or the lifetime ends."""
        if self.closed:
            raise ConnectionError(f"session to {self.endpoint} is closed: {self.close_reason}")
        now = self.clock()
        if isinstance(self.layer, TcpLayer):
            token = self.layer.send_request(message, now, lifetime=lifetime)
        else:
            token = self.layer.send_request(message, now, confirmable=confirmable,
                                            lifetime=lifetime, multiple=multiple)
            if multiple:
                self._multiple.add(token)
        self._callbacks[token] = callback
        if message.observe == 0:
            self._observe_tokens.add(token)
        self._flush()
        self._arm()
        return token

    def resend(self, token: bytes) -> bool:
        """Send the NON request waiting on ``token`` again as the same message (same token
        and Message ID, ``MessageLayer.resend_request``); False when it is not waiting any
        more, over TLS (nothing is resent on a reliable transport), or when closed."""
        if self.closed or not isinstance(self.layer, MessageLayer):
            return False
        if not self.layer.resend_request(token, self.clock()):
            return False
        self._flush()
        return True

    def forget(self, token: bytes) -> None:
        """Stop waiting for ``token`` (no event; a later notification is answered RST)."""
        self._callbacks.pop(token, None)
        self._observe_tokens.discard(token)
        self._multiple.discard(token)
        if not self.closed:
            self.layer.cancel_request(token)
            self._arm()

    def set_parameters(self, parameters: TransmissionParameters) -> None:
        if isinstance(self.layer, MessageLayer):
            self.layer.set_parameters(parameters)

    def close(self, reason: str = "closed locally") -> None:
        if self.closed:
            return
        if isinstance(self.layer, TcpLayer) and self.connection is not None:
            # RFC 8323 §5.5: tell the server we are done, then close.
            self.layer.release(self.clock())
            self._flush()
        # Ours first: closing the connection reports "closed locally" back through
        # connection_lost, which must not replace the reason.
        self._shut(reason)
        if self.connection is not None:
            self.connection.close()

    # --- internals ---------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        for _ in range(256):  # bounded: one record yields a handful of events
            event = self.layer.next_event()
            if event is None:
                break
            if isinstance(event, RequestReceived):
                response = self.owner.request_received(self, event.message, event.key, now)
                if response is not None:  # None: leave it unanswered
                    self.layer.send_response(event.key, response, now)
            elif isinstance(event, ResponseReceived):
                callback = self._callbacks.get(event.token)
                if callback is not None:
                    if (event.token not in self._multiple
                            and not self._observation_goes_on(event.token, event.message)):
                        del self._callbacks[event.token]
                        self._observe_tokens.discard(event.token)
                    callback(event.message, "")
            elif isinstance(event, RequestFailed):
                self._observe_tokens.discard(event.token)
                self._multiple.discard(event.token)
                callback = self._callbacks.pop(event.token, None)
                if callback is not None:
                    callback(None, event.reason)
            elif isinstance(event, ReleaseReceived | ConnectionAborted):
                reason = ("released by the server" if isinstance(event, ReleaseReceived)
                          else f"aborted: {event.diagnostic}")
                self._flush()
                if self.connection is not None:
                    self.connection.close()
                self._shut(reason)
                return
            if self.closed:
                return
        self._flush()
        self._arm()

    def _observation_goes_on(self, token: bytes, message: CoapMessage) -> bool:
        """RFC 7641 §3.2/§4.2, as the layers apply it: a 2.xx with Observe keeps an
        observation going; anything else ends it."""
        return (token in self._observe_tokens and message.code >> 5 == 2
                and message.observe is not None)

    def _flush(self) -> None:
        if self.closed or self.connection is None:
            return
        for chunk in outgoing(self.layer):
            try:
                self.connection.send(chunk)
            except Exception as exc:  # a connection that cannot send is finished
                log.info("send to %s failed: %s", self.endpoint, exc)
                self.connection.close()
                self._shut(f"send failed: {exc}")
                return

    def _arm(self) -> None:
        if self.closed:
            return
        deadline = self.layer.get_timer()
        if deadline == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, deadline - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.closed:
            return
        now = self.clock()
        self.layer.handle_timer(now)
        self._pump(now)

    def _shut(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.layer.close()
        callbacks, self._callbacks = self._callbacks, {}
        for callback in callbacks.values():
            callback(None, "closed")
        self.owner.session_closed(self, reason)
