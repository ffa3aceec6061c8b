"""The DOTS server role: the pure server core behind the DTLS and TLS endpoints.

Each authenticated (D)TLS session gets a ``SignalSession`` (``session``): a CoAP message
layer (UDP or TCP flavour) feeding requests to ``DotsServerCore`` and sending its answers,
plus the server's own heartbeats and Observe notifications (``observe``; large answers in
blocks: ``blocks``). Mitigations live in the core's store, shared by all sessions, because
they belong to clients, not sessions (RFC 8811 §3.1). This module wires those parts to the
endpoints: sessions opened and closed, the pump, redirects, heartbeats and timers.

This module is asyncio glue only: protocol decisions are made in ``gateway.dots`` and
``gateway.coap``; here we move bytes and events between them and arm timers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.coap.codes import MessageType
from gateway.coap.events import (
    ConnectionAborted,
    ReleaseReceived,
    RequestFailed,
    RequestKey,
    RequestReceived,
    Reset,
    ResponseReceived,
)
from gateway.coap.layer import MessageLayer
from gateway.coap.message import CoapMessage
from gateway.coap.options import OptionNumber
from gateway.coap.tcp_layer import TcpLayer
from gateway.credentials import certificate_not_after, certificate_subject, peer_identity
from gateway.dots.codec import encode_message
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code, Method, Status
from gateway.dots.errors import DotsProtocolError
from gateway.dots.filters import AclCatalog
from gateway.dots.message import DotsResponse, Requester
from gateway.dots.mitigation_lifecycle import (
    ApplyMitigation,
    Counters,
    MitigationRemoved,
    MitigationStatusChanged,
    MitigationTelemetry,
    UpdateFilters,
    WithdrawMitigation,
)
from gateway.dots.model import Heartbeat
from gateway.dots.server import (
    DotsServerCore,
    SendSessionHeartbeat,
    SessionLost,
    TelemetryChanged,
)
from gateway.dots.uri import Resource, build_path
from gateway.eventlog import log_event
from gateway.server.block1 import block1
from gateway.server.group_commit import GroupCommit
from gateway.server.heartbeat_pacing import HeartbeatPacer
from gateway.server.observe import DEFAULT_MAX_OBSERVATIONS, ObserveNotifications
from gateway.server.persistence import MitigationDatabase
from gateway.server.qblock import Respond, Whole, probe_answer, q_block1, send_answer
from gateway.server.session import SignalSession, _dots_request, _transmission
from gateway.server.standing import CredentialCheck, Standing
from gateway.transport.secure_session import PeerCredential
from gateway.transport.tls_context import Kind
from redirect.policy import Redirect, RedirectPolicy

if TYPE_CHECKING:
    from gateway.ops.control import ControlProviders
    from gateway.ops.metrics import Registry

log = logging.getLogger(__name__)

_CORE_TICK = 0.5
_BODY_IN_BLOCKS = frozenset({OptionNumber.BLOCK1, OptionNumber.Q_BLOCK1})
_GET = int(Method.GET)
# Members as plain globals for the per-request paths: in Python 3.11 every ``Code.X`` goes
# through EnumType.__getattr__'s slot (~0.1-0.2 us each, measured).
_METHOD_GET, _PUT_DELETE = Method.GET, (Method.PUT, Method.DELETE)
_CHANGED, _CONTENT = Code.CHANGED, Code.CONTENT
#: A tuple made once (an ``A | B`` union in the isinstance call is built on every event).
_MITIGATOR_COMMANDS = (ApplyMitigation, UpdateFilters, WithdrawMitigation, MitigationTelemetry)
#: Exit status when saved changes could not be made durable (sysexits' EX_IOERR).
EXIT_UNSYNCED = 74


def stop_unsynced(reason: str) -> None:
    """A failed fsync may have lost committed saves (the kernel drops the pages it could not
    write): acknowledging them would be a lie, and they cannot be rolled back any more. Stop
    at once, as a crash would (nothing acknowledged depends on what was lost; clients repeat
    what went unanswered, and a supervisor restarts the daemon on what is on disk)."""
    log.critical("stopping: %s; answers that depend on it were not sent", reason)
    logging.shutdown()
    os._exit(EXIT_UNSYNCED)


class ServerRole(GroupCommit, ObserveNotifications):
    """Serve ``core`` on endpoints: give ``on_session`` to DtlsServer/TlsServer."""

    def __init__(self, core: DotsServerCore, *, trusted_gateways: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.monotonic,
                 mitigator: Callable[[Any], None] | None = None,
                 database: MitigationDatabase | None = None,
                 redirect: RedirectPolicy | None = None,
                 is_anycast: Callable[[str], bool] = lambda _local: False,
                 max_observations: int = DEFAULT_MAX_OBSERVATIONS,
                 acl_catalog: AclCatalog | None = None) -> None:
        self.core = core
        if acl_catalog is not None:
            # The data channel's ACLs (RFC 8783) that mitigation requests activate (RFC 9133).
            core.acl_catalog = acl_catalog
        self.max_observations = max_observations
        self.observations_declined = 0
        self.redirect = redirect
        self.is_anycast = is_anycast
        self.draining = False
        #: Redirects sent, by reason (anycast, capacity, drain): exported as metrics later.
        self.redirects: dict[str, int] = {}
        #: Requests answered here, by CoAP response code, and heartbeats by event (sent,
        #: answered, missed, received): plain counts that the metrics read when scraped.
        self.answered: dict[int, int] = {}
        self.heartbeats: dict[str, int] = {}
        #: ``(resource, seconds)`` for each request answered here (the daemon feeds the
        #: request-duration histogram with it).
        self.observe_request: Callable[[str, float], None] = _ignore_duration
        self.trusted_gateways = trusted_gateways
        self.clock = clock
        self.mitigator = mitigator or log_mitigator
        #: Where the store's changes are saved before anything that depends on them leaves:
        #: a mitigation PUT or DELETE is answered with success only once its change is on
        #: disk (the core's ``save`` hook), else 5.03 with the change rolled back.
        self.database = database
        if database is not None:
            core.save = lambda: database.sync(core.store)
            core.save_telemetry = database.save_telemetry
        self._init_group_commit()
        self.on_unsynced: Callable[[str], None] = stop_unsynced
        self.sessions: dict[int, SignalSession] = {}
        self.observing: dict[int, SignalSession] = {}  # see ObserveNotifications
        self._tick: asyncio.TimerHandle | None = None
        self._heartbeats_due = HeartbeatPacer(self._send_due_heartbeat)
        #: Certificate deadlines and sessions closed because their standing ended.
        self.standing = Standing()
        #: The check a new session's credential must pass ((reason, detail) or None): the
        #: daemon's current trust; None: the handshake's word is final.
        self.admit: CredentialCheck | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._schedule_tick()

    async def aclose(self) -> None:
        """After ``stop``: release what outlives the sessions (nothing for the server)."""

    def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        self._heartbeats_due.cancel()
        self._flush_held()  # what waits for its fsync leaves first
        for session in list(self.sessions.values()):
            session.conn.close("server shutting down")

    def register_operations(self, metrics: Registry, control: ControlProviders) -> None:
        """Hook, called once by the daemon before ``start``: a role adds its own metric
        families or sources and control-socket sections/actions (the gateway role: its
        upstreams). The server role's own numbers are wired by the daemon."""

    def on_session(self, conn: Any) -> SignalSession:
        now = self.clock()
        credential = conn.peer
        identity = peer_identity(credential)
        requester = self.requester(credential)
        reliable = conn.kind is Kind.TLS
        dots = self.core.open_session(requester, now, reliable=reliable)
        layer: MessageLayer | TcpLayer
        if reliable:
            layer = TcpLayer()
        else:
            params = dots.config.parameters(mitigating=False)
            layer = MessageLayer(parameters=_transmission(params))
        session = SignalSession(self, conn, dots, layer, identity.name)
        self.sessions[dots.id] = session
        if log.isEnabledFor(logging.INFO):  # cipher and resumed are OpenSSL calls
            secure = getattr(conn, "session", None)
            log_event(log, logging.INFO, "session.established", "signal session opened",
                      transport=conn.kind.value, peer=conn.remote, local=conn.local,
                      client=identity.name, cuid=identity.cuid,
                      cipher=getattr(secure, "cipher", None),
                      resumed=getattr(secure, "resumed", None))
        session.flush()  # the TCP layer's CSM
        if credential.certificate is not None:
            self.standing.watch(dots.id, now + certificate_not_after(credential.certificate)
                                - time.time())
        problem = self.admit(credential) if self.admit is not None else None
        if problem is not None:
            # A resumed session (ticket) skips the handshake's checks: the same ones here.
            asyncio.get_running_loop().call_soon(self.withdraw, session, *problem)
        return session

    def requester(self, credential: PeerCredential) -> Requester:
        """Who the core sees behind ``credential``, with today's trusted gateways."""
        identity = peer_identity(credential)
        raw_psk = credential.psk_identity
        psk = raw_psk.decode("utf-8", "replace") if raw_psk is not None else None
        return Requester(
            identity.cuid,
            trusted_gateway=identity.cuid in self.trusted_gateways
            or (psk is not None and psk in self.trusted_gateways),
            psk_identity=psk,
            subject=certificate_subject(credential.certificate) if credential.certificate else None,
        )

    def withdraw(self, session: SignalSession, reason: str, detail: str) -> None:
        """Close ``session``: its credential or authorization ended (``standing.REASONS``)."""
        if session.closed:
            return
        log_event(log, logging.WARNING, "session.withdrawn", "signal session withdrawn",
                  transport=session.conn.kind.value, peer=session.conn.remote,
                  client=session.identity, cuid=session.dots.requester.credential_id,
                  reason=reason, detail=detail)
        self.standing.count(reason)
        session.conn.close(f"credential withdrawn: {detail}")

    def forget(self, session: SignalSession, reason: str) -> None:
        self.sessions.pop(session.dots.id, None)
        self._forget_held(session.dots.id)
        self.observing.pop(session.dots.id, None)
        self.standing.forget(session.dots.id)
        self.core.close_session(session.dots)
        log_event(log, logging.INFO, "session.closed", "signal session closed",
                  transport=session.conn.kind.value, peer=session.conn.remote,
                  cuid=session.dots.requester.credential_id, reason=reason)

    # --- the pump ----------------------------------------------------------------------------

    def pump(self, session: SignalSession, now: float) -> None:
        """Process everything the layer produced, answer, then run the core's outputs."""
        for _ in range(256):  # bounded: one datagram yields a handful of events
            event = session.layer.next_event()
            if event is None:
                break
            if isinstance(event, RequestReceived):
                self._request(session, event.message, event.key, now)
            elif isinstance(event, ResponseReceived):
                if event.token in session.heartbeat_tokens:
                    session.heartbeat_tokens.discard(event.token)
                    answered = _CHANGED == event.message.code
                    outcome = "answered" if answered else "missed"
                    self.heartbeats[outcome] = self.heartbeats.get(outcome, 0) + 1
                    if answered:
                        self.core.heartbeat_answered(session.dots, now)
            elif isinstance(event, RequestFailed):
                if event.token in session.heartbeat_tokens:
                    session.heartbeat_tokens.discard(event.token)
                    self.heartbeats["missed"] = self.heartbeats.get("missed", 0) + 1
            elif isinstance(event, Reset):
                # RFC 7641 §3.6: a Reset of a notification cancels the observation.
                session.observations.pop(event.token, None)
            elif isinstance(event, ReleaseReceived | ConnectionAborted):
                # RFC 8323 §5.5/§5.6: the peer is done with this connection (aiocoap's
                # shutdown sends Release and waits for us to close).
                self._persist()  # answers queued before the Release leave now
                self.durable()  # on this thread: the connection closes right after
                self._release()
                session.flush()
                session.conn.close("released by the peer" if isinstance(event, ReleaseReceived)
                                   else f"aborted: {event.diagnostic}")
                return
        # With saves not yet durable, the answers are held by ``send`` and the core's
        # outputs by ``_core_outputs`` until the fsync that covers them has finished.
        self._core_outputs(now)
        self._notify_due(session, now)
        session.flush()
        self._arm(session)

    def _request(self, session: SignalSession, msg: CoapMessage, key: RequestKey,
                 now: float) -> None:
        if self._redirected(session, msg, key, now):
            return
        if isinstance(session.layer, MessageLayer):
            whole = self._q_block(session, msg, key, now)
            if whole is None:
                return
            msg = whole
        self._answer(session, msg, key, now)

    def _q_block(self, session: SignalSession, msg: CoapMessage, key: RequestKey,
                 now: float) -> CoapMessage | None:
        """Block-wise requests before the core sees them: the answer to a Q-Block probe
        (RFC 9177), the blocks of a Q-Block1 or Block1 body (RFC 7959) (None: answered or
        waiting here), else the request to answer."""
        assert isinstance(session.layer, MessageLayer)
        if msg.code != _GET and not msg.has_any_option(_BODY_IN_BLOCKS):
            return msg  # most requests: not a probe (a GET), and the body came whole
        probe = probe_answer(msg)
        if probe is not None:
            if msg.has_option(OptionNumber.Q_BLOCK2):
                # RFC 9177 §4.1: a peer that probes (libcoap, go-dots) then sends plain GETs
                # and expects Q-Block2; one that puts Q-Block2 in its GETs (ours) is not
                # marked, so that its GETs without it (Observe, Block2) keep Block2.
                session.q_block_peer = True
            send_answer(session.layer, key, msg, probe, probe.payload, now)
            self.answered[probe.code] = self.answered.get(probe.code, 0) + 1
            return None
        block = q_block1(msg)
        if block is not None:
            outcome = session.q_bodies.receive(msg, block, now)
        else:
            block = block1(msg)
            if block is None:
                return msg
            outcome = session.block1_bodies.receive(msg, block, now)
        if isinstance(outcome, Whole):
            return outcome.message
        if isinstance(outcome, Respond):
            session.layer.send_response(key, outcome.message, now)
            code = outcome.message.code
            self.answered[code] = self.answered.get(code, 0) + 1
        elif key.mtype is MessageType.CON:
            session.layer.send_ack(key, now)  # a CON block still needs its ACK
        return None

    def _redirected(self, session: SignalSession, msg: CoapMessage, key: RequestKey,
                    now: float) -> bool:
        """Answer with a redirect when the policy wants this session elsewhere."""
        redirect = self._redirect_for(session)
        if redirect is None:
            return False
        # RFC 9132 §4.6: the request fails with 5.03; the body names where to go.
        reply = msg.response(int(Code.SERVICE_UNAVAILABLE),
                             payload=encode_message(redirect.target.signal()),
                             content_format=CONTENT_FORMAT_DOTS_CBOR, max_age=redirect.ttl)
        session.layer.send_response(key, reply, now)
        code = int(Code.SERVICE_UNAVAILABLE)
        self.answered[code] = self.answered.get(code, 0) + 1
        return True

    def _answer(self, session: SignalSession, msg: CoapMessage, key: RequestKey,
                now: float) -> None:
        """Answer a request from the local core (mitigate, config, hb)."""
        started = time.perf_counter()
        request = _dots_request(msg, session.dots.requester)
        try:
            response = self.core.receive_request(session.dots, request, now)
        except DotsProtocolError as exc:  # the core answers these itself; belt and braces
            response = exc.to_response()
        except Exception:
            log_event(log, logging.ERROR, "request.failed", "internal error answering a "
                      "request", exc_info=True, peer=session.conn.remote,
                      method=request.method.name, path="/" + "/".join(request.path))
            response = DotsResponse(Code.INTERNAL_SERVER_ERROR,
                                    b"internal error; the server logged it", 0)
        if response is not None and response.code >= 0x80:
            log_answer(session, request.method.name, request.path, response)
        if response is None:
            # RFC 9132 §4.4.3: silently ignored; a CON still needs its ACK to stop retries.
            if key.mtype is MessageType.CON and isinstance(session.layer, MessageLayer):
                session.layer.send_ack(key, now)
            return
        self.answered[response.code] = self.answered.get(response.code, 0) + 1
        if request.path[2:3] == ("hb",) and response.code == _CHANGED:
            self.heartbeats["received"] = self.heartbeats.get("received", 0) + 1
        observe = self._observe(session, msg, request, response, now)
        payload = response.payload
        if (isinstance(session.layer, MessageLayer) and request.method is _METHOD_GET
                and response.code == _CONTENT):
            payload = session.block_payload(msg, payload, now)
        coap = msg.response(response.code, payload=payload,
                            content_format=response.content_format,
                            max_age=response.max_age, observe=observe)
        if isinstance(session.layer, MessageLayer):
            send_answer(session.layer, key, msg, coap, payload, now,
                        q_block_peer=session.q_block_peer)
        else:
            session.layer.send_response(key, coap, now)
        self._sync_transmission(session)
        if request.method in _PUT_DELETE and request.path[2:3] == ("config",):
            self._mark_config_observers(session)
        self.observe_request(request.path[2] if len(request.path) > 2 else "-",
                             time.perf_counter() - started)

    def _persist(self) -> None:
        """Save the store's changes not caused by a request (timers, signal loss, mitigator
        reports) in one transaction; a failure is logged, counted and retried by the tick
        with a back-off (``MitigationDatabase.sync``)."""
        if self.database is not None:
            self.database.sync(self.core.store, background=True)

    def mitigator_status(self, cuid: str, mid: int, status: Status,
                         counters: Counters | None) -> None:
        """``on_status`` for the mitigator backend: its report, then what follows from it."""
        now = self.clock()
        self.core.store.update_status(cuid, mid, status, now, counters)
        self._core_outputs(now)

    def _core_outputs(self, now: float) -> None:
        # Collecting runs signal-loss processing too; then everything it and the requests
        # changed is saved, and durable, before a response, notification or mitigator
        # command leaves (held in order by the group commit until then).
        events = list(self.core.events())
        self._persist()
        if not self.hold_events(events) and events:
            self._dispatch(events)

    def _dispatch(self, events: list[Any]) -> None:
        """The core's outputs, once what they depend on is durable."""
        changed: dict[str, set[int]] = {}
        telemetry: set[str] = set()
        removed: list[MitigationRemoved] = []
        for event in events:
            # The server's heartbeats first: on a timer tick, most events are these.
            if isinstance(event, SendSessionHeartbeat):
                self._heartbeats_due.add(event.session_id, event.peer_hb_status)
            elif isinstance(event, MitigationStatusChanged):
                changed.setdefault(event.cuid, set()).add(event.mid)
            elif isinstance(event, MitigationRemoved):
                removed.append(event)
                changed.setdefault(event.cuid, set()).add(event.mid)
            elif isinstance(event, _MITIGATOR_COMMANDS):
                self.mitigator(event)
            elif isinstance(event, TelemetryChanged):
                telemetry.add(event.cuid)
            elif isinstance(event, SessionLost):
                self._client_lost(event)
                target = self.sessions.get(event.session_id)
                if target is not None:
                    target.conn.close("signal lost: no traffic from the client")
        self._heartbeats_due.start()
        if changed:
            self._mark_observers(changed)
        if telemetry:
            self._mark_telemetry_observers(telemetry)

    def _client_lost(self, event: SessionLost) -> None:
        """A client's session went silent (its preconfigured requests were armed in the
        store already); the gateway role also acts upstream."""


    def _redirect_for(self, session: SignalSession) -> Redirect | None:
        if self.redirect is None:
            return None
        decision = self.redirect.decide(
            on_anycast=self._on_anycast(session),
            cuid=session.dots.requester.credential_id, session_count=len(self.sessions),
            draining=self.draining, peer=session.conn.remote.host)
        if decision is not None:
            self.redirects[decision.reason.value] = self.redirects.get(decision.reason.value,
                                                                       0) + 1
            log_event(log, logging.INFO, "redirect.sent", "redirect sent",
                      peer=session.conn.remote, cuid=session.dots.requester.credential_id,
                      local=session.conn.local, target=decision.target.name,
                      ttl=decision.ttl, reason=decision.reason.value)
        return decision

    def start_drain(self, _deadline: float | None = None) -> None:
        """Drain: every request is redirected from now on, and observers of mitigations are
        told at once, inside a notification (RFC 9132 §4.6 allows 5.03 there)."""
        self.draining = True
        now = self.clock()
        for session in list(self.sessions.values()):
            redirect = self._redirect_for(session)
            if redirect is None:
                continue
            body = encode_message(redirect.target.signal())
            for token, obs in list(session.observations.items()):
                if obs.cuid is None:
                    continue
                anchor = CoapMessage(None, int(Method.GET), 0, token)
                note = anchor.response(int(Code.SERVICE_UNAVAILABLE), payload=body,
                                       content_format=CONTENT_FORMAT_DOTS_CBOR,
                                       max_age=redirect.ttl)
                session.layer.send_notification(token, note, now)
                session.observations.pop(token, None)
            session.flush()

    def _send_due_heartbeat(self, session_id: int, peer_hb_status: bool) -> None:
        target = self.sessions.get(session_id)
        if target is not None and not target.closed:
            self._send_heartbeat(target, peer_hb_status, self.clock())

    def _send_heartbeat(self, session: SignalSession, peer_hb_status: bool, now: float) -> None:
        request = _heartbeat_request(peer_hb_status)
        params = session.dots.config.parameters(self.core.mitigating(session.dots))
        lifetime = max(float(params.heartbeat_interval), 1.0)
        if isinstance(session.layer, MessageLayer):
            token = session.layer.send_request(request, now, confirmable=False,
                                               lifetime=lifetime)
        else:
            token = session.layer.send_request(request, now, lifetime=lifetime)
        session.heartbeat_tokens.add(token)
        self.heartbeats["sent"] = self.heartbeats.get("sent", 0) + 1
        session.flush()
        self._arm(session)  # the heartbeat's lifetime in the message layer

    def _on_anycast(self, session: SignalSession) -> bool:
        classify = self.is_anycast
        if session.on_anycast is None or session.classified_by is not classify:
            session.on_anycast = classify(session.conn.local.host)
            session.classified_by = classify  # a replaced classifier (tests) counts anew
        return session.on_anycast

    def _sync_transmission(self, session: SignalSession) -> None:
        if isinstance(session.layer, MessageLayer):
            params = session.dots.config.parameters(self.core.mitigating(session.dots))
            if params is not session.transmission_from:  # most requests change nothing
                session.transmission_from = params
                session.layer.set_parameters(_transmission(params))

    # --- timers ------------------------------------------------------------------------------

    def _arm(self, session: SignalSession) -> None:
        if session.closed:
            return
        deadlines = [t for t in (session.layer.get_timer(),) if t is not None]
        if session.pending_notifications:
            deadlines.append(session.next_notification_at)
        deadline = min(deadlines) if deadlines else None
        if session.timer is not None:
            if deadline == session.timer_at:
                return  # already armed for it: most requests do not move the deadline
            session.timer.cancel()
            session.timer = None
        session.timer_at = deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        session.timer = loop.call_later(max(0.0, deadline - self.clock()), self._session_timer,
                                        session)

    def _session_timer(self, session: SignalSession) -> None:
        session.timer = None
        session.timer_at = None
        if session.closed:
            return
        now = self.clock()
        session.layer.handle_timer(now)
        self.pump(session, now)

    def _schedule_tick(self) -> None:
        self._tick = asyncio.get_running_loop().call_later(_CORE_TICK, self._on_tick)

    def _on_tick(self) -> None:
        now = self.clock()
        try:
            self.core.handle_timer(now)
            self._core_outputs(now)  # heartbeats due are sent (and flushed) here
            for session_id in self.standing.expired(now):
                expired = self.sessions.get(session_id)
                if expired is not None:
                    self.withdraw(expired, "certificate_expired",
                                  "its certificate expired")
            # Only sessions with observations (``observing``), not every session: requests
            # wait while this runs, twice a second.
            for session_id, session in list(self.observing.items()):
                if session.closed or not (session.observations
                                          or session.pending_notifications):
                    self.observing.pop(session_id, None)  # forget() may have taken it first
                    continue
                if session.observations:
                    self._mark_periodic(session, now)
                if session.pending_notifications:
                    self._notify_due(session, now)
                    session.flush()
                    self._arm(session)
        except Exception:
            log.exception("server core timer failed")
        self._schedule_tick()


