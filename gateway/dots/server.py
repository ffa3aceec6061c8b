"""The DOTS server core: routes decoded requests to the store, config and heartbeat machines.

``DotsServerCore.receive_request(session, request, now)`` is the one boundary where
``DotsProtocolError`` becomes a response; anything else raised here is a bug and is left to
the transport's boundary (logged, counted, answered 5.00). Sessions are per signal channel;
the mitigation store is shared, because mitigations belong to clients, not sessions.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from gateway.dots.authz import Authorizer
from gateway.dots.codec import encode_message
from gateway.dots.codes import Code, Method
from gateway.dots.errors import (
    DotsProtocolError,
    MethodNotAllowed,
    MissingAttribute,
    ServiceUnavailable,
)
from gateway.dots.filters import (
    AclActivation,
    AclActivationFailed,
    AclCatalog,
    NullAclCatalog,
    acl_list_of,
    active_acls,
    check_known,
    with_acl_list,
)
from gateway.dots.heartbeat import HeartbeatMonitor, Role, SendHeartbeat, SignalLost
from gateway.dots.keys import K
from gateway.dots.message import DotsRequest, DotsResponse, Requester
from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import ApplyMitigation, Owner, StoreOutput, UpdateFilters
from gateway.dots.session_config import ConfigLimits, ServerSessionConfig
from gateway.dots.telemetry import Change, Plan, TelemetryStore
from gateway.dots.uri import DotsPath, Resource, parse_path, parse_query
from gateway.dots.validate import (
    decode_request_body,
    heartbeat_body,
    is_efficacy_update,
    refuse_required_keys_not_acted_on,
    validate_config_request,
    validate_mitigation_request,
)
from gateway.eventlog import log_event

log = logging.getLogger(__name__)
_session_ids = itertools.count(1)
# Members as plain globals for the per-request path: in Python 3.11 every ``Resource.X``
# goes through EnumType.__getattr__'s slot (~0.1-0.2 us each, measured).
_MITIGATE, _CONFIG, _TELEMETRY = Resource.MITIGATE, Resource.CONFIG, (Resource.TM_SETUP,
                                                                      Resource.TM)
_PUT = Method.PUT
_HEARTBEAT_ANSWER = DotsResponse(Code.CHANGED)

#: Max-Age (seconds) of the 5.03 for a change that could not be saved: retry after this.
SAVE_RETRY_AFTER = 5
#: Comprehension-required keys of a mitigation request's scope this core acts on.
_ACTED_ON = frozenset({int(K.CONTROL_ACL_LIST)})  # RFC 9133


@dataclass(frozen=True, slots=True)
class SendSessionHeartbeat:
    """Command: send a server heartbeat on this session."""

    session_id: int
    peer_hb_status: bool


@dataclass(frozen=True, slots=True)
class SessionLost:
    """Event: the session's client went silent; its preconfigured requests were armed."""

    session_id: int
    cuids: frozenset[str]


@dataclass(frozen=True, slots=True)
class TelemetryChanged:
    """Event: a client's pre-or-ongoing-mitigation telemetry (``/tm``) changed."""

    cuid: str


ServerOutput = StoreOutput | SendSessionHeartbeat | SessionLost | TelemetryChanged


@dataclass(eq=False)
class ServerSession:
    """Per signal-channel state: who is on the other end, its config, its heartbeats."""

    requester: Requester
    config: ServerSessionConfig
    heartbeat: HeartbeatMonitor
    id: int = field(default_factory=lambda: next(_session_ids))
    #: Every cuid used on this session: signal loss arms their preconfigured requests.
    cuids: set[str] = field(default_factory=set)
    closed: bool = False
    #: The deadline this session is queued under in the core's timer heap (None: not queued).
    scheduled_at: float | None = None


