"""What a running daemon shows operators: its metric families and its control-socket status
sections (``dots-gateway status``), fed from the server's own counts at scrape or request
time, so nothing is counted twice and a scrape costs no pass over the hot path.

``gateway.daemon.start_server`` calls ``register_operations`` for each server it starts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.config import Mode, Settings
from gateway.dots.mitigation_lifecycle import ACTIVE_STATES
from gateway.dots.telemetry import telemetry_counts
from gateway.ops.metrics import DaemonMetrics, daemon_metrics
from gateway.ops.process_metrics import register_process_metrics
from gateway.relay.role import GatewayRole
from gateway.server.data_http import DataChannelServer
from gateway.transport.openssl_ffi import openssl_version_number

if TYPE_CHECKING:
    from gateway.daemon import RunningServer


#: Rows of a status list at most (sessions, mitigations); ``count`` still says how many.
STATUS_LIST_LIMIT = 1000


def register_operations(server: RunningServer, settings: Settings) -> None:
    """Declare the daemon's metric families and feed them from the server's own counts (read
    at scrape time), and the control socket's status sections and ``reload``."""
    m = daemon_metrics(server.metrics)
    role = server.role
    build = server.metrics.gauge("dots_gateway_build_info", "Version and mode of the running "
                                 "daemon, and the OpenSSL it runs on (always 1).",
                                 ("version", "mode", "openssl"))
    build.set(1, __version__, server.mode.value, openssl_version_number())
    server.metrics.gauge("dots_gateway_start_time_seconds", "Start of the daemon, in seconds "
                         "since the epoch.").set(round(server.started_at, 3))
    register_process_metrics(server.metrics)
    role.observe_request = lambda resource, seconds: m.request_duration.observe(
        seconds, resource if resource in _RESOURCES else "other")  # a bounded label set
    for endpoint, transport in ((server.dtls, "dtls"), (server.tls, "tls")):
        if endpoint is not None:
            endpoint.observe_handshake = _handshake_observer(m, transport)
    m.sessions.add_source(lambda: _session_counts(server))
    m.handshakes.add_source(lambda: _handshake_counts(server))
    m.heartbeats.add_source(lambda: {("downstream", k): v for k, v in role.heartbeats.items()})
    m.requests.add_source(lambda: {(_dotted(c),): v for c, v in role.answered.items()})
    m.redirects.add_source(lambda: {(k,): v for k, v in role.redirects.items()})
    m.mitigations.add_source(lambda: _mitigation_counts(server))
    server.metrics.gauge(
        "dots_gateway_telemetry_entries", "RFC 9244 telemetry held for clients, by kind: "
        "setups (telemetry-config, pipe, baseline: one per tsid) and pre-mitigation (one "
        "per active tmid). Terminal mode; a gateway keeps none (its upstream does).",
        ("kind",)
    ).add_source(lambda: telemetry_counts(role.core.telemetry))
    m.mitigations_active.add_source(lambda: {(): sum(
        1 for r in role.core.store.records() if r.state in ACTIVE_STATES)})
    server.metrics.counter(
        "dots_gateway_observations_declined_total", "Observe registrations answered without "
        "Observe: the session held [session] max_observations already (RFC 7641 §4.1)."
    ).add_source(lambda: {(): role.observations_declined})
    server.metrics.counter(
        "dots_gateway_mitigations_refused_total", "New mitigation requests refused with 5.03: "
        "their client held [mitigation] max_requests_per_client already."
    ).add_source(lambda: {(): role.core.store.refused_over_cap})
    server.metrics.counter(
        "dots_gateway_acl_activations_total", "ACL activation types set by mitigation "
        "requests (RFC 9133), by result: done, failed (the request was answered 5.03).",
        ("result",)
    ).add_source(lambda: {("done",): role.core.acl_activations,
                          ("failed",): role.core.failed_activations})
    m.save_failures.add_source(lambda: {("mitigations",): float(server.database.save_failures)})
    if server.data is not None:
        data = server.data
        m.save_failures.add_source(lambda: {("data_channel",): float(data.store.save_failures)})
        server.metrics.counter(
            "dots_gateway_data_channel_requests_total", "Data-channel (RFC 8783) requests "
            "answered, by HTTP status.", ("status",)
        ).add_source(lambda: {(str(k),): float(v) for k, v in data.core.answered.items()})
        server.metrics.gauge(
            "dots_gateway_data_channel_entries", "Registered data-channel clients and their "
            "aliases and ACLs.", ("kind",)
        ).add_source(lambda: _data_entry_counts(data))
        server.control.status_sections["data_channel"] = lambda: _data_section(data)
    m.unsaved_requests.add_source(lambda: {("mitigations",): float(role.core.unsaved_requests)})
    m.saves.add_source(lambda: {("mitigations",): float(server.database.saves)})
    m.fsyncs.add_source(lambda: {("mitigations",): float(server.database.fsyncs)})
    refused = server.metrics.counter(
        "dots_gateway_connections_refused_total", "New sessions refused by a limit, by "
        "transport and limit (sessions, handshakes, rate, source).", ("transport", "limit"))
    refused.add_source(lambda: _refusal_counts(server))
    server.metrics.counter(
        "dots_gateway_handshakes_evicted_total", "Half-open DTLS handshakes dropped to make "
        "room for a source with fewer pending (handshake table full)."
    ).add_source(lambda: {(): float(server.dtls.counters.handshakes_evicted
                                    if server.dtls is not None else 0)})
    server.metrics.counter(
        "dots_gateway_sessions_replaced_total", "DTLS sessions replaced by a new handshake from "
        "the same address (a client restarted on its port, RFC 6347 §4.2.8)."
    ).add_source(lambda: {(): float(server.dtls.counters.sessions_replaced
                                    if server.dtls is not None else 0)})
    server.metrics.counter(
        "dots_gateway_handshake_deadlines_extended_total", "Handshakes past their deadline "
        "whose next step was waiting for this node's handshake workers, given another "
        "deadline instead of being closed, by transport: rising means the workers are behind "
        "(a reconnect storm, or too few cores for [limits] handshake_threads).", ("transport",)
    ).add_source(lambda: _extended_counts(server))
    dropped = server.metrics.counter(
        "dots_gateway_datagrams_dropped_total", "Datagrams dropped: garbage and truncated "
        "before DTLS; resend, a handshake flight the client sent again while the same flight "
        "still waited for the handshake workers.", ("reason",))
    dropped.add_source(lambda: _dropped_counts(server))
    record_layer = server.metrics.gauge(
        "dots_gateway_dtls_sessions_by_record_layer", "Established DTLS sessions by who "
        "protects their records: openssl (until the client's first application data, or a "
        "non-AEAD suite) or gateway (keys taken over, OpenSSL's state freed).", ("layer",))
    record_layer.add_source(lambda: _record_layer_counts(server))
    withdrawn = server.metrics.counter(
        "dots_gateway_sessions_withdrawn_total", "Established sessions closed because their "
        "credential or authorization ended (PSK or CA withdrawn, certificate revoked or "
        "expired, [[clients]] rule or trusted gateway removed), by reason.", ("reason",))
    withdrawn.add_source(lambda: {(k,): v for k, v in role.standing.withdrawn.items()})

    c = server.control
    c.status_sections["daemon"] = lambda: _daemon_section(server, settings)
    c.status_sections["sessions"] = lambda: _sessions_section(server)
    c.status_sections["mitigations"] = lambda: _mitigations_section(server)
    c.status_sections["upstreams"] = lambda: _upstreams_section(server)
    reloader = server.reloader
    if reloader is not None:
        c.actions["reload"] = reloader.reload


