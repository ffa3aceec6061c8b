"""Heartbeats and loss detection for the client's signal channel (RFC 9132 §4.7).

``HeartbeatKeeping`` is the part of ``gateway.client.channel.SignalChannel`` that answers
the server's ``PUT /hb``, sends our own heartbeat every heartbeat-interval, declares the
session lost through the core's ``HeartbeatMonitor`` (the channel then re-establishes it),
applies the session-parameter set in force (§4.5: it switches with mitigation activity) to
heartbeats and CoAP retransmission, and runs the channel's one timer: heartbeats, the
configuration refresh and the return from an alternate server (§4.6). It uses the
channel's state and methods; it is not used alone.

Asyncio glue only; imports nothing of the server role, the relay or the daemon.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.client.messages import coap_request, request_label
from gateway.client.session import ClientSession
from gateway.client.transmission import Failure, transmission_parameters
from gateway.coap.events import RequestKey
from gateway.coap.message import CoapMessage
from gateway.dots.codes import Code, Method
from gateway.dots.errors import DotsProtocolError, MethodNotAllowed, NotFound
from gateway.dots.heartbeat import (
    HeartbeatMissed,
    ParallelSessionAdvised,
    SendHeartbeat,
    SignalLost,
)
from gateway.dots.message import DotsRequest, DotsResponse
from gateway.dots.uri import Resource, parse_path
from gateway.dots.validate import decode_request_body, validate_heartbeat

log = logging.getLogger("gateway.client.channel")  # one logger for the channel's lines


class HeartbeatKeeping:
    """Mixed into ``SignalChannel``: see the module docstring."""

    # --- the server's heartbeats (SessionOwner) ----------------------------------------------

    def request_received(self, session: ClientSession, message: CoapMessage, key: RequestKey,
                         now: float) -> CoapMessage | None:
        """The server's ``PUT /hb`` (§4.7): 2.04 with an empty body. We serve nothing else."""
        request = DotsRequest(_method(message.code), tuple(message.uri_path),
                              payload=message.payload, content_format=message.content_format)
        try:
            path = parse_path(request.path)
            if path.resource is not Resource.HB:
                raise NotFound(f"a DOTS client serves only hb, not {path.resource.value}")
            if request.method is not Method.PUT:
                raise MethodNotAllowed(f"{request.method.name} is not used on hb (PUT is)")
            heartbeat = validate_heartbeat(decode_request_body(request))
            if session is self.session:
                self.core.heartbeat.peer_heartbeat_received(now, heartbeat.peer_hb_status)
                self._parallel_old_alive(now)  # its heartbeats reach us: the link is back
            self.stats.server_heartbeats += 1
            response = DotsResponse(Code.CHANGED)
        except DotsProtocolError as exc:
            log.info("refused %s from the server: %s", request_label(request), exc.diagnostic)
            response = exc.to_response()
        return message.response(int(response.code), payload=response.payload,
                                content_format=response.content_format)

    # --- timers: heartbeats, loss and the config refresh -------------------------------------

    def _sync_parameters(self, now: float) -> None:
        """Use the set in force (§4.5: it switches with mitigation activity) for heartbeats
        and, over DTLS, for CoAP retransmission. Over TLS a heartbeat unanswered within the
        interval is a failure (§4.7), as the server also counts it."""
        params = self.parameters()
        reliable = self.session is not None and self.session.reliable
        self.core.heartbeat.configure(params.heartbeat_interval,
                                      1 if reliable else params.missing_hb_allowed, now)
        if self.session is not None:
            self.session.set_parameters(transmission_parameters(params))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closing or self.session is None:
            return
        deadlines = [t for t in (self.core.heartbeat.get_timer(), self._refresh_due_at(),
                                 self._return_due_at(), self._parallel_due_at())
                     if t is not None]
        if deadlines:
            delay = max(0.0, min(deadlines) - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self.clock()
        monitor = self.core.heartbeat
        monitor.handle_timer(now)
        while (event := monitor.next_event()) is not None:
            if isinstance(event, SendHeartbeat):
                self._send_heartbeat(now)
            elif isinstance(event, HeartbeatMissed):
                log.info("heartbeat unanswered (%d in a row)", event.outstanding)
            elif isinstance(event, ParallelSessionAdvised):
                self._parallel_advised(now)  # §4.7: keep this one, open another alongside
            elif isinstance(event, SignalLost):
                log.warning("signal lost: %d heartbeats unanswered", monitor.outstanding)
                self._lose("heartbeats unanswered")
                return
        parallel_at = self._parallel_due_at()
        if parallel_at is not None and now >= parallel_at:
            self._parallel_timer(now)
        refresh_at = self._refresh_due_at()
        if refresh_at is not None and now >= refresh_at:
            self._refresh_now()
        return_at = self._return_due_at()
        if return_at is not None and now >= return_at:
            self._returning = True
            self._spawn(self._return_to_provisioned())
        self._arm()

    def _send_heartbeat(self, now: float) -> None:
        session = self.session
        if session is None or session.closed:
            return
        request = self.core.heartbeat_request(now)

        def answered(response: CoapMessage | None, _reason: Failure) -> None:
            if response is not None:
                self.stats.heartbeats_answered += 1
                if session is self.session:
                    self._parallel_old_alive(self.clock())
                reply = self._reply(request, response, session.endpoint, None)
                if reply.redirect is not None and not self._closing:
                    self._spawn(self._follow_later(reply, session, "heartbeat"))

        try:  # NON (§4.7); over TCP the answer may take up to heartbeat-interval
            session.send_request(coap_request(request), answered, confirmable=False,
                                 lifetime=max(1.0, float(self.core.heartbeat.interval)))
            self.stats.heartbeats_sent += 1
        except ConnectionError:
            pass

    def _lose(self, reason: str) -> None:
        self.stats.signal_losses += 1
        if self.session is not None:
            self.session.close(reason)  # session_closed() starts the re-establishment


def _method(code: int) -> Method:
    try:
        return Method(code)
    except ValueError:
        return Method.POST  # answered 4.05 by request_received
