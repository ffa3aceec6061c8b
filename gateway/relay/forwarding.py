"""The relay: client mitigation requests re-originated upstream, and kept alive there.

``GatewayRelay`` sits between the downstream server role (``gateway.relay.role``) and the
upstream client (``gateway.relay.upstream``). For each mitigation request it checks what
the gateway must check itself (Hop-Limit, cuid collisions), rewrites the path (cdid), sends
it upstream on the gateway's own session and returns the upstream answer unchanged, or an
answer of its own that says it comes from the gateway.

It records every request the upstream server accepted (``gateway.dots.relay.RelayTable``,
saved in SQLite before the client's answer leaves), so that:

* on every new upstream session (failover to another server, re-establishment, restart) it
  GETs each client's mitigations there, re-PUTs the missing ones with the same cuid and mid
  and what is left of their lifetime, and sends withdrawals the old server never got;
* one upstream observation per (cdid, cuid, mid, filter) serves every downstream observer.

Downstream signal loss (RFC 9132 §4.4.1, §4.7): the upstream server cannot see it, since the
gateway's own session is alive, so the gateway activates the client's preconfigured
(``trigger-mitigation=false``) requests itself: each is replaced upstream by the same request
(same cuid and mid) with ``trigger-mitigation=true`` (DELETE, then PUT). Later refreshes from
the client are sent with ``trigger-mitigation=true`` so they match; only the client's DELETE
or the lifetime ends it, as RFC 9132 says of mitigations triggered by signal loss.

Asyncio glue; the rules are in ``gateway.dots.relay``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.client.connect import NetworkError
from gateway.client.messages import Reply
from gateway.client.redirect import redirect_in
from gateway.client.session import ClientSession
from gateway.coap.errors import BadOptionError
from gateway.coap.message import CoapMessage
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code, Method
from gateway.dots.errors import MethodNotAllowed, MissingAttribute
from gateway.dots.message import DotsRequest, DotsResponse, Requester
from gateway.dots.model import Scope
from gateway.dots.relay import (
    DEFAULT_HOP_LIMIT,
    Domain,
    RelayedMitigation,
    RelayTable,
    forward_hop_limit,
    loop_report,
    upstream_path,
    with_scope_changes,
)
from gateway.dots.uri import DotsPath, Resource, build_path
from gateway.dots.validate import (
    decode_request_body,
    is_efficacy_update,
    validate_mitigation_request,
)
from gateway.relay.store import RelayDatabase
from gateway.relay.upstream import UpstreamBusy, UpstreamClient

log = logging.getLogger(__name__)

#: Max-Age of the gateway's own 5.03 when no upstream server answers: retry soon.
RETRY_AFTER = 5
#: Why the gateway answers itself when no upstream answer came.
NO_ANSWER = "no upstream DOTS server answered"
#: Concurrent requests one reconciliation sends upstream (bounded fan-out).
RECONCILE_PARALLELISM = 16


@dataclass(frozen=True, slots=True)
class RelaySettings:
    domain: Domain = Domain.SERVER
    insert_cdid: bool = True  # server-domain gateways SHOULD (RFC 9132 §4.4.1.2)
    hop_limit: int = DEFAULT_HOP_LIMIT
    #: How this gateway names itself in 5.08 loop reports.
    identity: str = "dots-gateway"
    request_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked downstream request, ready to go upstream."""

    requester: Requester
    path: DotsPath
    request: DotsRequest  # as it goes upstream (path, Hop-Limit rewritten)
    #: A new request or refresh (PUT, not an efficacy update): its validated scope.
    scope: Scope | None = None

    @property
    def scope_trigger(self) -> bool | None:
        return None if self.scope is None else self.scope.triggers_immediately

    @property
    def lifetime(self) -> int | None:
        return None if self.scope is None else self.scope.lifetime

    @property
    def cuid(self) -> str:
        assert self.path.cuid is not None
        return self.path.cuid


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