def _data_entry_counts(data: DataChannelServer) -> Mapping[tuple[str, ...], float]:
    clients = data.store.clients().values()
    counts: dict[tuple[str, ...], float] = {
        ("clients",): float(len(clients)),
        ("aliases",): float(sum(len(c.aliases) for c in clients)),
        ("acls",): float(sum(len(c.acls) for c in clients))}
    return counts


def _data_section(data: DataChannelServer) -> dict[str, object]:
    out: dict[str, object] = {"urls": data.urls}
    if data.upstream is not None:  # gateway mode
        servers: list[Any] = getattr(data.upstream, "servers", lambda: [])()
        out["upstream"] = servers[0].url if servers else None
    else:
        out.update({k[0]: int(v) for k, v in _data_entry_counts(data).items()})
    out["answered"] = {str(k): v for k, v in sorted(data.core.answered.items())}
    return out
#: The ``resource`` label of request durations: the signal channel's resources; any other
#: path a client sends is counted as "other" (labels must not grow with client input).
_RESOURCES = frozenset({"mitigate", "config", "hb", "tm-setup", "tm"})


def _handshake_observer(m: DaemonMetrics, transport: str) -> Callable[[float], None]:
    return lambda seconds: m.handshake_duration.observe(seconds, "downstream", transport)