class DotsServerCore:
    def __init__(self, store: MitigationStore | None = None, *,
                 mitigating_limits: ConfigLimits | None = None,
                 idle_limits: ConfigLimits | None = None, config_max_age: int = 3600,
                 authorizer: Authorizer | None = None,
                 acl_catalog: AclCatalog | None = None) -> None:
        self.store = store or MitigationStore()
        #: The clients' ACLs (RFC 8783 data channel) that an acl-list may name (RFC 9133);
        #: the null catalog has none, so any name is refused with 4.04.
        self.acl_catalog: AclCatalog = acl_catalog or NullAclCatalog()
        #: Activation types a PUT being processed sets in the catalog once it stands.
        self._activations: list[tuple[str, int, AclActivation]] = []
        #: ACL activation types set in the catalog by requests that stood (RFC 9133).
        self.acl_activations = 0
        #: Catalog updates that failed (the request was answered 5.03).
        self.failed_activations = 0
        #: RFC 9244 telemetry setup and pre-or-ongoing-mitigation telemetry, per client.
        self.telemetry = TelemetryStore()
        #: Writes telemetry changes to disk before the success answer; False: not saved
        #: (the request is answered 5.03 and nothing changes). None: nothing is saved.
        self.save_telemetry: Callable[[tuple[Change, ...]], bool] | None = None
        self.mitigating_limits = mitigating_limits or ConfigLimits()
        self.idle_limits = idle_limits or ConfigLimits()
        self.config_max_age = config_max_age
        #: None: every authenticated client may use any cuid and target (tests, tools).
        self.authorizer = authorizer
        self.sessions: dict[int, ServerSession] = {}
        #: Mitigations held elsewhere (a gateway's upstream) also select the mitigating
        #: parameter set of the client's sessions (RFC 9132 §4.5).
        self.mitigating_elsewhere: Callable[[str], bool] | None = None
        #: ``(cuid, alias-name) -> bool``: the client created that alias over the data
        #: channel (RFC 9132 §4.4.1.3). None: no data channel, every alias is unknown (4.00).
        self.known_alias: Callable[[str, str], bool] | None = None
        #: Writes the store's changes to disk; False when it could not (see the module
        #: docstring). None: nothing is saved (tests, tools), every change stands.
        self.save: Callable[[], bool] | None = None
        #: Mitigation requests answered 5.03 because their change could not be saved.
        self.unsaved_requests = 0
        self._outputs: deque[ServerOutput] = deque()
        self._now = 0.0  # the latest time an input brought; used when loss is processed
        #: Sessions whose heartbeat monitors may hold events since the last collection, so
        #: collecting after one request does not walk every session.
        self._dirty: list[ServerSession] = []
        #: (heartbeat deadline, session id), lazily: an entry is current only while it
        #: matches the session's ``scheduled_at``. Timer handling touches due sessions only.
        self._due: list[tuple[float, int]] = []

    # --- sessions ----------------------------------------------------------------------------

    def open_session(self, requester: Requester, now: float, *,
                     reliable: bool = False) -> ServerSession:
        config = ServerSessionConfig(self.mitigating_limits, self.idle_limits,
                                     max_age=self.config_max_age, reliable=reliable)
        params = config.parameters(mitigating=False)
        monitor = HeartbeatMonitor(Role.SERVER, now, heartbeat_interval=params.heartbeat_interval,
                                   missing_hb_allowed=params.missing_hb_allowed)
        session = ServerSession(requester, config, monitor)
        self.sessions[session.id] = session
        self._schedule(session)
        return session

    def close_session(self, session: ServerSession) -> None:
        session.closed = True
        self.sessions.pop(session.id, None)

    def mitigating(self, session: ServerSession) -> bool:
        if not session.cuids:
            return False  # a session that has asked for no mitigation (heartbeats alone)
        elsewhere = self.mitigating_elsewhere
        return any(self.store.is_mitigating(cuid) or (elsewhere is not None and elsewhere(cuid))
                   for cuid in session.cuids)

    # --- pulled outputs ----------------------------------------------------------------------

    def next_event(self) -> ServerOutput | None:
        self._collect(self._dirty)
        self._dirty = []
        return self._outputs.popleft() if self._outputs else None

    def events(self) -> Iterator[ServerOutput]:
        while (event := self.next_event()) is not None:
            yield event

    def get_timer(self) -> float | None:
        while self._due and not self._current(*self._due[0]):
            heapq.heappop(self._due)
        timers = [self._due[0][0]] if self._due else []
        if (t := self.store.get_timer()) is not None:
            timers.append(t)
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        """Run what is due: the store's timers and the heartbeats of the sessions whose
        deadline passed (not every session: with thousands, a sweep would stall requests).
        A session's parameter set follows mitigation activity at its next request or
        heartbeat."""
        self._now = now
        self.store.handle_timer(now)
        due: list[ServerSession] = []
        while self._due and self._due[0][0] <= now:
            deadline, session_id = heapq.heappop(self._due)
            if not self._current(deadline, session_id):
                continue
            session = self.sessions[session_id]
            session.scheduled_at = None
            self._sync_parameters(session, now)
            session.heartbeat.handle_timer(now)
            due.append(session)
        self._collect(due)
        for session in due:
            self._schedule(session)

    def _current(self, deadline: float, session_id: int) -> bool:
        session = self.sessions.get(session_id)
        return session is not None and session.scheduled_at == deadline

    def _schedule(self, session: ServerSession) -> None:
        """Queue the session under its heartbeat deadline if that is earlier than the one
        it is queued under (later ones find it early, see nothing due, and requeue)."""
        deadline = session.heartbeat.get_timer()
        if session.closed or deadline is None:
            return
        if session.scheduled_at is None or deadline < session.scheduled_at:
            session.scheduled_at = deadline
            heapq.heappush(self._due, (deadline, session.id))

    # --- requests ----------------------------------------------------------------------------

    def receive_request(self, session: ServerSession, request: DotsRequest,
                        now: float) -> DotsResponse | None:
        """Answer one request; None means the RFC wants no answer (ignored efficacy update)."""
        self._now = now
        session.heartbeat.traffic_received(now)
        try:
            path = parse_path(request.path)
            resource = path.resource
            if resource is _MITIGATE:
                response = self._durable_mitigate(session, path, request, now)
            elif resource is _CONFIG:
                response = self._config(session, path, request, now)
            elif resource in _TELEMETRY:
                response = self._telemetry(session, path, request)
            else:
                response = self._heartbeat(session, request, now)
        except DotsProtocolError as exc:
            # Debug: the role logs the answer (request.answered) with the peer's address.
            log.debug("request refused session=%d method=%s path=/%s code=%s diagnostic=%r",
                      session.id, request.method.name, "/".join(request.path), exc.code.dotted,
                      exc.diagnostic)
            response = exc.to_response()
        self._sync_parameters(session, now)
        self._schedule(session)
        self._dirty.append(session)
        return response

    def _durable_mitigate(self, session: ServerSession, path: DotsPath, request: DotsRequest,
                          now: float) -> DotsResponse | None:
        """``_mitigate``, with a PUT's or DELETE's changes saved before a success answer,
        and the ACL activations it asks for (RFC 9133) made in the catalog before that."""
        save = self.save
        if request.method not in (Method.PUT, Method.DELETE):
            return self._mitigate(session, path, request, now)
        self._activations = []
        self.store.begin()
        try:
            response = self._mitigate(session, path, request, now)
            if response is not None and not response.code.is_success:
                self.store.rollback()
                return response
            undo = self._activate()
        except BaseException:
            self.store.rollback()  # a refused request leaves nothing behind
            raise
        if save is None or save():
            self.store.commit()
            self._log_activations(undo)
            return response
        self._undo(undo)
        self.store.rollback()
        self.unsaved_requests += 1
        log.warning("request refused session=%d method=%s path=/%s code=5.03: the change "
                    "could not be saved", session.id, request.method.name,
                    "/".join(request.path))
        raise ServiceUnavailable(
            "the server cannot save mitigation requests now (its state could not be "
            f"written); nothing was changed; retry in {SAVE_RETRY_AFTER} s", SAVE_RETRY_AFTER)

    def _owner(self, session: ServerSession, path: DotsPath) -> Owner:
        # §4.4.1.2: a cdid is honoured only from trusted gateways; from anyone else it is
        # ignored, not an error.
        cdid = path.cdid if session.requester.trusted_gateway else None
        return Owner(session.requester.credential_id, cdid)

    def _mitigate(self, session: ServerSession, path: DotsPath, request: DotsRequest,
                  now: float) -> DotsResponse | None:
        assert path.cuid is not None
        rule = (self.authorizer.check_cuid(session.requester, path.cuid)
                if self.authorizer is not None else None)
        owner = self._owner(session, path)
        if request.method is Method.GET:
            body = self.store.get(path.cuid, path.mid, owner, now, parse_query(request.query))
            session.cuids.add(path.cuid)
            return DotsResponse.with_body(Code.CONTENT, encode_message(body))
        if request.method not in (Method.PUT, Method.DELETE):
            raise MethodNotAllowed(f"{request.method.name} is not used on mitigate "
                                   "(GET, PUT and DELETE are)")
        if path.mid is None:
            raise MissingAttribute(f"{request.method.name} on mitigate needs the 'mid' "
                                   "Uri-Path parameter")
        session.cuids.add(path.cuid)
        if request.method is Method.DELETE:
            self.store.delete(path.cuid, path.mid, owner, now)
            return DotsResponse(Code.DELETED)
        efficacy = is_efficacy_update(request)
        message = decode_request_body(request)
        scope = validate_mitigation_request(message, efficacy_update=efficacy)
        refuse_required_keys_not_acted_on(message, _ACTED_ON)
        if rule is not None:
            known = self.known_alias
            cuid = path.cuid
            Authorizer.check_targets(rule, scope, known_alias=None if known is None
                                     else lambda name: known(cuid, name))
        acls = acl_list_of(scope)
        if acls is not None:
            check_known(self.acl_catalog, path.cuid, acls)  # RFC 9133 §3.2: 4.04
            scope = with_acl_list(scope, acls)  # stored with every activation-type explicit
        result = self.store.put(path.cuid, path.mid, scope, owner, now, efficacy_update=efficacy)
        if result is None:
            return None
        self._activations.extend((path.cuid, path.mid, acl) for acl in acls or ())
        code = Code.CREATED if result.created else Code.CHANGED
        return DotsResponse.with_body(code, encode_message(result.body))

    def _activate(self) -> list[tuple[str, str, str]]:
        """Set the activation types the request asked for in the catalog (RFC 9133 §3.2:
        they outlive the mitigation). Returns how to undo them; on a failure, undoes what
        it did and raises the 5.03 that names the failed update (§3.2)."""
        undo: list[tuple[str, str, str]] = []
        activations, self._activations = self._activations, []
        for cuid, mid, acl in activations:
            try:
                before = self.acl_catalog.lookup(cuid, acl.acl_name)
                previous = (before or {}).get("activation-type", acl.activation_type)
                self.acl_catalog.update_activation(cuid, acl.acl_name, acl.activation_type)
            except Exception as exc:
                self.failed_activations += 1
                log.error("ACL activation failed cuid=%s acl-name=%s activation-type=%s: %s",
                          cuid, acl.acl_name, acl.activation_type, exc)
                self._undo(undo)
                raise AclActivationFailed(mid, acl) from None
            undo.append((cuid, acl.acl_name, str(previous)))
        return undo

    def _log_activations(self, done: list[tuple[str, str, str]]) -> None:
        for cuid, name, _previous in done:
            acl = self.acl_catalog.lookup(cuid, name)
            log.info("ACL activation cuid=%s acl-name=%s activation-type=%s", cuid, name,
                     (acl or {}).get("activation-type", "-"))
        self.acl_activations += len(done)

    def _undo(self, undo: list[tuple[str, str, str]]) -> None:
        for cuid, name, previous in reversed(undo):
            try:
                self.acl_catalog.update_activation(cuid, name, previous)
            except Exception as exc:  # the catalog is failing: say so, go on
                log.error("ACL activation not undone cuid=%s acl-name=%s: %s", cuid, name, exc)

    def _with_acls(self, out: ServerOutput) -> ServerOutput:
        """Commands for the mitigator carry the full ACLs active for the mitigation."""
        if not isinstance(out, ApplyMitigation | UpdateFilters):
            return out
        try:
            acls = active_acls(self.acl_catalog, out.cuid, acl_list_of(out.scope))
        except Exception as exc:  # a saved scope that no longer parses, a failing catalog
            log.error("ACLs of mitigation cuid=%s mid=%d not resolved: %s", out.cuid, out.mid,
                      exc)
            return out
        return replace(out, acls=acls) if acls else out

    def _telemetry(self, session: ServerSession, path: DotsPath,
                   request: DotsRequest) -> DotsResponse:
        """``/tm-setup`` (RFC 9244 §7) and ``/tm`` (§8) of the client named by cuid."""
        assert path.cuid is not None
        rule = (self.authorizer.check_cuid(session.requester, path.cuid)
                if self.authorizer is not None else None)
        setup = path.resource is Resource.TM_SETUP
        ident = path.tsid if setup else path.tmid
        name = "tsid" if setup else "tmid"
        store = self.telemetry
        if request.method is Method.GET:
            # §5.4: 'c' as on mitigate (all of ours is returned); the §8.3 target filters
            # are optional and not advertised in supported-query-type: 4.00 (§10).
            parse_query(request.query)
            body = store.setup_body(path.cuid, ident) if setup else store.tm_body(path.cuid,
                                                                                 ident)
            return DotsResponse.with_body(Code.CONTENT, body)
        owner = self._owner(session, path)
        cdid = owner.cdid
        plan: Plan
        if request.method is Method.PUT:
            if ident is None:
                raise MissingAttribute(f"PUT on {path.resource.value} needs the '{name}' "
                                       "Uri-Path parameter (RFC 9244 §7.1.2, §8.2)")
            plan = (store.plan_setup_put(path.cuid, ident, request.payload, cdid,
                                         domain=cdid or owner.credential_id) if setup
                    else store.plan_tm_put(path.cuid, ident, request.payload, cdid))
        elif request.method is Method.DELETE:
            plan = (store.plan_setup_delete(path.cuid, ident) if setup
                    else store.plan_tm_delete(path.cuid, ident))
        else:
            raise MethodNotAllowed(f"{request.method.name} is not used on "
                                   f"{path.resource.value} (GET, PUT and DELETE are)")
        if rule is not None:
            for targets in plan.targets:  # the client's own prefixes and names, as on mitigate
                Authorizer.check_targets(rule, targets)
        session.cuids.add(path.cuid)
        save = self.save_telemetry
        if plan.changes and save is not None and not save(plan.changes):
            self.unsaved_requests += 1
            raise ServiceUnavailable(
                "the server cannot save telemetry now (its state could not be written); "
                f"nothing was changed; retry in {SAVE_RETRY_AFTER} s", SAVE_RETRY_AFTER)
        store.apply(plan)
        if not setup and plan.changes:
            self._outputs.append(TelemetryChanged(path.cuid))
        return DotsResponse(plan.code)

    def _config(self, session: ServerSession, path: DotsPath, request: DotsRequest,
                now: float) -> DotsResponse:
        config = session.config
        if request.method is Method.GET:
            body = config.get(path.sid)
            return DotsResponse.with_body(Code.CONTENT, encode_message(body), config.max_age)
        if request.method is Method.DELETE:
            config.delete()
            return DotsResponse(Code.DELETED)
        if request.method is not Method.PUT:
            raise MethodNotAllowed(f"{request.method.name} is not used on config")
        if path.sid is None:
            raise MissingAttribute("PUT on config needs the 'sid' Uri-Path parameter")
        created = config.put(path.sid, validate_config_request(decode_request_body(request)))
        return DotsResponse(Code.CREATED if created else Code.CHANGED)

    def _heartbeat(self, session: ServerSession, request: DotsRequest,
                   now: float) -> DotsResponse:
        if request.method is not _PUT:
            raise MethodNotAllowed(f"{request.method.name} is not used on hb (PUT is)")
        heartbeat = heartbeat_body(request)
        session.heartbeat.peer_heartbeat_received(now, heartbeat.peer_hb_status)
        return _HEARTBEAT_ANSWER  # §4.7: 2.04 with an empty body (immutable, shared)

    def heartbeat_answered(self, session: ServerSession, now: float) -> None:
        """The client answered one of our heartbeats (the role calls this on its 2.04)."""
        session.heartbeat.response_received(now)

    # --- internals ---------------------------------------------------------------------------

    def _sync_parameters(self, session: ServerSession, now: float) -> None:
        params = session.config.parameters(self.mitigating(session))
        session.heartbeat.configure(params.heartbeat_interval, params.missing_hb_allowed, now)

    def _collect(self, sessions: list[ServerSession]) -> None:
        while (out := self.store.next_event()) is not None:
            self._outputs.append(self._with_acls(out))
        for session in sessions:
            if session.closed:
                continue
            while (hb := session.heartbeat.next_event()) is not None:
                if isinstance(hb, SendHeartbeat):
                    self._outputs.append(SendSessionHeartbeat(session.id, hb.peer_hb_status))
                elif isinstance(hb, SignalLost):
                    log_event(log, logging.WARNING, "signal.lost", "signal lost: no traffic "
                              "from the client", session=session.id,
                              cuids=sorted(session.cuids))
                    for cuid in session.cuids:
                        self.store.signal_lost(cuid, self._now)
                    self.close_session(session)
                    self._outputs.append(SessionLost(session.id, frozenset(session.cuids)))
                    while (out := self.store.next_event()) is not None:
                        self._outputs.append(self._with_acls(out))
