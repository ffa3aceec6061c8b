"""Gateway mode of the daemon: the relay, its upstream client and where upstreams come from.

``start_server`` (``gateway.daemon``) calls ``build_gateway_role`` when ``general.mode`` is
``gateway``. The upstream servers are the ``[[upstream]]`` entries, in order, followed by
what the discovery engine finds (it runs when no ``[[upstream]]`` is configured or when
``discovery.collect_all`` asks for everything). ``choose_mode`` decides at start: gateway
mode with no upstream configured and none discovered within the discovery deadline runs as
the DOTS server itself (terminal mode), as the embedded defaults do.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from certs.devpki import load_dev_pki
from gateway.client.connect import ServerSpec, Transport
from gateway.config import GatewayDomain, Mode, Settings, UpstreamSettings
from gateway.dots.heartbeat import ReconnectBackoff
from gateway.dots.relay import Domain, RelayTable
from gateway.dots.server import DotsServerCore
from gateway.dots.session_config import SessionParameters
from gateway.eventlog import log_event
from gateway.ops.control import ControlProviders
from gateway.ops.metrics import Registry
from gateway.relay.forwarding import GatewayRelay, RelaySettings, spec_label
from gateway.relay.role import GatewayRole
from gateway.relay.store import RelayDatabase
from gateway.relay.upstream import UpstreamClient
from gateway.transport.tls_context import ClientCredentials

log = logging.getLogger(__name__)

#: How long ``choose_mode`` lets discovery look for upstream servers before starting.
DISCOVERY_DEADLINE = 10.0


class NoUpstreamError(ValueError):
    """Gateway mode found no upstream DOTS server at start and may not fall back."""


class UpstreamCredentialError(ValueError):
    """Gateway mode without a credential for the gateway's own upstream sessions."""


def upstream_credentials(settings: Settings) -> ClientCredentials:
    """The gateway's own identity towards upstream servers (its own certificate or PSK)."""
    g, tls = settings.gateway, settings.tls
    if g.psk_identity is not None and g.psk_key is not None:
        # PSK suites authenticate both ends by the key: no certificate to check.
        return ClientCredentials(server_ca=g.ca or tls.ca, psk_identity=g.psk_identity.encode(),
                                 psk_key=g.psk_key)
    needs_dev = (g.ca or tls.ca) is None or g.cert is None
    dev = load_dev_pki(tls.dev_pki_dir) if needs_dev and tls.dev_pki_dir is not None else None
    ca = g.ca or tls.ca or (dev.ca_cert if dev is not None else None)
    if g.cert is not None and g.key is not None:
        return ClientCredentials(cert_chain=g.cert, private_key=g.key, server_ca=ca)
    if dev is not None:
        return ClientCredentials(cert_chain=dev.client_cert, private_key=dev.client_key,
                                 server_ca=ca)
    raise UpstreamCredentialError("gateway mode needs the gateway's own client credential: set "
                     "gateway.cert and gateway.key (or gateway.psk_identity and "
                     "gateway.psk_key_hex)")


def server_spec(upstream: UpstreamSettings) -> ServerSpec:
    host = str(upstream.address) if upstream.address is not None else upstream.host
    assert host is not None
    transport = Transport.UDP if upstream.transport.value == "udp" else Transport.TCP
    return ServerSpec(host, upstream.port, (transport,), server_name=upstream.server_name)


def upstream_names(settings: Settings) -> dict[ServerSpec, str]:
    """``[[upstream]] name`` by server spec: the label of metrics and log fields."""
    return {server_spec(u): u.name for u in settings.upstream}


def _preferences(settings: Settings) -> SessionParameters | None:
    g = settings.gateway
    if not g.heartbeat_interval and not g.missing_hb_allowed:
        return None
    base = SessionParameters()
    return SessionParameters(
        heartbeat_interval=g.heartbeat_interval or base.heartbeat_interval,
        missing_hb_allowed=g.missing_hb_allowed or base.missing_hb_allowed,
        probing_rate=base.probing_rate, max_retransmit=base.max_retransmit,
        ack_timeout=base.ack_timeout, ack_random_factor=base.ack_random_factor)


#: Relay tables from this size on are frozen out of the garbage collector's way at start.
FREEZE_AT = 10_000


