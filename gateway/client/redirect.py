"""Following redirects (RFC 9132 §4.6) for the client's signal channel.

``RedirectFollowing`` is the part of ``gateway.client.channel.SignalChannel`` that acts on a
5.03 with ``redirected-signal``: it moves the channel to the alternate server (Happy
Eyeballs over ``alt-server-record`` or the resolved ``alt-server``), applies the loop rule
and the TTL with ``redirect.follow.RedirectFollower``, and returns to the provisioned
servers when the TTL ends. It uses the channel's state and methods; it is not used alone.

Asyncio glue only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from gateway.client.connect import Endpoint, NetworkError, Transport, alternate_server
from gateway.client.messages import Reply
from gateway.client.session import ClientSession
from gateway.coap.message import CoapMessage
from gateway.dots.codec import decode_message
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code
from gateway.dots.errors import DotsProtocolError
from gateway.dots.model import RedirectedSignal
from gateway.eventlog import log_event
from redirect.follow import Decision, Verdict

log = logging.getLogger("gateway.client.channel")  # one logger for the channel's lines

#: The TTL of a redirect expired but no provisioned server answered: stay on the alternate
#: server this much longer before trying again (the §4.7 back-off interval).
RETURN_RETRY = 60.0


class RedirectFollowing:
    """Mixed into ``SignalChannel``: see the module docstring."""

    # --- following redirects (RFC 9132 §4.6) -------------------------------------------------

    def leave_alternate(self, reason: str) -> None:
        """Stop preferring the alternate server a redirect sent us to: the next
        establishment goes to the provisioned servers (e.g. on failing over)."""
        if self.alternate is not None:
            log.warning("leaving alternate server %s cuid=%s: %s", self.alternate.host,
                        self.cuid, reason)
            self._end_redirect(returning=False)

    async def _redirected(self, reply: Reply, session: ClientSession, reason: str) -> bool:
        """Act on a redirect that ``session`` answered. True when the channel is now on
        another server (moved here or by a concurrent request), so that the request can be
        sent again; False when the redirect was not followed."""
        if self._closing or reply.redirect is None:
            return False
        if asyncio.current_task() in self._movers:
            # A request of a move or an establishment itself (negotiation, carrying
            # mitigations, re-registration): moving from inside would nest without bound.
            # Its caller sees the 5.03; the next request moves the channel.
            log.info("redirect during a move not followed cuid=%s from=%s to=%s", self.cuid,
                     reply.endpoint, reply.redirect.alt_server)
            return False
        async with self._move_lock:
            current = self.session
            if current is not None and current is not session and not current.closed:
                return True  # a concurrent request has moved the channel already
            try:
                with self._moving():
                    return await self._follow(reply, session, reason)
            finally:
                self._arm()

    async def _follow_later(self, reply: Reply, session: ClientSession, reason: str) -> None:
        """A redirect with no request to send again (notification, heartbeat)."""
        if not await self._redirected(reply, session, reason):
            self._redirect_not_followed(reply)

    async def _follow(self, reply: Reply, session: ClientSession, reason: str) -> bool:
        signal = reply.redirect
        assert signal is not None
        origin, ttl = session.endpoint, reply.response.max_age
        previous = self.follower.current
        decision = self.follower.on_redirect(signal, ttl, self.clock())
        if decision.verdict is Verdict.IGNORE_LOOP:
            return await self._avoid_loop(decision, origin, ttl)
        target = alternate_server(decision.server, decision.addresses, origin.port,
                                  self._transports())
        try:
            new = await self._race([target])
        except NetworkError as exc:
            self.follower.current = previous
            self.stats.redirects_failed += 1
            log_event(log, logging.WARNING, "redirect.not_followed", "redirect not followed: "
                      "the alternate server is unreachable", cuid=self.cuid, origin=origin.uri,
                      target=decision.server, ttl=decision.ttl, reason=reason, error=str(exc))
            return False
        if self._closing:
            new.close("the client is closing")
            return False
        self.alternate = target
        self.stats.redirects_followed += 1
        log_event(log, logging.INFO, "redirect.followed", "redirect followed", cuid=self.cuid,
                  origin=origin.uri, target=decision.server, endpoint=new.endpoint.uri,
                  ttl=decision.ttl, reason=reason)
        await self._move_to(new)
        return True

    async def _avoid_loop(self, decision: Decision, origin: Endpoint,
                          ttl: int | None) -> bool:
        """§4.6: MUST ignore a redirect to a server contacted in the last 5 minutes, and
        try other provisioned servers (neither that one nor the one that redirected)."""
        self.stats.redirect_loops += 1
        refused = {*decision.names, origin.server_name, origin.address}
        others = [s for s in self.servers if not s.names & refused]
        log.warning("redirect loop cuid=%s from=%s to=%s ttl=%s: contacted within the last "
                    "5 minutes, redirect ignored; trying %s", self.cuid, origin,
                    decision.server, ttl,
                    ", ".join(s.host for s in others) or "no other provisioned server")
        if not others:
            return False
        try:
            new = await self._race(others)
        except NetworkError as exc:
            self.stats.redirects_failed += 1
            log.warning("after a redirect loop, no other provisioned server answered: %s", exc)
            return False
        if self._closing:
            new.close("the client is closing")
            return False
        self._end_redirect(returning=False)
        await self._move_to(new)
        return True

    async def _move_to(self, session: ClientSession) -> None:
        """The new session replaces the current one; ``_after_connect`` runs on it."""
        self._install(session)
        await self._after_connect()

    @contextlib.contextmanager
    def _moving(self) -> Iterator[None]:
        """Mark the current task as moving or establishing (see ``_redirected``)."""
        task = asyncio.current_task()
        if task is None or task in self._movers:
            yield
            return
        self._movers.add(task)
        try:
            yield
        finally:
            self._movers.discard(task)

    def _end_redirect(self, *, returning: bool) -> None:
        """Back to the provisioned servers: forget the alternate server and its ticket."""
        alternate, self.alternate = self.alternate, None
        self.follower.current = None
        if alternate is None:
            return
        ticket_endpoint = self._ticket_endpoint
        if ticket_endpoint is not None and alternate.reached(ticket_endpoint):
            self._ticket = self._ticket_endpoint = None
        if returning:
            self.stats.redirect_returns += 1
            # Sent to the same alternate server again after the TTL is the redirect
            # renewed, not a loop.
            endpoint = self.endpoint
            self.follower.forget([*alternate.names,
                                  *([endpoint.address] if endpoint is not None else [])])
            log.info("redirect ttl expired cuid=%s: leaving %s for the provisioned servers",
                     self.cuid, alternate.host)

    def _return_due_at(self) -> float | None:
        if (self.alternate is None or self._pinned or self._returning
                or self._move_lock.locked()):
            return None
        return self.follower.return_due_at(under_attack=self.under_attack)

    async def _return_to_provisioned(self) -> None:
        """§4.6: the TTL expired (and no attack): the provisioned servers again."""
        try:
            async with self._move_lock:
                due = self.follower.return_due_at(under_attack=self.under_attack)
                if self.alternate is None or due is None or self.clock() < due:
                    return
                with self._moving():
                    try:
                        new = await self._race(self.servers)
                    except NetworkError as exc:
                        self.follower.postpone(self.clock() + RETURN_RETRY)
                        log.warning("redirect ttl expired cuid=%s but no provisioned server "
                                    "answered (%s): staying on %s for %.0f s more", self.cuid,
                                    exc, self.alternate.host, RETURN_RETRY)
                        return
                    if self._closing:
                        new.close("the client is closing")
                        return
                    self._end_redirect(returning=True)
                    await self._move_to(new)
        finally:
            self._returning = False
            self._arm()

    def _transports(self) -> tuple[Transport, ...]:
        """Those the provisioned servers allow, in the §4.3 order (UDP first)."""
        allowed = {t for spec in self.servers for t in spec.transports}
        return tuple(t for t in (Transport.UDP, Transport.TCP) if t in allowed)



def redirect_in(message: CoapMessage) -> RedirectedSignal | None:
    """The ``redirected-signal`` of a 5.03 (RFC 9132 §4.6), if the message is one."""
    if (message.code != int(Code.SERVICE_UNAVAILABLE) or not message.payload
            or message.content_format != CONTENT_FORMAT_DOTS_CBOR):
        return None
    try:
        body = decode_message(message.payload)
    except DotsProtocolError:
        return None
    return body if isinstance(body, RedirectedSignal) else None