def _dotted(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d}"


def _session_counts(server: RunningServer) -> Mapping[tuple[str, ...], float]:
    counts: dict[tuple[str, ...], float] = {("downstream", "dtls"): 0.0,
                                            ("downstream", "tls"): 0.0}
    for session in server.role.sessions.values():
        key = ("downstream", str(session.conn.kind.value))
        counts[key] = counts.get(key, 0.0) + 1
    upstream = _upstream_session(server)
    if upstream is not None:
        key = ("upstream", str(upstream["transport"]))
        counts[key] = counts.get(key, 0.0) + 1
    return counts


def _handshake_counts(server: RunningServer) -> Mapping[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    if server.dtls is not None:
        d = server.dtls.counters
        out[("downstream", "dtls", "completed")] = d.handshakes_completed
        out[("downstream", "dtls", "failed")] = d.handshakes_failed
        out[("downstream", "dtls", "timed_out")] = d.handshakes_timed_out
    if server.tls is not None:
        t = server.tls.counters
        out[("downstream", "tls", "completed")] = t.handshakes_completed
        out[("downstream", "tls", "failed")] = t.handshakes_failed
        out[("downstream", "tls", "timed_out")] = t.handshakes_timed_out
    return out


def _refusal_counts(server: RunningServer) -> Mapping[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    if server.dtls is not None:
        d = server.dtls.counters
        out[("dtls", "sessions")] = d.refused_session_limit
        out[("dtls", "handshakes")] = d.refused_handshake_limit
        out[("dtls", "rate")] = d.refused_rate_limit
        out[("dtls", "source")] = d.refused_source_limit
    if server.tls is not None:
        t = server.tls.counters
        out[("tls", "sessions")] = t.refused_connection_limit
        out[("tls", "handshakes")] = t.refused_handshake_limit
    return out


def _extended_counts(server: RunningServer) -> Mapping[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    if server.dtls is not None:
        out[("dtls",)] = server.dtls.counters.handshakes_waiting_on_us
    if server.tls is not None:
        out[("tls",)] = server.tls.counters.handshakes_waiting_on_us
    return out


def _dropped_counts(server: RunningServer) -> Mapping[tuple[str, ...], float]:
    if server.dtls is None:
        return {}
    d = server.dtls.counters
    return {("garbage",): d.dropped_garbage, ("truncated",): d.dropped_truncated,
            ("resend",): d.handshake_resends_dropped}


def _record_layer_counts(server: RunningServer) -> Mapping[tuple[str, ...], float]:
    counts = {("openssl",): 0.0, ("gateway",): 0.0}
    if server.dtls is not None:
        for conn in server.dtls.sessions.values():
            if conn.established:
                counts[("gateway",) if conn.session.protects_records else ("openssl",)] += 1
    return counts


def _mitigation_counts(server: RunningServer) -> Mapping[tuple[str, ...], float]:
    counts: dict[tuple[str, ...], float] = {}
    for record in server.role.core.store.records():
        key = (record.status.label,)
        counts[key] = counts.get(key, 0.0) + 1
    return counts


def _daemon_section(server: RunningServer, settings: Settings) -> dict[str, object]:
    fell_back = settings.general.mode is Mode.GATEWAY and server.mode is Mode.TERMINAL
    mode = "terminal (gateway fallback: no upstream)" if fell_back else server.mode.value
    return {"pid": os.getpid(), "version": __version__, "mode": mode,
            "node_name": settings.general.node_name,
            "started": round(server.started_at, 3),
            "uptime": round(time.time() - server.started_at, 1),
            "state_dir": str(settings.general.state_dir), "addresses": server.addresses}


def _sessions_section(server: RunningServer) -> dict[str, object]:
    rows: list[dict[str, object]] = []
    sessions = list(server.role.sessions.values())
    now = server.role.clock()
    for session in sessions[:STATUS_LIST_LIMIT]:
        requester = session.dots.requester
        rows.append({"side": "downstream", "transport": session.conn.kind.value,
                     "peer": str(session.conn.remote), "local": str(session.conn.local),
                     "client": session.identity, "cuid": requester.credential_id,
                     "anycast": bool(server.is_anycast(session.conn.local)),
                     **_session_liveness(session.dots.heartbeat, now)})
    upstream = _upstream_session(server)
    if upstream is not None:
        rows.append(upstream)
    out: dict[str, object] = {"count": len(sessions) + (upstream is not None), "list": rows}
    if len(sessions) > STATUS_LIST_LIMIT:
        out["truncated"] = True
    return out


def _session_liveness(monitor: Any, now: float) -> dict[str, object]:
    """``idle``: seconds since the client's last message; ``lost_in``: seconds left before
    the signal is declared lost if nothing more arrives (RFC 9132 §4.7: missing-hb-allowed
    x heartbeat-interval without any traffic; None with heartbeats off or once lost)."""
    idle = max(0.0, now - monitor.last_traffic_at)
    lost_in = None
    if monitor.get_timer() is not None and monitor.interval:
        window = monitor.missing_hb_allowed * monitor.interval
        lost_in = max(0, int(window - idle))
    return {"idle": int(idle), "lost_in": lost_in}


def _mitigations_section(server: RunningServer) -> dict[str, object]:
    now = server.role.clock()
    rows: list[dict[str, object]] = []
    count = active = 0
    for record in server.role.core.store.records():
        count += 1
        active += record.state in ACTIVE_STATES
        if len(rows) >= STATUS_LIST_LIMIT:
            continue
        scope = record.scope
        # As a GET says it: a withdrawn active mitigation ends with its
        # active-but-terminating period, whatever its lifetime.
        rows.append({"cuid": record.cuid, "mid": record.mid, "status": record.status.label,
                     "lifetime": record.lifetime_left(now),
                     "targets": [str(p) for p in scope.target_prefix] + list(
                         scope.target_fqdn)})
    out: dict[str, object] = {"count": count, "active": active, "list": rows}
    if count > len(rows):
        out["truncated"] = True
    return out


def upstream_client(server: RunningServer) -> Any:
    return server.role.relay.upstream if isinstance(server.role, GatewayRole) else None


def _upstream_session(server: RunningServer) -> dict[str, object] | None:
    """The gateway's own upstream session as a sessions row (None: terminal, or none up)."""
    upstream = upstream_client(server)
    if upstream is None or not upstream.connected:
        return None
    name = str(upstream.name or "")
    return {"side": "upstream", "transport": "tls" if name.startswith("coaps+tcp:") else "dtls",
            "peer": name, "local": "", "client": "(this gateway)", "cuid": "",
            "anycast": False}


def _upstreams_section(server: RunningServer) -> dict[str, object]:
    """The upstream servers in the order they are tried (the relay may replace this)."""
    upstream = upstream_client(server)
    if upstream is None:
        return {"count": 0, "list": []}
    rows = upstream.status_rows()
    age = (None if upstream.last_error_at is None
           else round(upstream.clock() - upstream.last_error_at, 1))
    next_in = upstream.next_attempt_in
    next_at = (None if next_in is None else time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + next_in)))
    for row in rows:  # one attempt tries them all, in this order
        row["next_attempt_at"] = next_at
    return {"count": len(rows), "in_use": upstream.name, "connected": upstream.connected,
            "failovers": upstream.failovers, "last_error": upstream.last_error,
            "last_error_age": age,
            "next_attempt_in": None if next_in is None else round(next_in, 1),
            "next_attempt_at": next_at, "list": rows}
