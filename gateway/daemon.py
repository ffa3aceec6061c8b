"""The long-running process: endpoints, the server role, signals, reload, shutdown.

``dots-gateway server`` and (in terminal mode) ``dots-gateway run`` call ``serve()``. It
binds every configured address for each configured transport, refuses to start when a port
is taken, reloads its configuration on SIGHUP and ``reload`` (``gateway.reloading``: the
file re-read and checked, credentials, rules and trusted gateways applied, established
sessions re-checked, the CRL file watched), and on SIGTERM/SIGINT closes every session with
close_notify before exiting.

With ``[anycast] enabled`` it also runs ``anycast.manager.AnycastManager``: the anycast
addresses are put in place and nothing is announced before listening; the route is announced
once the health checks pass; SIGTERM/SIGINT and SIGUSR2 (``dots-gateway drain``) withdraw
the route, keep serving for ``anycast.grace`` seconds (a second SIGTERM/SIGINT cuts that
short), then stop. Without it, nothing of that runs and pyroute2 is not even imported.

Operations: the control socket (``gateway.ops.control``; ``status``, ``reload``, and ``drain``
with anycast) is bound first, because it is also the lock that keeps a second daemon off
the same state directory; the metrics endpoint (``gateway.ops.metrics``) starts when
``metrics.listen`` is set. With ``[data_channel]`` (on with the embedded defaults) it also
serves the DOTS data channel over HTTPS (``gateway.server.data_http``; in gateway mode
relayed upstream by ``gateway.relay.data_upstream``). ``start_server`` declares the metric
families and status sections of the server it starts (``RunningServer.metrics`` and
``.control``) and calls the role's ``register_operations`` hook, where the gateway role adds
its upstream ones. ``serve()`` also runs the garbage-collection policy (``[gc]``,
``gateway.ops.gc_runtime``) for the life of the process.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anycast.addresses import anycast_classifier
from gateway import __version__
from gateway.config import Mode, Settings, Transport
from gateway.core_settings import build_server_core, dev_client_rules, redirect_policy
from gateway.credentials import Trust, datagram_limits, server_contexts, stream_limits
from gateway.daemon_status import register_operations, upstream_client
from gateway.dots.authz import Authorizer
from gateway.dots.filters import AclCatalog
from gateway.eventlog import log_event
from gateway.ops.control import ControlProviders, ControlServer
from gateway.ops.gc_runtime import GcRuntime
from gateway.ops.metrics import MetricsServer, Registry
from gateway.relay.data_upstream import build_data_upstream, data_cdid
from gateway.relay.startup import build_gateway_role, choose_mode
from gateway.reloading import Reloader
from gateway.server.data_http import DataChannelServer, start_data_channel
from gateway.server.data_store import DataStoreDatabase
from gateway.server.mitigator import Mitigator, build_mitigator
from gateway.server.persistence import MitigationDatabase
from gateway.server.role import ServerRole
from gateway.transport.dtls_server import DtlsServer
from gateway.transport.openssl_ffi import openssl_version
from gateway.transport.tls_stream import TlsServer
from gateway.transport.udp import PortInUse

log = logging.getLogger(__name__)


def _no_anycast(_local: object) -> bool:
    return False


@dataclass
class RunningServer:
    role: ServerRole
    dtls: DtlsServer | None
    tls: TlsServer | None
    mitigator: Mitigator
    database: MitigationDatabase
    #: ``is_anycast(local_address)``: did a session arrive on an anycast address?
    is_anycast: Callable[[object], bool] = _no_anycast
    #: Metric families served on ``metrics.listen`` (``gateway.ops.metrics.daemon_metrics``).
    metrics: Registry = field(default_factory=Registry)
    #: Status sections and actions of the control socket.
    control: ControlProviders = field(default_factory=ControlProviders)
    mode: Mode = Mode.TERMINAL
    started_at: float = field(default_factory=time.time)
    #: The configuration in force and its reload (set by ``start_server``).
    reloader: Reloader | None = None
    #: The RFC 8783 data channel (HTTPS), None when ``[data_channel]`` is off.
    data: DataChannelServer | None = None

    @property
    def addresses(self) -> list[str]:
        out = []
        if self.dtls is not None:
            out += [f"coaps://{a}" for a in self.dtls.bound]
        if self.tls is not None:
            out += [f"coaps+tcp://{a}" for a in self.tls.bound]
        if self.data is not None:
            out += self.data.urls
        return out

    async def stop(self) -> None:
        if self.reloader is not None:
            await self.reloader.stop()
        self.role.stop()
        await self.role.aclose()  # the gateway's upstream session and relay state
        if self.dtls is not None:
            await self.dtls.stop()
        if self.tls is not None:
            await self.tls.stop()
        if self.data is not None:
            await self.data.aclose()
        await self.mitigator.aclose()  # scripts in flight finish; their reports are saved
        self.database.sync(self.role.core.store)
        self.database.close()


async def start_server(settings: Settings, *,
                       reread: Callable[[], Settings] | None = None,
                       acl_catalog: AclCatalog | None = None) -> RunningServer:
    """Bind and start serving; raises (PortInUse, OpenSSLError, ...) on a bad start.
    ``reread``: how a reload reads the configuration (default: ``settings.source`` again).
    ``acl_catalog``: the clients' ACLs (the data channel's, RFC 8783) that mitigation
    requests may activate (RFC 9133); None: no ACL exists, an acl-list naming one is 4.04."""
    contexts = server_contexts(settings)
    trust = Trust.load(contexts.dtls.credentials)
    if contexts.dev_pki is not None:
        pki = contexts.dev_pki
        log.info("dev PKI in %s (client cuid %s, PSK identity %s)", pki.directory,
                 pki.client_cuid, pki.psk_identity)
    dev_rules = dev_client_rules(contexts.dev_pki)
    now = time.monotonic()
    core = build_server_core(settings, wall_offset=time.time() - now, extra_rules=dev_rules)
    # Saved mitigations come back before anything listens; the ApplyMitigation commands for
    # the active ones reach the mitigator with the role's first core outputs (tick or pump).
    database = MitigationDatabase.in_state_dir(settings.general.state_dir)
    # The data channel's store (same file) before the role: it is also the signal channel's
    # ACL catalog (RFC 9133) and alias book.
    data_store = (DataStoreDatabase.in_state_dir(settings.general.state_dir)
                  if settings.data_channel.enabled else None)
    trusted = frozenset(settings.trusted_gateways.identities)
    mode, upstreams, discovery = await choose_mode(settings)
    if acl_catalog is None and data_store is not None and mode is Mode.TERMINAL:
        # RFC 9133: the ACLs a mitigation request activates are the ones the client made
        # over our data channel. In gateway mode acl-lists are relayed: the upstream checks.
        acl_catalog = data_store
    role_options: dict[str, Any] = dict(
        trusted_gateways=trusted, database=database, redirect=redirect_policy(settings),
        is_anycast=anycast_classifier(settings.anycast.addresses),
        max_observations=settings.session.max_observations, acl_catalog=acl_catalog)
    role: ServerRole
    if mode is Mode.GATEWAY:
        role = build_gateway_role(settings, core, upstreams, discovery, **role_options)
    else:
        role = ServerRole(core, **role_options)
    hosts = [(str(address), settings.server.port) for address in settings.server.addresses]
    dtls = tls = None
    data: DataChannelServer | None = None
    try:
        database.restore_into(core.store, now)
        database.restore_telemetry_into(core.telemetry)
        mitigator = build_mitigator(settings, role.mitigator_status)
        role.mitigator = mitigator
        if Transport.UDP in settings.server.transports:
            dtls = DtlsServer(contexts.dtls, role.on_session, datagram_limits(settings.limits))
            await dtls.start(hosts)
        if Transport.TCP in settings.server.transports:
            tls = TlsServer(contexts.tls, role.on_session, stream_limits(settings.limits))
            await tls.start(hosts)
        if settings.data_channel.enabled:
            relay_options: dict[str, Any] = {}
            if mode is Mode.GATEWAY:  # checked here, relayed upstream (RFC 8783 §3)
                relay_options = dict(upstream=build_data_upstream(settings, discovery),
                                     cdid=data_cdid(settings))
            data = await start_data_channel(
                settings, contexts.tls.credentials,
                lambda: role.core.authorizer or Authorizer(()),  # no rules: nobody
                lambda: frozenset(role.trusted_gateways), store=data_store, **relay_options)
            # Aliases in mitigation requests (RFC 9132 §4.4.1.3): ours in terminal mode; in
            # gateway mode they live upstream, which answers 4.00 for one it does not know.
            store = data_store
            assert store is not None
            core.known_alias = ((lambda cuid, name: store.alias(cuid, name) is not None)
                                if mode is Mode.TERMINAL else (lambda cuid, name: True))
    except BaseException:
        if dtls is not None:
            await dtls.stop()
        if tls is not None:
            await tls.stop()
        if data_store is not None:
            data_store.close()
        database.close()
        raise
    server = RunningServer(role, dtls, tls, mitigator, database, mode=mode, data=data)
    server.reloader = Reloader(server, settings, trust, reread)
    register_operations(server, settings)
    role.register_operations(server.metrics, server.control)
    role.start()
    server.reloader.start()
    return server


# --- operations: metrics and the control socket ------------------------------------------------

class Operations:
    """The control socket and the metrics endpoint of one daemon run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        starting = ControlProviders(status_sections={"daemon": lambda: {
            "pid": os.getpid(), "version": __version__, "state": "starting"}})
        self.control = ControlServer(settings.control.socket, starting)
        self.metrics: MetricsServer | None = None
        # The process's garbage-collection policy ([gc], gateway.ops.gc_policy): part of
        # the daemon's run, not of start_server, which tests also call in their own process.
        self.gc = GcRuntime(freeze=settings.gc.freeze,
                            audit_interval=float(settings.gc.audit_interval or 0) or None)

    async def open_control(self) -> None:
        """First thing at start: a live daemon on the socket means the state directory is
        taken (ControlSocketBusy, a PortInUse)."""
        await self.control.start()

    async def attach(self, server: RunningServer) -> None:
        """Serve ``server``'s sections and metrics; PortInUse when metrics.listen is taken."""
        self.gc.register(server.metrics, server.control)
        self.gc.start()
        self.control.providers = server.control
        listen = self.settings.metrics.listen
        if listen is None:
            return
        host, port = listen
        metrics = MetricsServer(server.metrics, host, port)
        try:
            await metrics.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(exc.errno, f"metrics.listen {host}:{port} is already in "
                                "use") from None
            raise
        self.metrics = metrics
        log.info("metrics on http://%s/metrics", " ".join(
            f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in metrics.bound))

    async def close(self) -> None:
        """Stop both (again: nothing happens)."""
        self.gc.stop()
        if self.metrics is not None:
            await self.metrics.stop()
        await self.control.stop()