@functools.cache
def _heartbeat_request(peer_hb_status: bool) -> CoapMessage:
    """The server's heartbeat (RFC 9132 §4.7), one of two immutable messages, made once
    (the message layer gives each its own token and message ID)."""
    return CoapMessage.request(int(Method.PUT), build_path(Resource.HB),
                               content_format=CONTENT_FORMAT_DOTS_CBOR,
                               payload=encode_message(Heartbeat(peer_hb_status)))


def log_mitigator(command: object) -> None:
    """The ``log`` mitigator backend: one line per command (issue 5 adds JSON lines/command)."""
    log.info("mitigator %s", command)


def _ignore_duration(_resource: str, _seconds: float) -> None:
    pass


def log_answer(session: SignalSession, method: str, path: tuple[str, ...] | list[str],
               response: DotsResponse) -> None:
    """One ``request.answered`` event for an error answer (4.xx, 5.xx), with who asked
    (peer, cuid) and what (method, path, mid), the code and its diagnostic."""
    if not log.isEnabledFor(logging.INFO):
        return
    cuid = session.dots.requester.credential_id
    mid = None
    for segment in path:
        name, _, value = segment.partition("=")
        if name == "cuid" and value:
            cuid = value
        elif name == "mid" and value:
            mid = value
    code = int(response.code)
    diagnostic = response.diagnostic[:300] or None
    log_event(log, logging.INFO, "request.answered", "request answered with an error",
              peer=session.conn.remote, cuid=cuid, mid=mid, method=method,
              path="/" + "/".join(p for p in path if not p.startswith(("cuid=", "mid="))),
              code=f"{code >> 5}.{code & 31:02d}", diagnostic=diagnostic)