class GatewayRelay:
    """See the module docstring. ``notify(subscribers)`` is the server role's hook for
    passing a new upstream notification on to downstream observers."""

    def __init__(self, settings: RelaySettings, table: RelayTable,
                 database: RelayDatabase | None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.table = table
        self.database = database
        self.wall_clock = wall_clock
        self.upstream: UpstreamClient | None = None
        #: The role's hook: (observers, notification, whether it ends the observation).
        self.notify: Callable[[set[tuple[int, bytes]], DotsResponse, bool], None] = (
            lambda _subs, _response, _ended: None)
        self.observations: dict[ObservationKey, UpstreamObservation] = {}
        #: Relayed requests by upstream answer (code in dotted form, or "no-answer").
        self.relayed: dict[str, int] = {}
        self.reconciliations = 0
        self.reinstalled = 0
        #: (cuid, mid) of PUTs waiting for their upstream answer: a reconciliation must
        #: neither re-send nor forget them.
        self._in_flight: set[tuple[str, int]] = set()
        self._reconcile_task: asyncio.Task[None] | None = None
        self._reconcile_again = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- checks that are the gateway's own ----------------------------------------------------

    def prepare(self, requester: Requester, path: DotsPath, request: DotsRequest) -> Prepared:
        """Check a downstream mitigate request; raises ``DotsProtocolError`` with the answer
        (``HopLimitReached`` for 5.08)."""
        assert path.resource is Resource.MITIGATE and path.cuid is not None
        hop_limit = forward_hop_limit(request.hop_limit, self.settings.hop_limit)
        if request.method not in (Method.GET, Method.PUT, Method.DELETE):
            raise MethodNotAllowed(f"{request.method.name} is not used on mitigate "
                                   "(GET, PUT and DELETE are)")
        if request.method is not Method.GET and path.mid is None:
            raise MissingAttribute(f"{request.method.name} on mitigate needs the 'mid' "
                                   "Uri-Path parameter")
        self.table.check_owner(path.cuid, requester.credential_id)
        scope = None
        if request.method is Method.PUT:
            efficacy = is_efficacy_update(request)
            checked = validate_mitigation_request(decode_request_body(request),
                                                  efficacy_update=efficacy)
            scope = None if efficacy else checked
        # Observe is per hop: the relay registers upstream observations itself.
        upstream = replace(request, path=upstream_path(path, self._cdid(requester, path)),
                           hop_limit=hop_limit, requester=None, observe=None)
        return Prepared(requester, path, upstream, scope)

    def _cdid(self, requester: Requester, path: DotsPath) -> str | None:
        if self.settings.domain is Domain.CLIENT or not self.settings.insert_cdid:
            return None
        if requester.trusted_gateway and path.cdid is not None:
            # A server-domain gateway in front of us already inserted it: only one cdid
            # travels, the first one's (RFC 9132 §4.4.1.2).
            return path.cdid
        return requester.credential_id  # App. B: the hash of the client's credential

    # --- relaying ----------------------------------------------------------------------------

    async def relay(self, prepared: Prepared) -> DotsResponse:
        """Send one prepared request upstream; the answer for the downstream client."""
        method = prepared.request.method
        if method is Method.PUT and prepared.scope_trigger is not None:
            return await self._put(prepared)
        if method is Method.DELETE:
            return await self._delete(prepared)
        reply = await self._forward(prepared.request, prepared.path.mid)
        return self._answer(reply)

    async def _put(self, prepared: Prepared) -> DotsResponse:
        assert prepared.path.mid is not None and prepared.lifetime is not None
        cuid, mid = prepared.cuid, prepared.path.mid
        record = self.table.get(cuid, mid)
        new = record is None or record.withdrawing
        if record is None or record.withdrawing:
            record = RelayedMitigation(
                cuid, mid, prepared.requester.credential_id,
                _cdid_of(prepared.request.path), prepared.request.payload,
                bool(prepared.scope_trigger), prepared.lifetime)
            self.table.put(record)
            self._save()  # on record before the request leaves (restart safety)
        request = prepared.request
        if record.activated_by_loss:
            # Upstream it is an immediate request now; the client's refresh must match.
            request = replace(request, payload=with_scope_changes(request.payload,
                                                                  trigger_mitigation=True))
        self._in_flight.add(record.key)
        try:
            reply = await self._forward(request, mid)
        finally:
            self._in_flight.discard(record.key)
        if self.table.get(cuid, mid) is not record:
            return self._answer(reply)  # withdrawn meanwhile: the DELETE decided
        if isinstance(reply, Reply) and reply.ok:
            granted = next((s.lifetime for s in reply.scopes if s.lifetime is not None), None)
            record.body = prepared.request.payload
            record.lifetime = prepared.lifetime
            self.table.accepted(record, reply.endpoint.uri, granted, self.wall_clock())
            self._save()
        elif new:
            self.table.remove(cuid, mid)
            self._save()
        return self._answer(reply)

    async def _delete(self, prepared: Prepared) -> DotsResponse:
        assert prepared.path.mid is not None
        cuid, mid = prepared.cuid, prepared.path.mid
        record = self.table.get(cuid, mid)
        if record is not None:
            record.withdrawing = True  # whatever happens next, never re-install it
            self.table.touch(record)
            self._save()
        reply = await self._forward(prepared.request, mid)
        if not isinstance(reply, Reply):
            if record is None:
                return self._answer(reply)
            # Accepted by the gateway: the DELETE goes upstream with the next session
            # (RFC 9132 §4.4.4: a DELETE is always answered 2.02).
            return DotsResponse(Code.DELETED)
        self.table.remove(cuid, mid)
        self._save()
        return self._answer(reply)

    async def _forward(self, request: DotsRequest, mid: int | None) -> Reply | str:
        """The upstream answer, or why there is none (for the gateway's own 5.03)."""
        upstream = self.upstream
        if upstream is None:
            return NO_ANSWER
        sent_at = upstream.clock()
        try:
            reply = await upstream.forward(request, mid=mid,
                                           timeout=self.settings.request_timeout)
        except UpstreamBusy as exc:
            log.warning("relayed %s: %s", request.method.name, exc)
            self._count("busy")
            return "the gateway is busy"
        except NetworkError as exc:
            log.warning("relayed %s %s: no upstream answer (%s)", request.method.name,
                        "/".join(request.path[2:]), exc)
            self._count("no-answer")
            if upstream.connected and upstream.core.heartbeat.last_traffic_at < sent_at:
                # Silent since the request left (not merely slow to answer this one): the
                # heartbeats would say the same, later.
                upstream.fail_over(f"no answer to a relayed request: {exc}")
            return NO_ANSWER
        self._count(reply.dotted)
        if reply.raw_code == int(Code.SERVICE_UNAVAILABLE) and reply.redirect is None:
            # 5.03 without a redirect: this server cannot serve us now; try the next one
            # for later requests (this answer still goes back, with its Max-Age).
            upstream.fail_over("5.03 from the upstream server")
        return reply

    def _answer(self, reply: Reply | str | None) -> DotsResponse:
        if reply is None:
            return self._unreachable()
        if isinstance(reply, str):
            return self._unreachable(reply)
        response = reply.response
        if reply.raw_code == int(Code.HOP_LIMIT_REACHED):
            return loop_report(self.settings.identity, response)
        if reply.redirect is not None:
            # A redirect is for the gateway's own session (it follows it); a client of the
            # gateway must not be sent to a server that knows nothing of it.
            return self._unreachable("the upstream server redirected the gateway")
        if response.code.value != reply.raw_code:
            return DotsResponse(Code.BAD_GATEWAY, b"gateway: the upstream server answered "
                                b"with an unknown response code", 0)
        return response

    def _unreachable(self, why: str = NO_ANSWER) -> DotsResponse:
        return DotsResponse(Code.SERVICE_UNAVAILABLE, f"gateway: {why}; retry".encode(), 0,
                            RETRY_AFTER)

    def hop_limit_report(self) -> DotsResponse:
        return loop_report(self.settings.identity)

    # --- observations ------------------------------------------------------------------------

    async def subscribe(self, prepared: Prepared, subscriber: tuple[int, bytes]
                        ) -> DotsResponse:
        """A downstream Observe registration: joins the upstream observation of the same
        thing, creating it if needed. Returns the answer to the registration."""
        request = replace(prepared.request, observe=0, hop_limit=None)
        key: ObservationKey = (_cdid_of(request.path), prepared.cuid, prepared.path.mid,
                               request.query)
        obs = self.observations.get(key)
        if obs is not None and obs.last is not None and obs.session is not None \
                and not obs.session.closed:
            obs.subscribers.add(subscriber)
            return obs.last
        if obs is None:
            obs = UpstreamObservation(key, request, prepared.path.mid)
            self.observations[key] = obs
        obs.subscribers.add(subscriber)
        reply = await self._register(obs)
        response = self._answer(reply)
        if reply is None or not reply.ok or reply.observe is None:
            obs.subscribers.discard(subscriber)
            if not obs.subscribers:
                self._drop_observation(obs)
        return response

    async def _register(self, obs: UpstreamObservation) -> Reply | None:
        upstream = self.upstream
        if upstream is None:
            return None

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
        # RFC 7641 §3.2: without Observe the upstream observation ended; observers learn so.
        self.notify(set(obs.subscribers), response, ended)
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
        self.notify(set(obs.subscribers), reply.response, not reply.ok)
        if not reply.ok:
            self._drop_observation(obs, cancel=False)

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

    # --- upstream sessions -------------------------------------------------------------------

    async def upstream_ready(self) -> None:
        """A new upstream session: re-install what the gateway answers for, re-register
        the observations. Runs once at a time; a session arriving meanwhile runs it again."""
        if self._reconcile_task is not None and not self._reconcile_task.done():
            self._reconcile_again = True
            return
        self._reconcile_task = asyncio.current_task()
        try:
            while True:
                self._reconcile_again = False
                await self._reconcile()
                if not self._reconcile_again:
                    break
        finally:
            self._reconcile_task = None

    async def _reconcile(self) -> None:
        upstream = self.upstream
        if upstream is None or not upstream.connected:
            return
        self.reconciliations += 1
        name = upstream.name
        self.table.expire(self.wall_clock())
        self._save()
        cuids = self.table.cuids()
        log.info("upstream %s ready: checking %d clients' mitigations, %d observations",
                 name, len(cuids), len(self.observations))
        limit = asyncio.Semaphore(RECONCILE_PARALLELISM)

        async def one(cuid: str) -> None:
            async with limit:
                try:
                    await self._reconcile_client(cuid)
                except NetworkError as exc:
                    log.warning("re-installing cuid=%s on %s failed: %s", cuid, name, exc)

        await asyncio.gather(*(one(cuid) for cuid in cuids))
        for obs in list(self.observations.values()):
            if obs.session is not None and obs.session is upstream.session \
                    and not obs.session.closed:
                continue  # registered on this very session already (raced with us)
            reply = await self._register(obs)
            if reply is not None:  # the state may have moved meanwhile
                ended = reply.observe is None or not reply.ok
                self.notify(set(obs.subscribers), reply.response, ended)
                if ended:
                    self._drop_observation(obs, cancel=False)
        self._save()

    async def _reconcile_client(self, cuid: str) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        for record in [r for r in self.table.of_cuid(cuid) if r.withdrawing]:
            path = build_path(Resource.MITIGATE, cdid=record.cdid, cuid=cuid, mid=record.mid)
            await upstream.forward(DotsRequest(Method.DELETE, path), mid=record.mid,
                                   timeout=self.settings.request_timeout)
            self.table.remove(cuid, record.mid)
        live = self.table.of_cuid(cuid)
        if not live:
            return
        present = await self._present(cuid, live[0].cdid)
        reinstalled = False
        now = self.wall_clock()
        for record in live:
            if record.key in self._in_flight:
                continue  # its own answer will say
            if record.mid in present:
                self.table.accepted(record, upstream.name or "", present[record.mid], now)
            elif not record.confirmed:
                # Never answered to the client (the gateway stopped in between): the client
                # sends it again; do not invent an acceptance.
                self.table.remove(cuid, record.mid)
            else:
                await self._reinstall(record, now)
                reinstalled = True
        if reinstalled:
            # Requests with higher mids replace overlapping lower ones upstream (§4.4.1):
            # forget what the server itself removed.
            present = await self._present(cuid, live[0].cdid)
            for record in self.table.of_cuid(cuid):
                if record.confirmed and record.mid not in present \
                        and record.key not in self._in_flight:
                    log.info("cuid=%s mid=%d was superseded upstream", cuid, record.mid)
                    self.table.remove(cuid, record.mid)
        self._save()

    async def _present(self, cuid: str, cdid: str | None) -> dict[int, int | None]:
        """mid -> remaining lifetime of the client's requests the upstream server has."""
        upstream = self.upstream
        assert upstream is not None
        path = build_path(Resource.MITIGATE, cdid=cdid, cuid=cuid)
        reply = await upstream.forward(DotsRequest(Method.GET, path), mid=None,
                                       timeout=self.settings.request_timeout)
        if not reply.ok:
            return {}
        return {s.mid: s.lifetime for s in reply.scopes if s.mid is not None}

    async def _reinstall(self, record: RelayedMitigation, now: float) -> None:
        upstream = self.upstream
        assert upstream is not None
        path = build_path(Resource.MITIGATE, cdid=record.cdid, cuid=record.cuid, mid=record.mid)
        request = DotsRequest(Method.PUT, path, payload=record.resend_body(now),
                              content_format=CONTENT_FORMAT_DOTS_CBOR)
        reply = await upstream.forward(request, mid=record.mid,
                                       timeout=self.settings.request_timeout)
        if reply.ok:
            granted = next((s.lifetime for s in reply.scopes if s.lifetime is not None), None)
            self.table.accepted(record, reply.endpoint.uri, granted, now)
            self.reinstalled += 1
            log.info("re-installed cuid=%s mid=%d on %s", record.cuid, record.mid,
                     reply.endpoint.uri)
        else:
            log.warning("upstream %s refused to re-install cuid=%s mid=%d: %s %s",
                        reply.endpoint.uri, record.cuid, record.mid, reply.dotted,
                        reply.diagnostic)
            self.table.remove(record.cuid, record.mid)

    # --- downstream signal loss --------------------------------------------------------------

    def client_lost(self, cuids: frozenset[str]) -> None:
        """A downstream session went silent: activate its preconfigured requests upstream
        (see the module docstring for why this way)."""
        for cuid in cuids:
            for record in self.table.of_cuid(cuid):
                if (record.confirmed and not record.trigger_mitigation
                        and not record.withdrawing and not record.activated_by_loss):
                    record.activated_by_loss = True
                    self.table.touch(record)
                    self._spawn(self._activate(record))
        self._save()

    async def _activate(self, record: RelayedMitigation) -> None:
        upstream = self.upstream
        if upstream is None:
            return  # installed as immediate by the next reconciliation (resend_body)
        path = build_path(Resource.MITIGATE, cdid=record.cdid, cuid=record.cuid, mid=record.mid)
        try:
            await upstream.forward(DotsRequest(Method.DELETE, path), mid=record.mid,
                                   timeout=self.settings.request_timeout)
            await self._reinstall(record, self.wall_clock())
        except NetworkError as exc:
            log.warning("activating preconfigured cuid=%s mid=%d upstream failed (%s); the "
                        "next upstream session installs it", record.cuid, record.mid, exc)
        log.warning("signal lost with cuid=%s: preconfigured mid=%d activated upstream",
                    record.cuid, record.mid)
        self._save()

    # --- housekeeping ------------------------------------------------------------------------

    def tick(self) -> None:
        """Forget requests whose lifetime ended (the upstream server forgets them too)."""
        if self.table.expire(self.wall_clock()):
            self._save()

    def mitigating(self) -> bool:
        return self.table.active(self.wall_clock())

    def _save(self) -> None:
        if self.database is not None:
            self.database.sync(self.table)

    def _count(self, label: str) -> None:
        self.relayed[label] = self.relayed.get(label, 0) + 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("relay task failed", exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._save()


def _cdid_of(path: tuple[str, ...]) -> str | None:
    for segment in path:
        if segment.startswith("cdid="):
            return segment[5:]
    return None


def _code(raw: int) -> Code:
    try:
        return Code(raw)
    except ValueError:
        return Code.BAD_GATEWAY