async def serve(settings: Settings, *, ready: Any = None,
                reread: Callable[[], Settings] | None = None) -> None:
    """Run until SIGTERM or SIGINT. ``ready`` (optional callable) gets the RunningServer;
    ``reread`` is how SIGHUP and ``reload`` read the configuration again."""
    ops = Operations(settings)
    await ops.open_control()
    try:
        if settings.anycast.enabled:
            await _serve_anycast(settings, ready, ops, reread)
        else:
            await _serve(settings, ready, ops, reread)
    finally:
        await ops.close()


async def _serve(settings: Settings, ready: Any, ops: Operations,
                 reread: Callable[[], Settings] | None) -> None:
    server = await start_server(settings, reread=reread)
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    # The handlers are in place before the "serving" line (a supervisor or test may signal
    # as soon as it reads it) and stay until everything is closed: a second SIGTERM must not
    # kill the process half-way (sessions without close_notify, the control socket left).
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, request_stop)
    assert server.reloader is not None
    loop.add_signal_handler(signal.SIGHUP, server.reloader.reload_logged)
    try:
        await ops.attach(server)
        _announce(server, ready)
        await stop
    finally:
        log_event(log, logging.INFO, "daemon.stopping", "shutting down")
        try:
            await server.stop()
            await ops.close()
        finally:
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def _announce(server: RunningServer, ready: Any) -> None:
    # One line each on the log and on stdout (where supervisors, tests and `make run` look).
    log_event(log, logging.INFO, "daemon.serving", "serving " + " ".join(server.addresses),
              addresses=server.addresses, mode=server.mode.value, openssl=openssl_version())
    print("dots-gateway serving " + " ".join(server.addresses), flush=True)
    if ready is not None:
        ready(server)


