"""Request sending for the client's signal channel: pacing, retransmission, answers.

``RequestSending`` is the part of ``gateway.client.channel.SignalChannel`` that sends one
DOTS request until it is answered: NON requests again after 3 s of silence and CON ones
left to the CoAP layer (RFC 9132 §4.4), the whole bounded by a timeout; a redirect in the
answer is followed and the same request sent to the new server (§4.6, with
``gateway.client.redirect``); a Block2 answer is fetched whole (§4.4.2); every answer goes
through the core (``DotsClientCore.receive_response``) and becomes a ``Reply``. It uses
the channel's state and methods; it is not used alone.

Asyncio glue only; imports nothing of the server role, the relay or the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.client.block1 import block1_put, needs_block1
from gateway.client.blocks import fetch_remaining
from gateway.client.connect import Endpoint, NetworkError
from gateway.client.messages import Reply, coap_request, dots_response, request_label
from gateway.client.qblock import SZX, q_get, q_put
from gateway.client.redirect import redirect_in
from gateway.client.session import ClientSession
from gateway.coap.codes import BAD_OPTION
from gateway.coap.message import CoapMessage
from gateway.coap.options import OptionNumber
from gateway.coap.reliability import TransmissionParameters
from gateway.dots.codes import Method
from gateway.dots.message import DotsRequest
from gateway.dots.session_config import SessionParameters
from redirect.follow import MAX_REDIRECTS

log = logging.getLogger("gateway.client.channel")  # one logger for the channel's lines

#: RFC 9132 §4.4: without an RTT estimate, at most one NON request every 3 s.
NON_RETRY_INTERVAL = 3.0
#: Outcome of one transmission without a response: "timeout", "closed", "reset"...
Failure = str
#: A PUT body larger than this goes in Q-Block1 blocks of this size.
Q_BLOCK_SIZE = 1 << (SZX + 4)


class RequestSending:
    """Mixed into ``SignalChannel``: see the module docstring."""

    # --- transmission ------------------------------------------------------------------------

    async def _send(self, request: DotsRequest, *, confirmable: bool,
                    timeout: float | None = None, mid: int | None = None,
                    attempts: int | None = None,
                    later: Callable[[ClientSession, CoapMessage | None, Failure], None] | None
                    = None) -> Reply:
        """Send until a response arrives: NON again after 3 s of silence (§4.4), at most
        ``attempts`` times, never past ``timeout``; raises ``NetworkError``. CON requests are
        retransmitted by the CoAP layer; over TLS nothing is resent. ``later`` receives what
        arrives for the token after the response (Observe notifications).

        A redirect is followed (RFC 9132 §4.6) and the same request sent to the server the
        channel moved to, with ``timeout`` afresh, at most ``MAX_REDIRECTS`` times; the
        reply is then that server's. A redirect that is not followed is the reply."""
        limit = timeout if timeout is not None else self.request_timeout
        watched = None if later is None else self._watch(request, mid, later)
        reply, session = await self._transmit(request, confirmable, limit, attempts, watched,
                                              mid)
        for hop in range(MAX_REDIRECTS + 1):
            if reply.redirect is None or self._closing:
                break
            if hop == MAX_REDIRECTS:
                self.stats.redirects_failed += 1
                log.warning("redirect not followed cuid=%s from=%s to=%s: already %d "
                            "redirects for %s", self.cuid, reply.endpoint,
                            reply.redirect.alt_server, MAX_REDIRECTS, request_label(request))
                break
            # Pinned: a Max-Age 0 redirect lasts until the resent request is answered.
            self._pinned += 1
            try:
                if not await self._redirected(reply, session, "response"):
                    break
                reply, session = await self._transmit(request, confirmable, limit, attempts,
                                                      watched, mid)
            finally:
                self._pinned -= 1
                self._arm()
        block = self._blocks.take(reply.token)
        if block is not None and block[0].more and reply.ok:
            # RFC 9132 §4.4.2: a list too large for one datagram comes in blocks (RFC 7959).
            async def send(part: DotsRequest) -> Reply:
                return (await self._transmit(part, confirmable, limit, attempts, None,
                                             mid))[0]

            reply = await fetch_remaining(
                request, reply, block, self._blocks, send,
                lambda req, whole, first: self._reply(req, whole, first.endpoint, mid))
        return reply

    async def _transmit(self, request: DotsRequest, confirmable: bool, limit: float,
                        attempts: int | None,
                        later: Callable[[ClientSession, CoapMessage | None, Failure], None]
                        | None, mid: int | None) -> tuple[Reply, ClientSession]:
        """``_send`` without following redirects: the reply and the session it came on.

        A NON request over DTLS is sent again after 3 s of silence as the *same* message,
        same token and Message ID: RFC 9132 §4.4.1 has a DOTS client repeat its NON
        mitigation request at regular intervals until it gets a response (without an RTT
        estimate at most one every 3 s) and says nothing of new tokens or Message IDs for
        the repetitions; RFC 7252 §4.3 lets a sender transmit several copies of a NON
        message, which the receiver processes once (§4.5, by Message ID); and a separate
        response is matched by token alone (§5.3.2). So an answer that comes late, after
        several copies (a gateway's 5.03 at the end of its own upstream bound), completes
        the request, and a gateway in the path relays the request once, not once per copy.
        Only a new session (the previous one closed) gets a new message and token. After
        the last copy (``attempts``) the request keeps waiting for its answer until
        ``limit``."""
        started = self.clock()
        deadline = started + limit
        label = request_label(request)
        most = attempts or self.max_attempts
        sent = 0
        pending: tuple[ClientSession, bytes, asyncio.Future[CoapMessage | Failure]] | None = None
        try:
            while sent <= most:
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                if pending is None:
                    if sent >= most:
                        break
                    session = await self._current_session(remaining)
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        break
                    if sent:
                        self.stats.retransmissions += 1
                        log.info("no answer to %s, sending it again on a new session "
                                 "(transmission %d)", label, sent + 1)
                    sent += 1
                    transfer = self._blockwise(request, confirmable, session, later)
                    if transfer is not None:
                        # The transfer resends what is missing itself, until the deadline.
                        outcome = await transfer(session, request, remaining)
                        if isinstance(outcome, CoapMessage):
                            return self._reply(request, outcome, session.endpoint, mid), session
                        if outcome in ("reset", "bad-option"):
                            raise NetworkError(f"{label}: the server rejected the message "
                                               f"({outcome})")
                        if outcome == "timeout":
                            break
                        continue  # closed (a new session next round) or changed: again
                    pending = self._start(session, coap_request(request), confirmable,
                                          remaining, later)
                    if pending is None:
                        continue  # closed meanwhile: the next round takes the new session
                session, token, future = pending
                resendable = not confirmable and not session.reliable and sent < most
                wait = min(NON_RETRY_INTERVAL, remaining) if resendable else remaining
                done, _ = await asyncio.wait({future}, timeout=wait)
                if not done:
                    if resendable and deadline > self.clock() and session.resend(token):
                        sent += 1
                        self.stats.retransmissions += 1
                        log.info("no answer to %s, sending it again (transmission %d, same "
                                 "token)", label, sent)
                    continue
                pending = None
                outcome = future.result()
                if isinstance(outcome, CoapMessage):
                    return self._reply(request, outcome, session.endpoint, mid), session
                if outcome == "timeout" and (confirmable or session.reliable):
                    break
                if outcome in ("reset", "bad-option"):
                    raise NetworkError(f"{label}: the server rejected the message ({outcome})")
        finally:
            if pending is not None:
                pending[0].forget(pending[1])
        elapsed = self.clock() - started
        copies = "" if sent <= 1 else f", sent {sent} times"
        raise NetworkError(f"no answer to {label} in {elapsed:.0f} s (timeout {limit:g} s"
                           f"{copies})")

    def _blockwise(self, request: DotsRequest, confirmable: bool, session: ClientSession,
                   later: object) -> Callable[[ClientSession, DotsRequest, float],
                                              Awaitable[CoapMessage | Failure]] | None:
        """How ``request`` goes when it does not go whole: Q-Block (RFC 9177), or a PUT body
        too large for one datagram in Block1 blocks (RFC 7959); None: whole."""
        if self._q_block_fits(request, confirmable, session, later):
            return self._send_q_block
        if (request.method is Method.PUT and later is None and not confirmable
                and isinstance(session, ClientSession) and not session.reliable
                and needs_block1(coap_request(request))):
            return self._send_block1
        return None

    async def _send_block1(self, session: ClientSession, request: DotsRequest,
                           remaining: float) -> CoapMessage | Failure:
        label = request_label(request)

        def resent() -> None:
            self.stats.retransmissions += 1
            log.info("no answer to %s, sending the block again (Block1)", label)

        return await block1_put(
            lambda block, wait: self._send_once(session, block, False, wait + 0.5, wait),
            coap_request(request), self.clock() + remaining, self.clock,
            attempts=self.max_attempts + 1, wait=NON_RETRY_INTERVAL, on_resend=resent)

    def _q_block_fits(self, request: DotsRequest, confirmable: bool, session: ClientSession,
                      later: object) -> bool:
        """Whether ``request`` goes in Q-Block (RFC 9177): a mitigation GET (not an Observe
        registration) or a PUT larger than one block, NON, over DTLS, to a server that did
        not refuse it."""
        if (not self.q_block or confirmable or later is not None
                or not isinstance(session, ClientSession)  # a test double: no bursts
                or session.reliable or session.q_block_refused
                or request.path[2:3] != ("mitigate",)):
            return False
        if request.method is Method.GET:
            return request.observe is None and request.block2 is None
        return request.method is Method.PUT and len(request.payload) > Q_BLOCK_SIZE

    async def _send_q_block(self, session: ClientSession, request: DotsRequest,
                            remaining: float) -> CoapMessage | Failure:
        transfer = q_get if request.method is Method.GET else q_put
        label = request_label(request)

        def resent() -> None:
            self.stats.retransmissions += 1
            log.info("no answer to %s, asking again (Q-Block)", label)

        outcome = await transfer(session, coap_request(request), self.clock() + remaining,
                                 self.clock, resent)
        if isinstance(outcome, CoapMessage) and (
                outcome.has_option(OptionNumber.Q_BLOCK2) or request.method is Method.PUT):
            self.stats.q_block_transfers += 1
        if isinstance(outcome, CoapMessage) and outcome.code == BAD_OPTION:
            # RFC 9177 §4.1: a server without Q-Block rejects the critical option.
            log.info("server %s refused Q-Block: Block2 from now on", session.endpoint)
            session.q_block_refused = True
            if request.method is Method.PUT and needs_block1(coap_request(request)):
                return await self._send_block1(session, request, remaining)
            return await self._send_once(session, coap_request(request), False,
                                         min(NON_RETRY_INTERVAL, remaining),
                                         remaining + 0.5)
        return outcome

    def _start(self, session: ClientSession, message: CoapMessage, confirmable: bool,
               lifetime: float,
               later: Callable[[ClientSession, CoapMessage | None, Failure], None] | None
               ) -> tuple[ClientSession, bytes, asyncio.Future[CoapMessage | Failure]] | None:
        """Send ``message`` and return what to wait on (None: the session is closed). The
        first answer resolves the future; later ones (notifications) go to ``later``."""
        future: asyncio.Future[CoapMessage | Failure] = (
            asyncio.get_running_loop().create_future())

        def callback(response: CoapMessage | None, reason: Failure) -> None:
            if not future.done():
                future.set_result(response if response is not None else reason)
            elif later is not None:
                later(session, response, reason)

        try:
            token = session.send_request(message, callback, confirmable=confirmable,
                                         lifetime=lifetime)
        except ConnectionError:
            return None
        return session, token, future

    async def _send_once(self, session: ClientSession, message: CoapMessage, confirmable: bool,
                         lifetime: float, wait: float,
                         later: Callable[[ClientSession, CoapMessage | None, Failure], None]
                         | None = None) -> CoapMessage | Failure:
        """One transmission: the response, or why none came."""
        started = self._start(session, message, confirmable, lifetime, later)
        if started is None:
            return "closed"
        _, token, future = started
        try:
            return await asyncio.wait_for(future, wait)
        except TimeoutError:
            session.forget(token)
            return "timeout"
        except BaseException:
            session.forget(token)
            raise

    def _watch(self, request: DotsRequest, mid: int | None,
               later: Callable[[ClientSession, CoapMessage | None, Failure], None]
               ) -> Callable[[ClientSession, CoapMessage | None, Failure], None]:
        """``later`` for ``_send_once``: a redirect inside a notification (RFC 9132 §4.6)
        moves the channel in the background; ``later`` still gets the notification."""

        def watched(session: ClientSession, response: CoapMessage | None,
                    reason: Failure) -> None:
            if (response is not None and session is self.session and not self._closing
                    and redirect_in(response) is not None):
                reply = self._reply(request, response, session.endpoint, mid)
                self._spawn(self._follow_later(reply, session, "notification"))
            later(session, response, reason)

        return watched

    def _interpret(self, request: DotsRequest, message: CoapMessage, endpoint: Endpoint,
                   mid: int | None) -> Reply:
        """Let the core interpret a response (any answer proves the server alive, §4.7)."""
        now = self.clock()
        response, raw = dots_response(message)
        outcome = self.core.receive_response(request, response, now)
        self.follower.contacted(endpoint.server_name, now)  # for the §4.6 loop rule
        self.follower.contacted(endpoint.address, now)
        return Reply(request, response, outcome, endpoint, raw, mid, message.observe,
                     confirmable=request.path[2:3] == ("config",), token=message.token)

    def _reply(self, request: DotsRequest, message: CoapMessage, endpoint: Endpoint,
               mid: int | None) -> Reply:
        """``_interpret``, then count and report a redirect (``on_redirect``)."""
        reply = self._interpret(request, message, endpoint, mid)
        self._blocks.note(message)
        outcome, response = reply.outcome, reply.response
        if outcome.redirect is not None:
            self.stats.redirects += 1
            self.last_redirect = reply
            log.info("redirect received cuid=%s from=%s to=%s ttl=%s request=%s", self.cuid,
                     endpoint, outcome.redirect.alt_server, response.max_age,
                     request_label(request))
            if self.on_redirect is not None:
                self.on_redirect(reply)
        if not self._ticket_checked and self.session is not None:
            self._ticket_checked = True  # TLS 1.3 tickets arrive after the handshake
            self._save_ticket(self.session)
        return reply


def transmission_parameters(params: SessionParameters) -> TransmissionParameters:
    """The CoAP retransmission parameters of a DOTS session-parameter set (§4.5)."""
    return TransmissionParameters(ack_timeout=float(params.ack_timeout),
                                  ack_random_factor=float(params.ack_random_factor),
                                  max_retransmit=int(params.max_retransmit))

