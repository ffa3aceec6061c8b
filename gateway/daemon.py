"""The long-running process: endpoints, the server role, signals, reload, shutdown.

``dots-gateway server`` and (in terminal mode) ``dots-gateway run`` call ``serve()``. It
binds every configured address for each configured transport, refuses to start when a port
is taken, reloads credentials on SIGHUP (new handshakes use them; established sessions are
kept), and on SIGTERM/SIGINT closes every session with close_notify before exiting.

With ``[anycast] enabled`` it also runs ``anycast.manager.AnycastManager``: the anycast
addresses are put in place and nothing is announced before listening; the route is announced
once the health checks pass; SIGTERM/SIGINT and SIGUSR2 (``dots-gateway drain``) withdraw
the route, keep serving for ``anycast.grace`` seconds (a second SIGTERM/SIGINT cuts that
short), then stop. Without it, nothing of that runs and pyroute2 is not even imported.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anycast.addresses import anycast_classifier
from gateway.config import Mode, RedirectTargetSettings, Settings, Transport
from gateway.core_settings import build_server_core
from gateway.credentials import datagram_limits, server_contexts, stream_limits
from gateway.dots.authz import ANY_NAME, EVERYWHERE, ClientRule
from gateway.gateway_daemon import build_gateway_role, choose_mode
from gateway.mitigator import Mitigator, build_mitigator
from gateway.persistence import MitigationDatabase
from gateway.server_role import ServerRole
from gateway.transport.dtls_server import DtlsServer
from gateway.transport.tls_stream import TlsServer
from redirect.policy import AnycastMode, RedirectPolicy, Target

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

    @property
    def addresses(self) -> list[str]:
        out = []
        if self.dtls is not None:
            out += [f"coaps://{a}" for a in self.dtls.bound]
        if self.tls is not None:
            out += [f"coaps+tcp://{a}" for a in self.tls.bound]
        return out

    async def stop(self) -> None:
        self.role.stop()
        await self.role.aclose()  # the gateway's upstream session and relay state
        if self.dtls is not None:
            await self.dtls.stop()
        if self.tls is not None:
            await self.tls.stop()
        await self.mitigator.aclose()  # scripts in flight finish; their reports are saved
        self.database.sync(self.role.core.store)
        self.database.close()


def redirect_policy(settings: Settings) -> RedirectPolicy:
    r = settings.redirect

    def target(t: RedirectTargetSettings) -> Target:
        return Target(t.name, t.addresses)

    return RedirectPolicy(
        mode=AnycastMode(str(r.mode)),
        own=Target(r.name, r.addresses) if r.name else None,
        pool=tuple(target(t) for t in r.pool),
        static={t.cuid: target(t) for t in r.static if t.cuid},
        ttl=r.ttl,
        capacity=r.capacity,
    )


async def start_server(settings: Settings) -> RunningServer:
    """Bind and start serving; raises (PortInUse, OpenSSLError, ...) on a bad start."""
    contexts = server_contexts(settings)
    dev_rules: list[ClientRule] = []
    if contexts.dev_pki is not None:
        pki = contexts.dev_pki
        log.info("dev PKI in %s (client cuid %s, PSK identity %s)", pki.directory,
                 pki.client_cuid, pki.psk_identity)
        # A first try works: the dev identities may protect anything (issue 5, dev defaults).
        dev_rules = [
            ClientRule("dev-client", cuid=pki.client_cuid, prefixes=EVERYWHERE,
                       fqdns=(ANY_NAME,)),
            ClientRule("dev-psk", psk_identity=pki.psk_identity, prefixes=EVERYWHERE,
                       fqdns=(ANY_NAME,)),
        ]
    now = time.monotonic()
    core = build_server_core(settings, wall_offset=time.time() - now, extra_rules=dev_rules)
    # Saved mitigations come back before anything listens; the ApplyMitigation commands for
    # the active ones reach the mitigator with the role's first core outputs (tick or pump).
    database = MitigationDatabase.in_state_dir(settings.general.state_dir)
    trusted = frozenset(settings.trusted_gateways.identities)
    role_options: dict[str, Any] = dict(
        trusted_gateways=trusted, database=database, redirect=redirect_policy(settings),
        is_anycast=anycast_classifier(settings.anycast.addresses))
    mode, upstreams, discovery = await choose_mode(settings)
    role: ServerRole
    if mode is Mode.GATEWAY:
        role = build_gateway_role(settings, core, upstreams, discovery, **role_options)
    else:
        role = ServerRole(core, **role_options)
    hosts = [(str(address), settings.server.port) for address in settings.server.addresses]
    dtls = tls = None
    try:
        database.restore_into(core.store, now)
        mitigator = build_mitigator(settings, role.mitigator_status)
        role.mitigator = mitigator
        if Transport.UDP in settings.server.transports:
            dtls = DtlsServer(contexts.dtls, role.on_session, datagram_limits(settings.limits))
            await dtls.start(hosts)
        if Transport.TCP in settings.server.transports:
            tls = TlsServer(contexts.tls, role.on_session, stream_limits(settings.limits))
            await tls.start(hosts)
    except BaseException:
        if dtls is not None:
            await dtls.stop()
        if tls is not None:
            await tls.stop()
        database.close()
        raise
    role.start()
    return RunningServer(role, dtls, tls, mitigator, database)


def reload_credentials(server: RunningServer, settings: Settings) -> None:
    """SIGHUP: new certificates, CAs, CRL and PSKs for new handshakes; sessions stay."""
    try:
        contexts = server_contexts(settings)
    except Exception as exc:
        log.error("reload failed, keeping the old credentials: %s", exc)
        return
    if server.dtls is not None:
        server.dtls.replace_context(contexts.dtls)
    if server.tls is not None:
        server.tls.context = contexts.tls
    log.info("credentials reloaded")


async def serve(settings: Settings, *, ready: Any = None) -> None:
    """Run until SIGTERM or SIGINT. ``ready`` (optional callable) gets the RunningServer."""
    if settings.anycast.enabled:
        await _serve_anycast(settings, ready)
        return
    server = await start_server(settings)
    for address in server.addresses:
        log.info("serving %s", address)
    print("dots-gateway serving " + " ".join(server.addresses), flush=True)
    if ready is not None:
        ready(server)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGHUP, reload_credentials, server, settings)
    try:
        await stop
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("shutting down")
        await server.stop()


async def _serve_anycast(settings: Settings, ready: Any) -> None:
    """``serve()`` with the anycast manager: listen first, announce last, withdraw first."""
    from anycast.manager import AnycastManager, server_checks, session_split

    anycast = AnycastManager.from_settings(settings)
    await anycast.prepare()  # addresses in place, nothing announced (ExaBGP: stdout taken)
    try:
        server = await start_server(settings)
    except BaseException:
        await anycast.close()
        raise
    server.is_anycast = anycast.is_anycast
    # Drain: redirect every live session to unicast before the grace period runs out.
    anycast.on_drain.append(server.role.start_drain)
    for address in server.addresses:
        log.info("serving %s", address)
    print("dots-gateway serving " + " ".join(server.addresses), flush=True)
    if ready is not None:
        ready(server)
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[str] = loop.create_future()
    interrupted = asyncio.Event()

    def request_stop(why: str) -> None:
        if stop.done():
            interrupted.set()  # a second request: cut the grace period short
        else:
            stop.set_result(why)

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
    for sig in signals:
        loop.add_signal_handler(sig, request_stop, "drain requested" if sig == signal.SIGUSR2
                                else sig.name)
    loop.add_signal_handler(signal.SIGHUP, reload_credentials, server, settings)
    anycast.session_split = lambda: session_split(server, anycast.is_anycast)
    # serve() is the DOTS server itself (terminal role) in both commands today; the relay
    # will pass its count of healthy upstream servers to server_checks.
    anycast.start(server_checks(server, settings))
    try:
        why = await stop
        log.info("%s: withdrawing the anycast route, then stopping", why)
        await anycast.drain(interrupted)
    finally:
        for sig in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        log.info("shutting down")
        await server.stop()
        await anycast.close()