async def _serve_anycast(settings: Settings, ready: Any, ops: Operations,
                         reread: Callable[[], Settings] | None) -> None:
    """``serve()`` with the anycast manager: listen first, announce last, withdraw first."""
    from anycast.manager import AnycastManager, server_checks, session_split

    anycast = AnycastManager.from_settings(settings)
    await anycast.prepare()  # addresses in place, nothing announced (ExaBGP: stdout taken)
    try:
        server = await start_server(settings, reread=reread)
    except BaseException:
        await anycast.close()
        raise
    server.is_anycast = anycast.is_anycast
    # Drain: redirect every live session to unicast before the grace period runs out.
    anycast.on_drain.append(server.role.start_drain)
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[str] = loop.create_future()
    interrupted = asyncio.Event()

    def request_stop(why: str) -> None:
        if stop.done():
            interrupted.set()  # a second request: cut the grace period short
        else:
            stop.set_result(why)

    def drain() -> dict[str, object]:
        request_stop("drain requested")  # the same as SIGUSR2 (``dots-gateway drain``)
        return {"draining": True, "grace": float(settings.anycast.grace)}

    server.control.status_sections["anycast"] = anycast.snapshot
    server.control.actions["drain"] = drain
    _anycast_metrics(server, anycast)
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
    for sig in signals:  # before the "serving" line, as in _serve
        loop.add_signal_handler(sig, request_stop, "drain requested" if sig == signal.SIGUSR2
                                else sig.name)
    assert server.reloader is not None
    loop.add_signal_handler(signal.SIGHUP, server.reloader.reload_logged)
    try:
        await ops.attach(server)
        _announce(server, ready)
        anycast.session_split = lambda: session_split(server, anycast.is_anycast)
        # serve() is the DOTS server itself (terminal role) in both commands today; the
        # relay will pass its count of healthy upstream servers to server_checks.
        upstream = upstream_client(server)
        # A relay without a usable upstream cannot serve its clients: withdraw then.
        healthy = (None if upstream is None
                   else lambda: 1 if upstream.connected else 0)
        anycast.start(server_checks(server, settings, healthy))
        why = await stop
        log.info("%s: withdrawing the anycast route, then stopping", why)
        await anycast.drain(interrupted)
    finally:
        log_event(log, logging.INFO, "daemon.stopping", "shutting down")
        try:
            await server.stop()
            await anycast.close()
            await ops.close()
        finally:
            for sig in (*signals, signal.SIGHUP):
                loop.remove_signal_handler(sig)


def _anycast_metrics(server: RunningServer, anycast: Any) -> None:
    """Route and health state of the anycast manager, read from its snapshot at scrape."""
    route = server.metrics.gauge("dots_gateway_anycast_route_announced",
                                 "1 while the anycast route is announced, else 0.")
    route.add_source(lambda: {(): float(anycast.snapshot().get("route") == "announced")})
    state = server.metrics.gauge("dots_gateway_anycast_state", "Anycast health state "
                                 "(1 for the current one).", ("state",))
    state.add_source(lambda: {(str(anycast.snapshot().get("state")),): 1.0})
