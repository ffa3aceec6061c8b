"""Shared Observe for the relay: one upstream observation serves every downstream observer.

``SharedObservations`` is the part of ``gateway.relay.forwarding.GatewayRelay`` that keeps
one upstream observation per (cdid, cuid, mid, filter) (Observe is per hop, RFC 7641):
a downstream registration joins it or creates it, upstream notifications go to every
observer through the role's ``notify`` hook (whole, GET again when they come in blocks,
RFC 7959 §2.6), an upstream observation that ends ends them all, and the last observer
leaving cancels it upstream. It uses the relay's state and methods; it is not used alone.

Asyncio glue; imports nothing of the daemon.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from gateway.client.connect import NetworkError
from gateway.client.messages import Reply
from gateway.client.redirect import redirect_in
from gateway.client.session import ClientSession
from gateway.coap.errors import BadOptionError
from gateway.coap.message import CoapMessage
from gateway.dots.codes import Code
from gateway.dots.message import DotsRequest, DotsResponse
from gateway.dots.uri import Resource

if TYPE_CHECKING:
    from gateway.relay.forwarding import Prepared

log = logging.getLogger("gateway.relay.forwarding")  # one logger for the relay's lines

ObservationKey = tuple[str | None, str, int | None, tuple[str, ...]]


@dataclass(eq=False)
class UpstreamObservation:
    """One upstream observation shared by every downstream observer of the same thing."""

    key: ObservationKey
    request: DotsRequest  # the GET with Observe 0, upstream form
    mid: int | None
    session: ClientSession | None = None
    token: bytes | None = None
    last: DotsResponse | None = None
    #: (downstream session id, downstream token)
    subscribers: set[tuple[int, bytes]] = field(default_factory=set)


class SharedObservations:
    """Mixed into ``GatewayRelay``: see the module docstring."""

    # --- observations ------------------------------------------------------------------------

    async def subscribe(self, prepared: Prepared, subscriber: tuple[int, bytes]
                        ) -> tuple[DotsResponse, bool]:
        """A downstream Observe registration: joins the upstream observation of the same
        thing, creating it if needed. Returns the answer to the registration and whether
        the observer was kept: only then may the answer carry Observe downstream. An
        upstream answer without Observe (RFC 7641 §4.1: the server declined; go-dots' first
        answer never has one) or that is not a 2.xx ends it: the observer gets the answer
        as a plain response and may poll or register again (re-registering ourselves with
        a server that declines would only repeat the refusal)."""
        request = replace(prepared.request, observe=0, hop_limit=None)
        # The resource is part of what is observed: mitigate and tm (RFC 9244 §8.3) of the
        # same client are different observations; ``mid`` is the tmid on tm.
        ident = prepared.path.mid if prepared.path.tmid is None else prepared.path.tmid
        key: ObservationKey = (cdid_of(request.path), prepared.cuid, ident,
                               (prepared.path.resource.value, *request.query))
        obs = self.observations.get(key)
        if obs is not None and obs.last is not None and obs.session is not None \
                and not obs.session.closed:
            obs.subscribers.add(subscriber)
            return obs.last, True
        if obs is None:
            obs = UpstreamObservation(key, request, ident)
            self.observations[key] = obs
        obs.subscribers.add(subscriber)
        reply = await self._register(obs)
        response = self._answer(reply)
        kept = reply is not None and reply.ok and reply.observe is not None \
            and self.observations.get(key) is obs and subscriber in obs.subscribers
        if not kept:
            if reply is not None and reply.ok and reply.observe is None:
                log.info("upstream %s declined to observe cuid=%s (no Observe in its "
                         "answer): answering the observer without Observe",
                         reply.endpoint.uri, prepared.cuid)
            obs.subscribers.discard(subscriber)
            if not obs.subscribers:
                # Nothing to cancel upstream when it declined (RFC 7641 §3.2: no Observe,
                # no observation there); cancelling costs nothing otherwise.
                self._drop_observation(obs, cancel=reply is not None
                                       and reply.observe is not None)
        return response, kept

    async def _register(self, obs: UpstreamObservation) -> Reply | None:
        upstream = self.upstream
        if upstream is None or not upstream.session_expected:
            return None  # no session and none coming now: the 5.03 at once (issue 20 §4)

        def later(session: ClientSession, message: CoapMessage | None, _why: str) -> None:
            self._notification(obs, session, message)

        try:
            reply = await upstream.forward(obs.request, mid=obs.mid,
                                           timeout=self.settings.request_timeout, later=later)
        except NetworkError as exc:
            log.info("upstream observation of cuid=%s: %s", obs.key[1], exc)
            return None
        obs.session, obs.token = upstream.session, reply.token
        obs.last = reply.response
        self._note_statuses(obs, reply.response)
        return reply

    def _notification(self, obs: UpstreamObservation, session: ClientSession,
                      message: CoapMessage | None) -> None:
        if session is not obs.session or self.observations.get(obs.key) is not obs:
            return
        if message is None:
            return  # the session ended; the next one registers it again
        if redirect_in(message) is not None:
            # The channel follows it; the next session registers the observation there
            # (upstream_ready), and the observers see the state from the new server.
            return
        response = DotsResponse(_code(message.code), message.payload, message.content_format,
                                message.max_age)
        ended = message.observe is None or not response.code.is_success
        try:
            block = message.block2
        except BadOptionError:
            block = None
        if block is not None and block.more and not ended:
            # RFC 7959 §2.6: a notification carries the first block; GET the whole.
            self._spawn(self._refetch(obs))
            return
        obs.last = response
        self._note_statuses(obs, response)
        # RFC 7641 §3.2: without Observe the upstream observation ended; observers learn so.
        self.notify(set(obs.subscribers), self._from_upstream(session.endpoint, response),
                    ended)
        if ended:
            self._drop_observation(obs, cancel=False)

    async def _refetch(self, obs: UpstreamObservation) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        try:
            reply = await upstream.forward(replace(obs.request, observe=None), mid=obs.mid,
                                           timeout=self.settings.request_timeout)
        except NetworkError as exc:
            log.info("fetching a notification's blocks failed: %s", exc)
            return
        if self.observations.get(obs.key) is not obs:
            return
        obs.last = reply.response
        self._note_statuses(obs, reply.response)
        self.notify(set(obs.subscribers), self._from_upstream(reply.endpoint, reply.response),
                    not reply.ok)
        if not reply.ok:
            self._drop_observation(obs, cancel=False)

    def _note_statuses(self, obs: UpstreamObservation, response: DotsResponse) -> None:
        """A mitigation notification says the statuses the upstream reports now (for
        ``dots_gateway_mitigations{status}``)."""
        _cdid, cuid, _ident, (resource, *_query) = obs.key
        if resource == Resource.MITIGATE.value and response.code.is_success:
            self.table.note_status_payload(cuid, response.payload)

    def unsubscribe(self, subscriber: tuple[int, bytes]) -> None:
        for obs in list(self.observations.values()):
            if subscriber in obs.subscribers:
                obs.subscribers.discard(subscriber)
                if not obs.subscribers:
                    self._drop_observation(obs)

    def last_notification(self, subscriber: tuple[int, bytes]) -> DotsResponse | None:
        for obs in self.observations.values():
            if subscriber in obs.subscribers:
                return obs.last
        return None

    def _drop_observation(self, obs: UpstreamObservation, *, cancel: bool = True) -> None:
        if self.observations.get(obs.key) is obs:
            del self.observations[obs.key]
        if cancel and self.upstream is not None and obs.session is not None \
                and obs.token is not None:
            self._spawn(self.upstream.cancel(obs.session, obs.token,
                                             replace(obs.request, observe=1)))


def cdid_of(path: tuple[str, ...]) -> str | None:
    """The cdid an upstream path carries (``gateway.dots.relay.upstream_path``), or None."""
    for segment in path:
        if segment.startswith("cdid="):
            return segment[5:]
    return None


def _code(raw: int) -> Code:
    try:
        return Code(raw)
    except ValueError:
        return Code.BAD_GATEWAY

