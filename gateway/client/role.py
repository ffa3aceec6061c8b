"""The DOTS client role: an asyncio library around the pure client core (RFC 9132 client side).

``DotsClient`` is the public API: connect (Happy Eyeballs over DTLS and TLS, X.509 or PSK),
negotiate the session configuration and refresh it before Max-Age (never during an attack),
and the mitigation operations: create / refresh / efficacy update / withdraw / get /
observe. The signal channel underneath (sessions, resumption and back-off) is
``gateway.client.channel``, with pacing in ``transmission`` and heartbeats both ways and
loss detection in ``heartbeats``.

Mitigation requests, GETs and heartbeats are NON (§4.4, §4.7), sent again at most every 3 s
until answered; configuration requests are CON (§4.5). A new mid is persisted before the
request carrying it leaves (``gateway.client.state``), so mids stay monotonic across restarts.
4.09 cuid collisions are resolved here (new UUID-based cuid, request sent once more);
other 4.09s are returned to the caller in the ``Reply``. Redirects (RFC 9132 §4.6) are
followed by the channel; on a server other than the previous one (after a redirect, its
TTL, or a loop) the client first GETs its mitigations there and sends those the server
does not know again with the same cuid and mid, then registers its observations again. A
``Reply`` carries a 5.03 redirect only when it could not be followed.

Asyncio glue only; must not be imported by ``gateway.dots`` or ``gateway.coap``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from gateway.client.channel import ClientStats, SignalChannel, derived_cuid
from gateway.client.connect import DEFAULT_ATTEMPT_DELAY, NetworkError, ServerSpec, Transport
from gateway.client.messages import (
    DotsErrorResponse,
    Observation,
    Reply,
    coap_request,
    make_scope,
    request_scope,
)
from gateway.client.redirect import redirect_in
from gateway.client.session import ClientSession
from gateway.client.transmission import NON_RETRY_INTERVAL, Failure
from gateway.coap.message import CoapMessage
from gateway.dots.codes import AttackStatus, Code, ConflictCause, Method
from gateway.dots.errors import DotsUsageError
from gateway.dots.filters import carry_acl_list
from gateway.dots.heartbeat import ReconnectBackoff
from gateway.dots.message import DotsRequest
from gateway.dots.model import Extensions, Scope, SignalConfig
from gateway.dots.session_config import SessionParameters
from gateway.dots.uri import ContentFilter
from gateway.transport.tls_context import ClientCredentials

__all__ = ["ClientStats", "DotsClient", "DotsErrorResponse", "NetworkError", "Observation",
           "Reply", "ServerSpec", "Transport", "derived_cuid", "make_scope", "new_cuid",
           "request_scope"]

log = logging.getLogger(__name__)


def new_cuid() -> str:
    """A fresh cuid after a collision (§4.4.1.1: e.g. a UUID): a UUIDv4's 16 bytes in
    unpadded base64url, 22 characters like a derived cuid."""
    return urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


class DotsClient(SignalChannel):
    """A DOTS client; ``async with DotsClient(credentials, servers) as client: ...``.

    ``servers``: ``ServerSpec`` values or URIs (``coaps://h:p``, ``coaps+tcp://h:p``, or a
    bare ``h[:p]`` for both transports); default ``localhost``, both transports.
    ``state_dir`` persists the mid/sid counters, a replaced cuid and the Happy Eyeballs
    winner; without it they live as long as this object. ``negotiate`` runs the session
    configuration negotiation on every new session with ``preferred_idle`` /
    ``preferred_mitigating`` (clamped into the server's limits). ``reconnect`` re-establishes
    a lost session (else operations connect again on demand). Under attack a silent server
    gets a parallel session instead (``gateway.client.parallel``); ``parallel_backoff``
    spaces failed attempts (default: ``ReconnectBackoff()``).
    """

    def __init__(self, credentials: ClientCredentials,
                 servers: Sequence[ServerSpec | str] | ServerSpec | str | None = None, *,
                 state_dir: Path | None = None, cuid: str | None = None,
                 attempt_delay: float = DEFAULT_ATTEMPT_DELAY, handshake_timeout: float = 5.0,
                 request_timeout: float = 15.0, max_attempts: int = 5,
                 preferred_idle: SessionParameters | None = None,
                 preferred_mitigating: SessionParameters | None = None,
                 negotiate: bool = True, reconnect: bool = True,
                 backoff: ReconnectBackoff | None = None,
                 on_redirect: Callable[[Reply], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 parallel_backoff: ReconnectBackoff | None = None) -> None:
        super().__init__(credentials, servers, state_dir=state_dir, cuid=cuid,
                         attempt_delay=attempt_delay, handshake_timeout=handshake_timeout,
                         request_timeout=request_timeout, max_attempts=max_attempts,
                         preferred_idle=preferred_idle,
                         preferred_mitigating=preferred_mitigating, reconnect=reconnect,
                         backoff=backoff, on_redirect=on_redirect, new_cuid=new_cuid,
                         clock=clock, parallel_backoff=parallel_backoff)
        self.negotiate = negotiate
        #: The sid of the configuration installed on the current session, if any.
        self.sid: int | None = None
        self._observations: list[Observation] = []
        #: Observations a server ended with a redirect (in a notification, or answering a
        #: registration during a move), with that answer: registered again wherever the
        #: channel ends up, or given the answer when the redirect is not followed.
        self._orphans: dict[Observation, Reply] = {}
        self._active: dict[int, float | None] = {}  # mid -> expiry (None: indefinite)
        #: mid -> the scope requested, to send it again to a server that lacks it (§4.6).
        self._scopes: dict[int, Scope] = {}
        self._retry_after: dict[int, float] = {}  # mid -> not before (conflict retry-timer)
        self._config_adopted_at: float | None = None
        self._refreshing = False

    async def __aenter__(self) -> DotsClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """End the session. Mitigations stay: they belong to the client, not to the session
        (RFC 8811 §3.1); observations end."""
        for obs in self._observations:
            obs.end()
        self._observations.clear()
        self._orphans.clear()
        await super().close()

    # --- session configuration (CON, hop-by-hop, §4.5) ---------------------------------------

    async def config_get(self, sid: int | None = None, *,
                         timeout: float | None = None) -> Reply:
        """GET config: the server's limits (no sid) or the negotiated values (sid); 2.05
        values and Max-Age are adopted."""
        reply = await self._send(self.core.config_get(sid), confirmable=True, timeout=timeout)
        if reply.ok and isinstance(reply.message, SignalConfig):
            self._config_adopted_at = self.clock()
            self._sync_parameters(self._config_adopted_at)
            self._arm()
        return reply

    async def config_put(self, config: SignalConfig, sid: int | None = None, *,
                         timeout: float | None = None) -> Reply:
        """PUT config/sid: 2.01 (new sid) or 2.04; 4.22 if a value is outside the limits.
        Without ``sid`` a new one is allocated (and persisted)."""
        sid = self.state.allocate_sid(self.core) if sid is None else sid
        reply = await self._send(self.core.config_put(config, sid=sid), confirmable=True,
                                 timeout=timeout)
        if reply.ok:
            self.sid = sid
        return reply

    async def config_delete(self, sid: int | None = None, *,
                            timeout: float | None = None) -> Reply:
        """DELETE config (§4.5.4): back to the server's defaults."""
        reply = await self._send(self.core.config_delete(sid), confirmable=True,
                                 timeout=timeout)
        if reply.ok:
            self.sid = None
        return reply

    async def negotiate_config(self, *, timeout: float | None = None) -> list[Reply]:
        """GET the limits, PUT our preferences clamped into them under a new sid, GET that
        sid to adopt the values and their Max-Age. Returns the replies, stopping at the
        first that is not 2.xx."""
        limits = await self.config_get(timeout=timeout)
        if not limits.ok or not isinstance(limits.message, SignalConfig):
            return [limits]
        put = await self.config_put(self.core.config.proposal(limits.message), timeout=timeout)
        if not put.ok:
            return [limits, put]
        assert self.sid is not None
        return [limits, put, await self.config_get(self.sid, timeout=timeout)]

    # --- mitigations (NON, §4.4) ------------------------------------------------------------

    async def mitigate(self, scope: Scope, *, mid: int | None = None,
                       timeout: float | None = None) -> Reply:
        """PUT a mitigation request (2.01), or refresh the one named by ``mid`` (2.04). A new
        mid is allocated and persisted before the request leaves."""
        if mid is None:
            mid = self.state.allocate_mid(self.core)
        else:
            self._check_retry_timer(mid)
            self.state.note_mid(self.core, mid)
        chosen = mid
        reply = await self._mitigation(lambda: self.core.mitigation_request(scope, chosen),
                                       mid, timeout)
        if reply.ok:
            self._scopes[mid] = carry_acl_list(scope, self._scopes.get(mid))
        return reply

    async def refresh(self, mid: int, scope: Scope, *, timeout: float | None = None) -> Reply:
        """The same request again, lifetime possibly changed (§4.4.1.3): 2.04."""
        return await self.mitigate(scope, mid=mid, timeout=timeout)

    async def efficacy_update(self, mid: int, scope: Scope, attack_status: AttackStatus, *,
                              telemetry: Extensions = (),
                              timeout: float | None = None) -> Reply:
        """PUT with the original parameters, ``attack-status`` and an empty If-Match (§4.4.3);
        ``scope`` may be what a GET returned (server-only nodes are dropped). 2.04.
        ``telemetry``: RFC 9244 §9.1 attributes (keys 204-207) to carry with it."""
        body = replace(request_scope(scope), extensions=tuple(telemetry))
        return await self._mitigation(
            lambda: self.core.efficacy_update(mid, body, attack_status), mid, timeout)

    async def withdraw(self, mid: int, *, timeout: float | None = None) -> Reply:
        """DELETE (§4.4.4): 2.02, even for an unknown mid."""
        reply = await self._mitigation(lambda: self.core.withdraw(mid), mid, timeout)
        if reply.ok:
            self._scopes.pop(mid, None)
        return reply

    async def get(self, mid: int | None = None, *, content: ContentFilter = ContentFilter.ALL,
                  timeout: float | None = None) -> Reply:
        """GET one request or all of ours (§4.4.2): 2.05, or 4.04 when there is none."""
        return await self._mitigation(lambda: self.core.retrieve(mid, content=content), mid,
                                      timeout)

    async def observe(self, mid: int | None = None, *,
                      content: ContentFilter = ContentFilter.ALL,
                      timeout: float | None = None) -> Observation:
        """GET with Observe 0 (§4.4.2.1). ``first`` of the result is the registration reply;
        if that is not a 2.xx with Observe, the observation has already ended."""
        obs = Observation(lambda: self.core.retrieve(mid, content=content), mid,
                          self._cancel_observation)
        await self._register(obs, timeout, initial=True)
        if not obs.ended:
            self._observations.append(obs)
        return obs

    # --- telemetry (RFC 9244): bodies are CBOR, see gateway.dots.telemetry ---------------

    async def telemetry_setup(self, body: bytes, *, tsid: int | None = None,
                              timeout: float | None = None) -> Reply:
        """PUT /tm-setup (CON, §7): 2.01 or 2.04. Without ``tsid`` a new one is allocated
        and persisted (tsids increase monotonically, §7.1.2)."""
        if tsid is None:
            tsid = self.state.allocate_id("tsid")
        else:
            self.state.note_id("tsid", tsid)
        return await self._send(self.core.telemetry_setup_put(body, tsid), confirmable=True,
                                timeout=timeout)

    async def telemetry_setup_get(self, tsid: int | None = None, *,
                                  timeout: float | None = None) -> Reply:
        """GET /tm-setup: limits, units and every setup (§7.1.1), or one tsid (§7.1.3)."""
        return await self._send(self.core.telemetry_setup_get(tsid), confirmable=True,
                                timeout=timeout)

    async def telemetry_setup_delete(self, tsid: int | None = None, *,
                                     timeout: float | None = None) -> Reply:
        """DELETE one tsid, or all setups without one (§7.1.4, §7.4): 2.02."""
        return await self._send(self.core.telemetry_setup_delete(tsid), confirmable=True,
                                timeout=timeout)

    async def telemetry(self, body: bytes, *, tmid: int | None = None,
                        timeout: float | None = None) -> Reply:
        """PUT /tm (§8.2): pre-or-ongoing-mitigation telemetry, 2.04. Without ``tmid`` a
        new one is allocated and persisted."""
        if tmid is None:
            tmid = self.state.allocate_id("tmid")
        else:
            self.state.note_id("tmid", tmid)
        return await self._send(self.core.telemetry_put(body, tmid), confirmable=False,
                                timeout=timeout)

    async def telemetry_get(self, tmid: int | None = None, *,
                            timeout: float | None = None) -> Reply:
        return await self._send(self.core.telemetry_get(tmid), confirmable=False,
                                timeout=timeout)

    async def telemetry_delete(self, tmid: int | None = None, *,
                               timeout: float | None = None) -> Reply:
        return await self._send(self.core.telemetry_delete(tmid), confirmable=False,
                                timeout=timeout)

    async def telemetry_observe(self, tmid: int | None = None, *,
                                timeout: float | None = None) -> Observation:
        """GET /tm with Observe 0 (RFC 9244 §8.3): notifications when it changes."""
        obs = Observation(lambda: self.core.telemetry_get(tmid), None,
                          self._cancel_observation)
        await self._register(obs, timeout, initial=True)
        if not obs.ended:
            self._observations.append(obs)
        return obs

    async def heartbeat(self, *, timeout: float | None = None) -> Reply:
        """One ``PUT /hb`` now (§4.7), besides the periodic ones: 2.04 expected."""
        return await self._send(self.core.heartbeat_request(self.clock()), confirmable=False,
                                timeout=timeout, attempts=1)

    # --- internals ---------------------------------------------------------------------------

    async def _mitigation(self, build: Callable[[], DotsRequest], mid: int | None,
                          timeout: float | None) -> Reply:
        reply = await self._send(build(), confirmable=False, timeout=timeout, mid=mid)
        if reply.outcome.cuid_changed:
            # §4.4.1.1: the core took a new (UUID-based) cuid; keep it and resend once.
            log.warning("cuid collision: using cuid %s from now on", self.core.cuid)
            self.state.replace_cuid(self.derived_cuid, self.core.cuid)
            reply = await self._send(build(), confirmable=False, timeout=timeout, mid=mid)
        self._track(reply)
        return reply

    def _track(self, reply: Reply) -> None:
        """Which of our requests are active (it selects the parameter set, §4.5), and what
        conflicts teach us."""
        now = self.clock()
        method, mid = reply.request.method, reply.mid
        if method is Method.PUT and reply.ok and mid is not None:
            lifetime = next((s.lifetime for s in reply.scopes if s.lifetime is not None), None)
            self._active[mid] = None if lifetime in (None, -1) else now + float(lifetime or 0)
        elif method is Method.DELETE and reply.ok and mid is not None:
            self._active.pop(mid, None)
        conflict = reply.conflict
        if conflict is not None and conflict.conflict_cause is not ConflictCause.CUID_COLLISION:
            scope = conflict.conflict_scope
            if scope is not None and scope.mid is not None:
                self.state.note_mid(self.core, scope.mid)  # never fall behind our own mids
            if conflict.retry_timer is not None and mid is not None and not reply.ok:
                self._retry_after[mid] = now + conflict.retry_timer
        self._sync_parameters(now)
        self._arm()

    def _check_retry_timer(self, mid: int) -> None:
        not_before = self._retry_after.get(mid)
        if not_before is not None and self.clock() < not_before:
            # §4.4.1.3: the client MUST NOT resend before the retry-timer expires.
            raise ValueError(f"mid {mid} lost a conflict; its retry-timer forbids sending it "
                             f"again for {not_before - self.clock():.0f} s")

    async def _register(self, obs: Observation, timeout: float | None, *,
                        initial: bool = False) -> None:
        """Send the Observe GET. After a reconnection its answer is delivered to the
        observation as a notification (the state may have changed meanwhile)."""
        request = obs.request()

        def later(session: ClientSession, response: CoapMessage | None, reason: Failure
                  ) -> None:
            self._notification(obs, request, session, response, reason)

        reply = await self._send(request, confirmable=False, timeout=timeout, mid=obs.mid,
                                 later=later)
        assert self.session is not None
        obs.session, obs.token = self.session, reply.token
        if initial:
            obs.first = reply
            if reply.raw_code >> 5 != 2 or reply.observe is None:
                obs.end()  # refused, or the server does not observe (RFC 7641 §3.2)
        elif reply.redirect is not None and not self._closing:
            # Not followed from inside a move: the next move registers it again.
            self._orphans[obs] = reply
        else:
            obs.deliver(reply)

    def _notification(self, obs: Observation, request: DotsRequest, session: ClientSession,
                      response: CoapMessage | None, reason: Failure) -> None:
        if session is not obs.session or obs.ended:
            return
        if response is None:
            moved = self.session is not None and session is not self.session
            if reason != "closed" or not (self.reconnect or moved) or self._closing:
                obs.end()
            return  # "closed": registered again on the next session
        if redirect_in(response) is not None and not self._closing:
            # The channel follows it (``_watch``, RFC 9132 §4.6 allows a 5.03 in a
            # notification); the observation goes on wherever the client ends up.
            self._orphans[obs] = self._interpret(request, response, session.endpoint, obs.mid)
            return
        self.stats.notifications += 1
        obs.deliver(self._reply(request, response, session.endpoint, obs.mid))
        if obs.ended and obs in self._observations:
            self._observations.remove(obs)

    async def _cancel_observation(self, obs: Observation) -> None:
        if obs in self._observations:
            self._observations.remove(obs)
        session, token = obs.session, obs.token
        obs.end()
        if session is None or token is None or session.closed:
            return
        session.forget(token)
        # RFC 7641 §3.6: GET with Observe 1 and the same token ends it at the server.
        request = obs.request(observe=False)
        outcome = await self._send_once(session, coap_request(request, token), False,
                                        NON_RETRY_INTERVAL, NON_RETRY_INTERVAL + 0.5)
        if isinstance(outcome, CoapMessage):
            self._reply(request, outcome, session.endpoint, obs.mid)

    # --- hooks of the channel ----------------------------------------------------------------

    async def _after_connect(self) -> None:
        self.sid = None  # the server keeps a configuration per session (§4.5)
        if self.negotiate:
            try:
                replies = await self.negotiate_config()
                last = replies[-1]
                if last.redirect is not None:
                    # Not followed while connecting: the next request moves the channel and
                    # negotiates there.
                    log.info("session configuration redirected to %s: moving with the next "
                             "request", last.redirect.alt_server)
                elif not last.ok:
                    log.warning("session configuration refused: %s %s", last.dotted,
                                last.diagnostic)
            except NetworkError as exc:
                log.warning("session configuration failed: %s", exc)
        if self.relocated:
            await self._carry_mitigations()
        for obs in list(self._observations):
            self._orphans.pop(obs, None)
            try:
                await self._register(obs, None)
            except NetworkError as exc:
                log.warning("registering an observation again failed: %s", exc)
                obs.end()
            if obs.ended and obs in self._observations:
                self._observations.remove(obs)

    async def _carry_mitigations(self) -> None:
        """On another server: mitigations belong to the client, not the session, and the
        servers are assumed to share them (RFC 9132 §4.6, RFC 8811 §3.1). So GET ours
        first; those this server does not know are sent again with the same cuid and mid
        (remaining lifetime) instead of being recreated under new mids."""
        self._mitigating()  # drops expired requests
        mids = [mid for mid in self._scopes if mid in self._active]
        for mid in [m for m in self._scopes if m not in self._active]:
            del self._scopes[mid]
        if not mids:
            return
        endpoint = self.endpoint
        try:
            listed = await self.get()
        except NetworkError as exc:
            log.warning("listing our mitigations at %s failed: %s", endpoint, exc)
            return
        if listed.code is Code.NOT_FOUND:
            known: set[int | None] = set()
        elif listed.ok:
            known = {scope.mid for scope in listed.scopes}
        else:
            log.warning("listing our mitigations at %s failed: %s %s", endpoint,
                        listed.dotted, listed.diagnostic)
            return
        for mid in mids:
            if mid in known:
                continue
            scope = self._scopes[mid]
            expires_at = self._active.get(mid)
            if expires_at is not None:
                scope = replace(scope, lifetime=max(1, math.ceil(expires_at - self.clock())))
            log.info("mitigation cuid=%s mid=%d unknown at %s: sending it again", self.cuid,
                     mid, endpoint)
            try:
                reply = await self.mitigate(scope, mid=mid)
            except (NetworkError, ValueError) as exc:
                log.warning("sending mitigation mid=%d again failed: %s", mid, exc)
                continue
            if not reply.ok:
                log.warning("sending mitigation mid=%d again: %s %s", mid, reply.dotted,
                            reply.diagnostic)

    def _parallel_requests(self) -> list[DotsRequest]:
        """§4.7: the active mitigation requests, for a parallel session: same cuid and mid,
        the remaining lifetime (a refresh where the server has them, 2.01 where not)."""
        self._mitigating()  # drops expired requests
        now = self.clock()
        requests = []
        for mid, scope in self._scopes.items():
            if mid not in self._active:
                continue
            expires_at = self._active[mid]
            if expires_at is not None:
                scope = replace(scope, lifetime=max(1, math.ceil(expires_at - now)))
            try:
                requests.append(self.core.mitigation_request(scope, mid))
            except DotsUsageError as exc:
                log.warning("mitigation mid=%d not sent on the parallel session: %s", mid, exc)
        return requests

    def _redirect_not_followed(self, reply: Reply) -> None:
        # No move: the servers ended these observations with a 5.03; tell their readers.
        orphans, self._orphans = self._orphans, {}
        for obs, ending in orphans.items():
            obs.deliver(ending)
            if obs.ended and obs in self._observations:
                self._observations.remove(obs)

    def _session_gone(self) -> None:
        for obs in self._observations:
            obs.end()
        self._observations.clear()
        self._orphans.clear()

    def _mitigating(self) -> bool:
        now = self.clock()
        for mid, expires_at in list(self._active.items()):
            if expires_at is not None and expires_at <= now:
                del self._active[mid]
                self._scopes.pop(mid, None)
        return self.core.under_attack or bool(self._active)

    def _refresh_due_at(self) -> float | None:
        refresh_at = self.core.config.refresh_at
        if refresh_at is None or self.sid is None or self.core.under_attack or self._refreshing:
            return None  # §4.5.3: no refresh while under attack
        adopted = self._config_adopted_at or refresh_at
        return refresh_at - min(10.0, 0.1 * max(0.0, refresh_at - adopted))  # before Max-Age

    def _refresh_now(self) -> None:
        self._refreshing = True
        self._spawn(self._refresh_config())

    async def _refresh_config(self) -> None:
        session = self.session
        sent_at = self.clock()
        try:
            sid = self.sid
            if sid is None:
                return
            reply = await self.config_get(sid)  # §4.5.3: GET with the sid before Max-Age
            self.stats.config_refreshes += 1
            if reply.code is Code.NOT_FOUND:
                log.info("the server forgot sid %d: negotiating again", sid)
                await self.negotiate_config()
        except NetworkError as exc:
            self.stats.config_refresh_failures += 1
            if (session is not None and session is self.session and not session.closed
                    and not self.core.under_attack
                    and self.core.heartbeat.last_traffic_at < sent_at):
                # The CON went unanswered through all its retransmissions, or came back
                # as a Reset (RFC 7252 §4.2, §4.3: the server has no state for it), and
                # nothing else came from the server meanwhile: a server that restarted
                # lost our (D)TLS session and drops our records. Waiting for
                # missing-hb-allowed heartbeats (§4.7) would take minutes; outside an
                # attack (§4.7: never declare loss then) re-establish now.
                log.warning("session configuration refresh failed and the server has been "
                            "silent since it was sent (%s): session lost", exc)
                self._lose(f"configuration refresh unanswered: {exc}")
                return
            log.warning("session configuration refresh failed: %s", exc)
            self.core.config.refresh_at = self.clock() + 60  # later, not in a tight loop
        finally:
            self._refreshing = False
            self._arm()