def restored_table(database: RelayDatabase) -> RelayTable:
    """The relay table as saved. The records live as long as the process, so the cyclic
    garbage collector is kept off while they load and they are frozen afterwards
    (``gc.freeze``): with a million records every full collection walked them all, a
    2.4 s stall of the event loop each time (measured), several of them while loading.
    Records removed later are still freed at once (reference counting). Small tables are
    not worth it (and a process that runs many gateways, a test, keeps its cycles)."""
    gc.disable()
    try:
        table = RelayTable()
        table.restore(database.load())
    finally:
        gc.enable()
    if len(table) >= FREEZE_AT:
        gc.freeze()
    return table


def build_gateway_role(settings: Settings, core: DotsServerCore, servers: list[ServerSpec],
                       discovery: UpstreamDiscovery | None = None,
                       **role_options: Any) -> GatewayRole:
    """The downstream role wired to a relay and an upstream client (not connected yet:
    ``GatewayRole.start_upstream`` does that)."""
    g = settings.gateway
    state_dir = settings.general.state_dir
    relay_settings = RelaySettings(
        domain=Domain(g.domain.value), insert_cdid=g.insert_cdid, hop_limit=g.hop_limit,
        identity=g.identity or settings.general.node_name,
        request_timeout=float(g.request_timeout))
    database = RelayDatabase.in_state_dir(state_dir)
    table = restored_table(database)
    relay = GatewayRelay(relay_settings, table, database)
    relay.upstream_names = upstream_names(settings)
    preferred = _preferences(settings)
    upstream = UpstreamClient(
        upstream_credentials(settings), servers, state_dir=state_dir / "upstream",
        on_ready=relay.upstream_ready, is_mitigating=relay.mitigating,
        request_timeout=float(g.request_timeout), preferred_idle=preferred,
        preferred_mitigating=preferred,
        backoff=ReconnectBackoff(g.reconnect_interval, maximum=g.reconnect_max_interval),
        names={(server_spec(u).host, u.port): u.name for u in settings.upstream if u.name})
    relay.upstream = upstream
    role = GatewayRole(core, relay, **role_options)
    if discovery is not None:
        discovery.upstream = upstream
        role.background.append(discovery.run)
        role.operation_hooks.append(discovery.register_operations)
    log.info("gateway mode: %d relayed mitigations on record, upstream servers: %s "
             "(domain %s, cdid %s)", len(table),
             ", ".join(spec_label(s, relay.upstream_names) for s in servers) or "-",
             g.domain.value, "inserted" if g.insert_cdid and g.domain is GatewayDomain.SERVER
             else "not inserted")
    return role


async def choose_mode(settings: Settings
                      ) -> tuple[Mode, list[ServerSpec], UpstreamDiscovery | None]:
    """Terminal or gateway, the upstream servers known at start, and the discovery that
    keeps them fresh (None when the configuration alone decides; see the docstring)."""
    if settings.general.mode is not Mode.GATEWAY:
        return Mode.TERMINAL, [], None
    servers = [server_spec(u) for u in settings.upstream]
    if servers and not settings.discovery.collect_all:
        return Mode.GATEWAY, servers, None
    discovery = UpstreamDiscovery(settings)
    servers = await discovery.once(DISCOVERY_DEADLINE)
    if not servers:
        await discovery.close()
        if not settings.gateway.fallback_to_terminal:
            raise NoUpstreamError(
                f"no upstream DOTS server configured ([[upstream]]) or discovered within "
                f"{DISCOVERY_DEADLINE:g} s (`dots-gateway discover` shows why); configure one, "
                f"or set gateway.fallback_to_terminal = true to run as the DOTS server itself")
        log.warning("gateway mode: no upstream DOTS server configured or discovered; "
                    "running as the DOTS server itself (terminal mode, "
                    "gateway.fallback_to_terminal)")
        return Mode.TERMINAL, [], None
    return Mode.GATEWAY, servers, discovery


