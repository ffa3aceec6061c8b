"""The relay: client mitigation requests re-originated upstream, one at a time.

``GatewayRelay`` sits between the downstream server role (``gateway.relay.role``) and the
upstream client (``gateway.relay.upstream``). For each mitigation request it checks what
the gateway must check itself (Hop-Limit, cuid collisions), rewrites the path (cdid), sends
it upstream on the gateway's own session and returns the upstream answer unchanged, or an
answer of its own that says it comes from the gateway.

It records every request the upstream server accepted (``gateway.dots.relay.RelayTable``,
saved in SQLite before the client's answer leaves), so that on every new upstream session
(failover to another server, re-establishment, restart) what the gateway answers for is
re-installed there (``Reinstallation``, ``gateway.relay.reinstall``). One upstream
observation per (cdid, cuid, mid, filter) serves every downstream observer
(``SharedObservations``, ``gateway.relay.observation``). This module owns the per-request
forwarding and composes the two.

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
from dataclasses import dataclass, replace
from typing import Any

from gateway.client.connect import Endpoint, NetworkError
from gateway.client.messages import Reply
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, CONTENT_FORMAT_TEXT, Code, Method
from gateway.dots.errors import MethodNotAllowed, MissingAttribute
from gateway.dots.message import DotsRequest, DotsResponse, Requester
from gateway.dots.model import Scope
from gateway.dots.relay import (
    DEFAULT_HOP_LIMIT,
    RELAYED,
    Domain,
    RelayedMitigation,
    RelayTable,
    carry_acl_list_body,
    forward_hop_limit,
    loop_report,
    upstream_path,
    with_scope_changes,
)
from gateway.dots.telemetry import SETUP_MESSAGE, TELEMETRY_MESSAGE, decode_body
from gateway.dots.uri import DotsPath, Resource, build_path
from gateway.dots.validate import (
    decode_request_body,
    is_efficacy_update,
    validate_mitigation_request,
)
from gateway.eventlog import log_event
from gateway.relay.observation import (
    ObservationKey,
    SharedObservations,
    UpstreamObservation,
    cdid_of,
)
from gateway.relay.reinstall import Reinstallation
from gateway.relay.store import RelayDatabase, RelayDatabaseError
from gateway.relay.upstream import UpstreamBusy, UpstreamClient
from gateway.server.role import stop_unsynced

log = logging.getLogger(__name__)

#: Max-Age of the gateway's own 5.03 when no upstream server answers: retry soon.
RETRY_AFTER = 5
#: Why the gateway answers itself when no upstream answer came.
NO_ANSWER = "no upstream DOTS server answered"
#: Why the gateway answers itself when its relay state could not be written.
NOT_SAVED = "the gateway cannot save mitigation requests now (its state could not be written)"


@dataclass(frozen=True, slots=True)
class RelaySettings:
    domain: Domain = Domain.SERVER
    insert_cdid: bool = True  # server-domain gateways SHOULD (RFC 9132 §4.4.1.2)
    hop_limit: int = DEFAULT_HOP_LIMIT
    #: How this gateway names itself in 5.08 loop reports.
    identity: str = "dots-gateway"
    request_timeout: float = 10.0
    #: Seconds before an upstream list that could not be read is asked for again (doubling).
    recheck_after: float = 5.0


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


class GatewayRelay(SharedObservations, Reinstallation):
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
        #: Requests answered 5.03 because the relay table could not be saved.
        self.unsaved_requests = 0
        #: Called when an fsync failed (``_durable``); stops the daemon as the server does.
        self.on_unsynced: Callable[[str], None] = stop_unsynced
        #: Upstream answers that said nothing of what the server has (see ``reinstall``).
        self.unreadable = 0
        #: cuid -> attempts so far of asking an unreadable list again.
        self._rechecks: dict[str, int] = {}
        #: (cuid, mid) of PUTs waiting for their upstream answer: a reconciliation must
        #: neither re-send nor forget them.
        self._in_flight: set[tuple[str, int]] = set()
        self._reconcile_task: asyncio.Task[None] | None = None
        self._reconcile_again = False
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Configured ``[[upstream]] name`` by server spec: what metrics and logs call an
        #: upstream (a discovered one goes by its address).
        self.upstream_names: dict[Any, str] = {}
        #: ``(upstream name, seconds)`` for each upstream answer to a relayed request (the
        #: daemon feeds the round-trip histogram with it).
        self.observe_upstream: Callable[[str, float], None] = lambda _name, _seconds: None

    def upstream_name(self, upstream: UpstreamClient | None = None) -> str | None:
        """The configured name of the upstream server in use (its address when it was
        discovered); None when there is none."""
        upstream = upstream or self.upstream
        spec = upstream.current_spec() if upstream is not None else None
        return None if spec is None else spec_label(spec, self.upstream_names)

    # --- checks that are the gateway's own ----------------------------------------------------

    def prepare(self, requester: Requester, path: DotsPath, request: DotsRequest) -> Prepared:
        """Check a downstream mitigate or telemetry request; raises ``DotsProtocolError``
        with the answer (``HopLimitReached`` for 5.08)."""
        assert path.resource in RELAYED and path.cuid is not None
        hop_limit = forward_hop_limit(request.hop_limit, self.settings.hop_limit)
        if path.resource is not Resource.MITIGATE:
            return self._prepare_telemetry(requester, path, request, hop_limit)
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

    def _prepare_telemetry(self, requester: Requester, path: DotsPath, request: DotsRequest,
                           hop_limit: int) -> Prepared:
        """RFC 9244 §5.2: relayed with the cdid like mitigate; the state is the upstream
        server's (the gateway keeps none). A body that is not a telemetry message at all is
        refused here; whether its values are acceptable is the upstream server's call."""
        name = "tsid" if path.resource is Resource.TM_SETUP else "tmid"
        if request.method not in (Method.GET, Method.PUT, Method.DELETE):
            raise MethodNotAllowed(f"{request.method.name} is not used on "
                                   f"{path.resource.value} (GET, PUT and DELETE are)")
        if request.method is Method.PUT:
            if (path.tsid if name == "tsid" else path.tmid) is None:
                raise MissingAttribute(f"PUT on {path.resource.value} needs the '{name}' "
                                       "Uri-Path parameter (RFC 9244 §7.1.2, §8.2)")
            decode_body(request.payload, SETUP_MESSAGE if name == "tsid"
                        else TELEMETRY_MESSAGE)
        self.table.check_owner(path.cuid or "", requester.credential_id)
        upstream = replace(request, path=upstream_path(path, self._cdid(requester, path)),
                           hop_limit=hop_limit, requester=None, observe=None)
        return Prepared(requester, path, upstream)

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
        if prepared.path.resource is not Resource.MITIGATE:
            # Telemetry: forwarded as it is; tm-setup is Confirmable (RFC 9244 §7).
            reply = await self._forward(prepared.request, None,
                                        confirmable=prepared.path.resource is Resource.TM_SETUP)
            return self._answer(reply)
        if method is Method.PUT and prepared.scope_trigger is not None:
            return await self._put(prepared)
        if method is Method.DELETE:
            return await self._delete(prepared)
        reply = await self._forward(prepared.request, prepared.path.mid)
        if method is Method.GET and isinstance(reply, Reply) and reply.ok:
            self.table.note_statuses(prepared.cuid, reply.message)
        return self._answer(reply)

    async def _put(self, prepared: Prepared) -> DotsResponse:
        assert prepared.path.mid is not None and prepared.lifetime is not None
        cuid, mid = prepared.cuid, prepared.path.mid
        record = self.table.get(cuid, mid)
        new = record is None or record.withdrawing
        # In flight from now on: a reconciliation while this request waits for its fsync
        # or its upstream answer must neither forget nor re-send it.
        self._in_flight.add((cuid, mid))
        try:
            if record is None or record.withdrawing:
                replaced = record
                record = RelayedMitigation(
                    cuid, mid, prepared.requester.credential_id,
                    cdid_of(prepared.request.path), prepared.request.payload,
                    bool(prepared.scope_trigger), prepared.lifetime)
                self.table.put(record)
                # On disk before the request leaves (restart safety); if it cannot be, the
                # request does not leave: nothing happened, the client retries.
                if not await self._persist():
                    if self.table.get(cuid, mid) is record:
                        if replaced is not None:
                            self.table.put(replaced)
                        else:
                            self.table.remove(cuid, mid)
                    return self._not_saved(prepared)
            request = prepared.request
            if record.activated_by_loss:
                # Upstream it is an immediate request now; the client's refresh must match.
                request = replace(request, payload=with_scope_changes(
                    request.payload, trigger_mitigation=True))
            reply = await self._forward(request, mid)
        finally:
            self._in_flight.discard((cuid, mid))
        if self.table.get(cuid, mid) is not record:
            return self._answer(reply)  # withdrawn meanwhile: the DELETE decided
        if isinstance(reply, Reply) and reply.ok:
            granted = next((s.lifetime for s in reply.scopes if s.lifetime is not None), None)
            record.body = carry_acl_list_body(record.body, prepared.request.payload)
            record.lifetime = prepared.lifetime
            self.table.accepted(record, reply.endpoint.uri, granted, self.wall_clock())
            if not await self._persist():
                # Not on disk as accepted: after a crash the gateway would not re-install
                # it, so the client must not be told it is. A new request is withdrawn
                # upstream again (a refresh's earlier state is what the disk has).
                if new:
                    record.withdrawing = True
                    self.table.touch(record)
                    self._spawn(self._withdraw(record))
                return self._not_saved(prepared)
        elif new:
            self.table.remove(cuid, mid)
            self._save()  # nothing promised depends on it: the next fsync covers it
        return self._answer(reply)

    async def _delete(self, prepared: Prepared) -> DotsResponse:
        assert prepared.path.mid is not None
        cuid, mid = prepared.cuid, prepared.path.mid
        record = self.table.get(cuid, mid)
        if record is not None:
            was_withdrawing = record.withdrawing
            record.withdrawing = True  # whatever happens next, never re-install it
            self.table.touch(record)
            # A DELETE is a write: on disk before it goes upstream (a crash after the upstream
            # removal must not re-install it) and before it is answered.
            if not await self._persist():
                record.withdrawing = was_withdrawing
                self.table.touch(record)
                return self._not_saved(prepared)
        reply = await self._forward(prepared.request, mid)
        if not isinstance(reply, Reply):
            if record is None:
                return self._answer(reply)
            # Accepted by the gateway: the DELETE goes upstream with the next session
            # (RFC 9132 §4.4.4: a DELETE is always answered 2.02).
            return DotsResponse(Code.DELETED)
        self.table.remove(cuid, mid)
        # Lost in a crash, the record stays withdrawing: the next session DELETEs it again.
        self._save()
        return self._answer(reply)

    async def _forward(self, request: DotsRequest, mid: int | None, *,
                       confirmable: bool = False) -> Reply | str:
        """The upstream answer, or why there is none (for the gateway's own 5.03)."""
        upstream = self.upstream
        if upstream is None:
            return NO_ANSWER
        if not upstream.session_expected:
            # No session and none being established (the back-off holds the next attempt
            # back): the gateway knows now that nothing will answer, so the client gets the
            # 5.03 now rather than after a request timeout (issue 20 §4).
            self._count("no-session")
            why = upstream.last_error or "not established yet"
            log.warning("relayed %s %s: no upstream session (%s)", request.method.name,
                        "/".join(request.path[2:]), why)
            return f"no upstream session ({why})"
        sent_at = upstream.clock()
        bound = self.settings.request_timeout
        try:
            # The bound holds even while a session is being established for this request
            # (handshakes have their own timeouts, which could add up past it).
            reply = await asyncio.wait_for(
                upstream.forward(request, mid=mid, timeout=bound, confirmable=confirmable),
                bound + 1.0)
        except TimeoutError:
            log.warning("relayed %s %s: no upstream answer within %g s",
                        request.method.name, "/".join(request.path[2:]), bound)
            self._count("no-answer")
            return NO_ANSWER
        except UpstreamBusy as exc:
            log.warning("relayed %s: %s", request.method.name, exc)
            self._count("busy")
            return "the gateway is busy"
        except NetworkError as exc:
            log_event(log, logging.WARNING, "relay.no_answer", "no upstream answer to a "
                      "relayed request", upstream=self.upstream_name(upstream),
                      method=request.method.name, path="/" + "/".join(request.path[2:3]),
                      reason=str(exc))
            self._count("no-answer")
            if upstream.connected and upstream.core.heartbeat.last_traffic_at < sent_at:
                # Silent since the request left (not merely slow to answer this one): the
                # heartbeats would say the same, later.
                upstream.fail_over(f"no answer to a relayed request: {exc}")
            return NO_ANSWER
        self._count(reply.dotted)
        # A redirect's alternate server is in no list: it goes by its URI.
        self.observe_upstream(self.upstream_name(upstream) or reply.endpoint.uri,
                              upstream.clock() - sent_at)
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
        return self._from_upstream(reply.endpoint, response)

    def _from_upstream(self, endpoint: Endpoint, response: DotsResponse) -> DotsResponse:
        """An upstream error says which hop produced it: its diagnostic is prefixed with
        ``upstream <name> (<uri>): `` (issue 20 §2: a client of the gateway must tell the
        provider's refusal from the gateway's, whose diagnostics start with ``gateway:``).
        Success bodies and RFC-defined CBOR bodies (4.09 conflict information) travel
        unchanged."""
        if response.code.is_success or response.content_format == CONTENT_FORMAT_DOTS_CBOR:
            return response
        upstream = self.upstream
        hop = upstream.label(endpoint) if upstream is not None else endpoint.uri
        text = response.payload.decode("utf-8", "replace")
        prefix = f"upstream {hop}: "
        # RFC 7252 §5.5.2: a diagnostic payload is UTF-8 text; its Content-Format stays.
        return replace(response, payload=(prefix + (text or response.code.dotted)).encode(),
                       content_format=response.content_format
                       if response.content_format == CONTENT_FORMAT_TEXT else None)

    async def _withdraw(self, record: RelayedMitigation) -> None:
        """Take back upstream a request the gateway could not record as accepted."""
        upstream = self.upstream
        if upstream is None:
            return  # the next reconciliation sends the DELETE (the record is withdrawing)
        path = build_path(Resource.MITIGATE, cdid=record.cdid, cuid=record.cuid, mid=record.mid)
        try:
            await upstream.forward(DotsRequest(Method.DELETE, path), mid=record.mid,
                                   timeout=self.settings.request_timeout)
        except NetworkError as exc:
            log.warning("withdrawing unsaved cuid=%s mid=%d upstream failed (%s); the next "
                        "upstream session does", record.cuid, record.mid, exc)
            return
        if self.table.get(record.cuid, record.mid) is record:
            self.table.remove(record.cuid, record.mid)
        self._save(background=True)

    def _not_saved(self, prepared: Prepared) -> DotsResponse:
        """5.03 + Max-Age for a change the relay table could not save (RFC 9132 §4.4.1:
        the gateway cannot act now; nothing was changed)."""
        self.unsaved_requests += 1
        log.warning("relayed %s cuid=%s mid=%s refused with 5.03: the relay state could not "
                    "be saved", prepared.request.method.name, prepared.cuid,
                    prepared.path.mid)
        return self._unreachable(NOT_SAVED)

    def _unreachable(self, why: str = NO_ANSWER) -> DotsResponse:
        return DotsResponse(Code.SERVICE_UNAVAILABLE, f"gateway: {why}; retry".encode(), 0,
                            RETRY_AFTER)

    def hop_limit_report(self) -> DotsResponse:
        return loop_report(self.settings.identity)

    # --- housekeeping ------------------------------------------------------------------------

    def tick(self) -> None:
        """Forget requests whose lifetime ended (the upstream server forgets them too), and
        retry a failed save when the back-off allows."""
        expired = self.table.expire(self.wall_clock())
        if expired or (self.database is not None and self.database.pending):
            self._save(background=True)

    def mitigating(self) -> bool:
        return self.table.active(self.wall_clock())

    def _save(self, *, background: bool = False) -> bool:
        """Write the table's changes; True once on disk (or when nothing is saved)."""
        if self.database is None:
            return True
        return self.database.sync(self.table, background=background)

    async def _persist(self) -> bool:
        """``_save``, then wait for its fsync (shared with concurrent requests); True once
        the changes are durable: what depends on them may leave."""
        return self._save() and await self._durable()

    async def _durable(self) -> bool:
        """Every save so far is on disk. A failed fsync stops the daemon (``on_unsynced``):
        the commits it should have covered may be lost and cannot be rolled back."""
        if self.database is None or not self.database.unsynced:
            return True
        try:
            await self.database.durable()
        except RelayDatabaseError as exc:
            self.on_unsynced(str(exc))
            return False  # only where on_unsynced returns (tests): nothing is acknowledged
        return True

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


def spec_label(spec: Any, names: dict[Any, str]) -> str:
    """``names[spec]``, else ``host:port`` (``[v6]:port``)."""
    name = names.get(spec)
    if name:
        return name
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return f"{host}:{spec.port}"
