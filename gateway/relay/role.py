"""The gateway's downstream side: the server role, with mitigation requests relayed.

``GatewayRole`` is the DOTS server role towards the gateway's clients (sessions, session
configuration, heartbeats, redirects, Observe pacing: all per hop and all inherited), except
that requests on ``mitigate`` go to ``GatewayRelay`` instead of a local store. A relayed
request is answered when the upstream answer arrives: a CON one is acknowledged at once and
answered separately (RFC 7252 §5.2.2); a NON one's retransmissions are absorbed by the
message layer meanwhile. Observe registrations join the relay's shared upstream
observations; their notifications go downstream as NON with the role's pacing.

Asyncio glue only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from gateway.client.connect import NetworkError
from gateway.coap.codes import MessageType
from gateway.coap.errors import BadOptionError
from gateway.coap.events import RequestKey
from gateway.coap.layer import MessageLayer
from gateway.coap.message import CoapMessage
from gateway.dots.authz import Authorizer
from gateway.dots.codes import CONTENT_FORMAT_TEXT, Code, Method
from gateway.dots.errors import DotsProtocolError
from gateway.dots.message import DotsRequest, DotsResponse
from gateway.dots.relay import RELAYED, HopLimitReached, gateway_error
from gateway.dots.server import DotsServerCore, SessionLost
from gateway.dots.uri import DotsPath, Resource, parse_path, parse_query
from gateway.eventlog import log_event
from gateway.ops.control import ControlProviders
from gateway.ops.metrics import Registry, daemon_metrics
from gateway.relay.forwarding import GatewayRelay, Prepared, spec_label
from gateway.server.blocks import _block2
from gateway.server.observe import Observation, _asked_szx
from gateway.server.qblock import notification_block, send_answer
from gateway.server.role import ServerRole, log_answer
from gateway.server.session import SignalSession, _dots_request

log = logging.getLogger(__name__)

#: Rows a status section lists (``count`` has the total).
STATUS_ROWS = 1000
#: Seconds ``reconnect`` waits for the outcome of the attempt it started.
RECONNECT_WAIT = 20.0

Subscriber = tuple[int, bytes]  # (downstream session id, observation token)


class GatewayRole(ServerRole):
    def __init__(self, core: DotsServerCore, relay: GatewayRelay, **kwargs: Any) -> None:
        super().__init__(core, **kwargs)
        self.relay = relay
        relay.notify = self._upstream_notification
        core.mitigating_elsewhere = lambda cuid: relay.table.is_mitigating(
            cuid, relay.wall_clock())
        #: Relayed observations with the notification waiting for the pacing to allow it.
        self._relayed: dict[Subscriber, tuple[DotsResponse, bool] | None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Long-running jobs started with the role (the discovery engine).
        self.background: list[Callable[[], Awaitable[None]]] = []
        #: Requests whose cdid was ignored: sent by a client that is not a trusted gateway
        #: (RFC 9132 §4.4.1.2: clients MUST NOT send one; the first gateway strips it).
        self.cdid_ignored = 0
        #: Downstream sessions already logged for that (once per session).
        self._cdid_logged: set[int] = set()
        #: More metric families and status sections, declared with the role's
        #: (``register_operations``): the discovery engine's.
        self.operation_hooks: list[Callable[[Registry, ControlProviders], None]] = []

    # --- requests ----------------------------------------------------------------------------

    def _answer(self, session: SignalSession, msg: CoapMessage, key: RequestKey,
                now: float) -> None:
        try:
            path = parse_path(tuple(msg.uri_path))
        except DotsProtocolError:
            path = None
        if path is None or path.resource not in RELAYED:
            super()._answer(session, msg, key, now)  # config and hb are per hop (§4.5, §4.7)
            return
        session.dots.heartbeat.traffic_received(now)
        request = _dots_request(msg, session.dots.requester)
        try:
            prepared = self._prepare(session, msg, path, request)
        except HopLimitReached:
            log_event(log, logging.WARNING, "relay.hop_limit", "hop limit reached (a gateway "
                      "loop?)", peer=session.conn.remote, cuid=path.cuid)
            self._respond(session, msg, key, self.relay.hop_limit_report(), None, now)
            return
        except DotsProtocolError as exc:  # logged by _respond (request.answered)
            self._respond(session, msg, key, gateway_error(exc), None, now)
            return
        session.dots.cuids.add(prepared.cuid)
        if key.mtype is MessageType.CON and isinstance(session.layer, MessageLayer):
            session.layer.send_ack(key, now)  # the upstream answer may take a while
        self._spawn(self._relay(session, msg, key, path, prepared))

    def _prepare(self, session: SignalSession, msg: CoapMessage, path: DotsPath,
                 request: DotsRequest) -> Prepared:
        try:
            msg.hop_limit  # noqa: B018 - validates the option (RFC 8768 §3: 1 byte, 1-255)
        except BadOptionError as exc:
            raise _BadOption(exc.reason) from None
        requester = session.dots.requester
        assert path.cuid is not None
        if path.cdid is not None and not requester.trusted_gateway:
            self._cdid_from_client(session, path)
        authorizer = self.core.authorizer
        rule = authorizer.check_cuid(requester, path.cuid) if authorizer is not None else None
        prepared = self.relay.prepare(requester, path, request)
        if rule is not None and prepared.scope is not None:
            known, cuid = self.core.known_alias, path.cuid
            Authorizer.check_targets(rule, prepared.scope, known_alias=None if known is None
                                     else lambda name: known(cuid, name))
        if request.method is Method.GET:
            parse_query(request.query)  # 4.00 for a bad filter, before anything leaves
        return prepared

    def _cdid_from_client(self, session: SignalSession, path: DotsPath) -> None:
        """A cdid from a client that is not a configured gateway: not passed on (the
        gateway's own, or none, replaces it), counted, logged once per session."""
        self.cdid_ignored += 1
        if session.dots.id in self._cdid_logged:
            return
        self._cdid_logged.add(session.dots.id)
        log.warning("cdid=%s from %s (cuid=%s) ignored: only a gateway listed in "
                    "trusted_gateways may send one (RFC 9132 §4.4.1.2); not logged again for "
                    "this session", path.cdid, session.conn.remote, path.cuid)

    async def _relay(self, session: SignalSession, msg: CoapMessage, key: RequestKey,
                     path: DotsPath, prepared: Prepared) -> None:
        subscriber = (session.dots.id, msg.token)
        observe: int | None = None
        try:
            if (prepared.request.method is Method.GET and msg.observe == 0
                    and self._observation_allowed(session, msg.token)):
                response, kept = await self.relay.subscribe(prepared, subscriber)
                if kept and not session.closed:
                    content = parse_query(prepared.request.query)
                    telemetry = path.resource is Resource.TM
                    self._keep_observation(session, Observation(
                        msg.token, prepared.cuid, path.tmid if telemetry else path.mid,
                        content, last_sent=self.clock(), telemetry=telemetry,
                        szx=_asked_szx(msg)))
                    self._relayed[subscriber] = None
                    observe = 1
                else:
                    self.relay.unsubscribe(subscriber)
            else:
                if prepared.request.method is Method.GET and msg.observe == 1:
                    self._unsubscribe(session, msg.token)  # RFC 7641 §3.6
                response = await self.relay.relay(prepared)
        except Exception:
            log_event(log, logging.ERROR, "request.failed", "relaying a request failed",
                      exc_info=True, peer=session.conn.remote,
                      method=_method_name(msg.code), path="/" + "/".join(msg.uri_path))
            response = DotsResponse(Code.INTERNAL_SERVER_ERROR,
                                    b"gateway: internal error; the gateway logged it",
                                    CONTENT_FORMAT_TEXT)
        if session.closed:
            self._unsubscribe(session, msg.token)
            return
        self._respond(session, msg, key, response, observe, self.clock())

    def _respond(self, session: SignalSession, msg: CoapMessage, key: RequestKey,
                 response: DotsResponse, observe: int | None, now: float) -> None:
        if session.closed:
            return
        payload = response.payload
        if (isinstance(session.layer, MessageLayer) and msg.code == int(Method.GET)
                and response.code == Code.CONTENT):
            payload = session.block_payload(msg, payload, now)
        coap = msg.response(int(response.code), payload=payload,
                            content_format=response.content_format, max_age=response.max_age,
                            observe=observe)
        if response.code >= 0x80:
            log_answer(session, _method_name(msg.code), tuple(msg.uri_path), response)
        elif msg.code in (int(Method.PUT), int(Method.DELETE)):
            self._log_relayed(session, msg, response)
        try:
            if isinstance(session.layer, MessageLayer):
                send_answer(session.layer, key, msg, coap, payload, now,
                            q_block_peer=session.q_block_peer)
            else:
                session.layer.send_response(key, coap, now)
        except Exception as exc:  # noqa: BLE001 - e.g. the layer closed meanwhile
            log.info("answer to %s not sent: %s", session.conn.remote, exc)
            return
        self._sync_transmission(session)
        session.flush()
        self._arm(session)

    def _log_relayed(self, session: SignalSession, msg: CoapMessage,
                     response: DotsResponse) -> None:
        """``mitigation.relayed``: a client's mitigation change accepted upstream (or, for a
        DELETE while no upstream answers, accepted by the gateway to pass on later)."""
        if not log.isEnabledFor(logging.INFO):
            return
        fields = dict(segment.partition("=")[::2] for segment in msg.uri_path
                      if segment.startswith(("cuid=", "mid=")))
        code = int(response.code)
        log_event(log, logging.INFO, "mitigation.relayed", "mitigation request relayed",
                  peer=session.conn.remote, cuid=fields.get("cuid"), mid=fields.get("mid"),
                  method=_method_name(msg.code), code=f"{code >> 5}.{code & 31:02d}",
                  upstream=self.relay.upstream_name())

    # --- observations ------------------------------------------------------------------------

    def _upstream_notification(self, subscribers: set[Subscriber], response: DotsResponse,
                               ended: bool) -> None:
        now = self.clock()
        touched: dict[int, SignalSession] = {}
        for subscriber in subscribers:
            session_id, token = subscriber
            session = self.sessions.get(session_id)
            if session is None or session.closed or token not in session.observations:
                self._relayed.pop(subscriber, None)
                self.relay.unsubscribe(subscriber)  # the observer went away (Reset, close)
                continue
            self._relayed[subscriber] = (response, ended)
            session.pending_notifications.add(token)
            touched[session_id] = session
        for session in touched.values():
            self._notify_due(session, now)
            session.flush()
            self._arm(session)

    def _send_notification(self, session: SignalSession, obs: Observation, now: float) -> None:
        subscriber = (session.dots.id, obs.token)
        if subscriber not in self._relayed:
            super()._send_notification(session, obs, now)
            return
        waiting = self._relayed.get(subscriber)
        if waiting is None:
            latest = self.relay.last_notification(subscriber)
            if latest is None:
                return
            waiting = (latest, False)  # the periodic re-notification (§4.4.2.1)
        self._relayed[subscriber] = None
        response, ended = waiting
        ended = ended or not response.code.is_success
        obs.last_sent = now
        obs.sequence = (obs.sequence + 1) % (1 << 24)
        anchor = CoapMessage(None, int(Method.GET), 0, obs.token)
        message = anchor.response(int(response.code), payload=response.payload,
                                  content_format=response.content_format,
                                  max_age=response.max_age,
                                  observe=None if ended else obs.sequence)
        if isinstance(session.layer, MessageLayer):
            message = _block2(message, notification_block(len(response.payload), obs.szx))
            session.layer.send_notification(obs.token, message, now, confirmable=False)
        else:
            session.layer.send_notification(obs.token, message, now)
        if ended:
            session.observations.pop(obs.token, None)
            self._unsubscribe(session, obs.token)

    def _unsubscribe(self, session: SignalSession, token: bytes) -> None:
        subscriber = (session.dots.id, token)
        if self._relayed.pop(subscriber, ...) is not ...:
            session.observations.pop(token, None)
        self.relay.unsubscribe(subscriber)

    # --- operations --------------------------------------------------------------------------

    def register_operations(self, metrics: Registry, control: ControlProviders) -> None:
        """The relay's numbers and status: relayed requests by code, upstream health and
        heartbeats, failovers, re-installations, and the relayed mitigations."""
        m = daemon_metrics(metrics)
        relay = self.relay
        m.relayed_requests.add_source(
            lambda: {(code,): float(n) for code, n in relay.relayed.items()})
        relay.observe_upstream = lambda name, seconds: m.relay_duration.observe(seconds, name)
        if relay.upstream is not None:
            relay.upstream.observe_handshake = (
                lambda transport, seconds: m.handshake_duration.observe(seconds, "upstream",
                                                                        transport))
        # The mitigations the gateway has installed upstream and that are acting (the core's
        # own store, which the daemon counts, holds none in gateway mode).
        m.mitigations_active.add_source(lambda: {(): float(self._relayed_active())})
        # By status as the upstream last reported it in a GET answer or notification that
        # passed through ('unknown' until one did): the same family as in terminal mode.
        m.mitigations.add_source(
            lambda: {(label,): float(n) for label, n in relay.table.by_status().items()})
        m.upstream_health.add_source(self._upstream_health)
        m.heartbeats.add_source(self._upstream_heartbeats)
        database = relay.database
        if database is not None:
            m.save_failures.add_source(lambda: {("relay",): float(database.save_failures)})
            m.saves.add_source(lambda: {("relay",): float(database.saves)})
            m.fsyncs.add_source(lambda: {("relay",): float(database.fsyncs)})
        m.unsaved_requests.add_source(lambda: {("relay",): float(relay.unsaved_requests)})
        metrics.counter("dots_gateway_upstream_failovers_total",
                        "Times the gateway gave up on an upstream server and moved on."
                        ).add_source(lambda: {(): float(self._upstream_stat("failovers"))})
        metrics.counter("dots_gateway_upstream_parallel_sessions_total",
                        "Parallel sessions to the upstream server while it was silent during "
                        "an attack (RFC 9132 §4.7), by outcome.", ("outcome",)
                        ).add_source(self._upstream_parallel)
        metrics.counter("dots_gateway_relay_reinstalled_total",
                        "Mitigation requests re-installed on an upstream server (failover, "
                        "restart).").add_source(lambda: {(): float(relay.reinstalled)})
        metrics.counter("dots_gateway_relay_cdid_ignored_total",
                        "Relayed requests carrying a cdid from a client that is not a "
                        "trusted gateway: the cdid was not passed on."
                        ).add_source(lambda: {(): float(self.cdid_ignored)})
        metrics.counter("dots_gateway_relay_unreadable_answers_total",
                        "Upstream answers to the relay's own checks (a client's list, a "
                        "re-installation) that did not say what the server has: an "
                        "undecodable body, a 5.xx. The records were kept and the check "
                        "retried.").add_source(lambda: {(): float(relay.unreadable)})
        metrics.gauge("dots_gateway_relayed_mitigations",
                      "Client mitigation requests the gateway answers for, by state "
                      "(installed, pending, withdrawing).", ("state",)
                      ).add_source(self._relayed_by_state)
        control.status_sections["mitigations"] = self._relayed_section
        control.actions["reconnect"] = self._reconnect
        for hook in self.operation_hooks:
            hook(metrics, control)

    async def _reconnect(self, request: Mapping[str, Any]) -> dict[str, object]:
        """``dots-gateway reconnect [NAME]``: end the back-off wait and attempt now (NAME
        first, moving there when connected elsewhere); the answer says how the attempt
        went, waiting for it at most ``RECONNECT_WAIT`` seconds."""
        upstream = self.relay.upstream
        if upstream is None:
            raise ValueError("no upstream client (terminal mode)")
        name = request.get("upstream")
        spec = None
        if name is not None:
            spec = upstream.find(str(name))
            if spec is None:
                known = [upstream.names.get((s.host, s.port)) or s.host
                         for s in upstream.servers]
                raise ValueError(f"no upstream named {name!r}; configured: "
                                 f"{', '.join(known) or '-'}")
        started = self.clock()
        action = upstream.reconnect_now(spec)
        log.info("control: reconnect %s: %s", name or "", action)
        deadline = started + RECONNECT_WAIT
        await asyncio.sleep(0.05)  # let the woken loop start its attempt
        while self.clock() < deadline:
            moved = spec is None or upstream.current_spec() is spec
            if upstream.connected and moved:
                break
            if not upstream.establishing and (upstream.last_error_at or 0) > started:
                break  # the attempt failed; the back-off decides the next one
            await asyncio.sleep(0.1)
        next_in = upstream.next_attempt_in
        return {"action": action, "connected": upstream.connected, "in_use": upstream.name,
                "last_error": upstream.last_error,
                "next_attempt_in": None if next_in is None else round(next_in, 1)}

    def _upstream_parallel(self) -> dict[tuple[str, ...], float]:
        upstream = self.relay.upstream
        if upstream is None:
            return {}
        stats = upstream.stats
        return {("opened",): float(stats.parallel_attempts),
                ("failed",): float(stats.parallel_failures),
                ("promoted",): float(stats.parallel_promoted),
                ("dropped",): float(stats.parallel_dropped)}

    def _upstream_stat(self, name: str) -> int:
        upstream = self.relay.upstream
        return int(getattr(upstream, name, 0)) if upstream is not None else 0

    def _upstream_health(self) -> dict[tuple[str, ...], float]:
        upstream = self.relay.upstream
        if upstream is None:
            return {}
        # Usable = the one the session is up with; the others are untried or failed.
        current = upstream.current_spec()
        names = self.relay.upstream_names
        return {(spec_label(spec, names),): float(spec is current) for spec in upstream.servers}

    def _upstream_heartbeats(self) -> dict[tuple[str, ...], float]:
        upstream = self.relay.upstream
        if upstream is None:
            return {}
        stats = upstream.stats
        return {("upstream", "sent"): float(stats.heartbeats_sent),
                ("upstream", "answered"): float(stats.heartbeats_answered),
                ("upstream", "missed"): float(max(0, stats.heartbeats_sent
                                                  - stats.heartbeats_answered)),
                ("upstream", "received"): float(stats.server_heartbeats)}

    def _relayed_active(self) -> int:
        return self.relay.table.in_force(self.relay.wall_clock())

    def _relayed_by_state(self) -> dict[tuple[str, ...], float]:
        return {(state,): float(n) for state, n in self.relay.table.by_state().items()}

    def _relayed_section(self) -> dict[str, object]:
        now = self.relay.wall_clock()
        rows: list[dict[str, object]] = []
        table = self.relay.table
        # Without a pass over the table: a gateway may hold a million records.
        for record in table.first(STATUS_ROWS):
            left = None if record.expires_at is None else max(0, int(record.expires_at - now))
            rows.append({"cuid": record.cuid, "mid": record.mid, "upstream": record.upstream,
                         "installed": record.confirmed, "withdrawing": record.withdrawing,
                         "preconfigured": not record.trigger_mitigation,
                         "activated_by_signal_loss": record.activated_by_loss,
                         "lifetime": left})
        out: dict[str, object] = {"count": len(table),
                                  "active": table.clients_in_force(now),
                                  "observations": len(self.relay.observations),
                                  "list": rows}
        if len(table) > len(rows):
            out["truncated"] = True
        return out

    # --- sessions and timers -----------------------------------------------------------------

    def forget(self, session: SignalSession, reason: str) -> None:
        self._cdid_logged.discard(session.dots.id)
        for token in list(session.observations):
            self._unsubscribe(session, token)
        super().forget(session, reason)

    def _client_lost(self, event: SessionLost) -> None:
        self.relay.client_lost(event.cuids)

    def _on_tick(self) -> None:
        try:
            self.relay.tick()
        except Exception:
            log.exception("relay housekeeping failed")
        super()._on_tick()

    def start(self) -> None:
        super().start()
        self._spawn(self._connect_upstream())
        for job in self.background:
            self._spawn(job())

    async def _connect_upstream(self) -> None:
        """Establish the upstream session now rather than at the first request, so the
        relayed mitigations on record are re-installed at once (and retry as RFC 9132 §4.7
        allows while no upstream server answers)."""
        upstream = self.relay.upstream
        if upstream is None:
            return
        backoff = upstream.backoff
        while not upstream.connected:
            try:
                await upstream.connect()
            except NetworkError as exc:
                at = backoff.attempt_failed(self.clock())
                log_event(log, logging.WARNING, "upstream.unreachable", "no upstream DOTS "
                          "server reachable (`dots-gateway reconnect` tries now)",
                          reason=str(exc), retry_in=round(at - self.clock()))
                await upstream.backoff_wait(max(1.0, at - self.clock()))
                continue
            backoff.succeeded()

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        super().stop()

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.relay.upstream is not None:
            await self.relay.upstream.close()
        await self.relay.close()
        if self.relay.database is not None:
            self.relay.database.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed", exc_info=task.exception())


class _BadOption(DotsProtocolError):
    """RFC 7252 §5.4.1 / RFC 8768 §3: a malformed Hop-Limit is a bad option (4.02)."""

    code = Code.BAD_OPTION


def _method_name(code: int) -> str:
    try:
        return Method(code).name
    except ValueError:
        return str(code)