class UpstreamDiscovery:
    """The discovery engine feeding the gateway's upstream list: configured servers first,
    then the candidates in the procedure's order (seed §5), kept fresh for as long as the
    gateway runs (re-runs at validity expiry and after retry waits)."""

    def __init__(self, settings: Settings) -> None:
        from gateway.discovery.engine import DiscoveryEngine, SystemIO, io_settings
        from gateway.discovery.interfaces import list_interfaces, slots_for
        from gateway.discovery.procedure import Procedure
        from gateway.discovery.settings import procedure_settings

        known = list_interfaces()
        d = settings.discovery
        slots, _skipped = slots_for(known, d.interfaces, d.families)
        self.configured = [server_spec(u) for u in settings.upstream]
        psettings = procedure_settings(settings)
        self.io = SystemIO(known, io_settings(settings, psettings))
        self.procedure = Procedure(psettings, slots, time.monotonic())
        self.engine = DiscoveryEngine(self.procedure, self.io, on_event=self._event)
        self.has_slots = bool(slots)
        self.upstream: UpstreamClient | None = None

    def servers(self) -> list[ServerSpec]:
        out = list(self.configured)
        for c in self.procedure.candidates():
            spec = _candidate_spec(c)
            if spec is not None and spec not in out:
                out.append(spec)
        return out

    async def once(self, deadline: float) -> list[ServerSpec]:
        if not self.has_slots:
            return list(self.configured)
        try:
            await asyncio.wait_for(self.engine.run_once(time.monotonic() + deadline),
                                   deadline + 5)
        except (TimeoutError, OSError) as exc:
            log_event(log, logging.WARNING, "discovery.failed", "discovery failed",
                      reason=str(exc))
        return self.servers()

    async def run(self) -> None:
        """Keep discovering; the upstream list follows (the session in use is kept)."""
        if not self.has_slots:
            return
        try:
            await self.engine.run_forever()
        finally:
            await self.io.close()

    async def close(self) -> None:
        await self.io.close()

    def register_operations(self, metrics: Registry, control: ControlProviders) -> None:
        """Seed §11 made visible: candidates built from answers DNSSEC did not validate
        (used with ``discovery.dnssec = "prefer"``) and answers refused (``"require"``),
        as counters and in the ``discovery`` section of ``status``."""
        stats = self.procedure.dnssec_stats
        metrics.counter(
            "dots_gateway_discovery_unvalidated_total",
            "Discovered upstream candidates built from DNS answers DNSSEC did not validate "
            "and used anyway (discovery.dnssec = prefer), by mechanism and DNSSEC status "
            "(insecure, bogus); counted at each discovery run that yields them.",
            ("mechanism", "status"),
        ).add_source(lambda: {k: float(n) for k, n in stats.unvalidated_used.items()})
        metrics.counter(
            "dots_gateway_discovery_dnssec_refused_total",
            "DNS answers discovery refused because DNSSEC did not validate them "
            "(discovery.dnssec = require), by DNSSEC status.", ("status",),
        ).add_source(lambda: {(k,): float(n) for k, n in stats.rejected.items()})
        control.status_sections["discovery"] = self._status

    def _status(self) -> dict[str, object]:
        now = time.monotonic()
        offset = time.time() - now
        stats = self.procedure.dnssec_stats
        return {
            "dnssec": self.procedure.settings.dnssec.value,
            "candidates": [c.to_json(now, offset) for c in self.procedure.candidates()],
            "unvalidated_used": sum(stats.unvalidated_used.values()),
            "dnssec_refused": sum(stats.rejected.values()),
        }

    def _event(self, event: object) -> None:
        from gateway.discovery.procedure import CandidatesFound

        if not isinstance(event, CandidatesFound) or self.upstream is None:
            return
        servers = self.servers()
        if servers and servers != self.upstream.servers:
            log_event(log, logging.INFO, "upstream.servers", "upstream servers changed",
                      servers=[f"{s.host}:{s.port}" for s in servers])
            self.upstream.set_servers(servers)


def _candidate_spec(candidate: Any) -> ServerSpec | None:
    from gateway.discovery.candidates import Transport as Discovered

    if candidate.transport is Discovered.DATA_TCP:
        return None  # the data channel is not relayed
    transport = Transport.UDP if candidate.transport is Discovered.SIGNAL_UDP else Transport.TCP
    return ServerSpec(str(candidate.address), candidate.port, (transport,),
                      server_name=candidate.reference_identifier)
