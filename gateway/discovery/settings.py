"""From the gateway's ``Settings`` (and command-line overrides) to the discovery objects.

Pure: maps the checked configuration onto ``ProcedureSettings`` and ``IoSettings``; it does
no checking of its own (``gateway.config`` did, naming keys).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from gateway.config import Settings
from gateway.discovery.candidates import IPAddress, Mechanism, Transport
from gateway.discovery.lookups import DnssecMode, FailureKind
from gateway.discovery.procedure import AnycastServer, ManualServer, ProcedureSettings

_TRANSPORTS = {"udp": Transport.SIGNAL_UDP, "tcp": Transport.SIGNAL_TCP}


@dataclass(frozen=True, slots=True)
class Overrides:
    """What ``dots-gateway discover`` options replace."""

    interfaces: tuple[str, ...] = ()
    families: tuple[int, ...] = ()
    domains: tuple[str, ...] = ()
    dns_servers: tuple[IPAddress, ...] = ()
    mechanisms: tuple[str, ...] = ()
    collect_all: bool | None = None
    dnssec: str | None = None


def procedure_settings(settings: Settings, overrides: Overrides = Overrides()) -> ProcedureSettings:
    d = settings.discovery
    manual = tuple(
        ManualServer(u.name, u.address, u.host, u.reference_identifier, u.port,
                     _TRANSPORTS[u.transport.value])
        for u in settings.upstream
    )
    anycast = tuple(
        AnycastServer(address, d.anycast.reference_identifier or "", d.anycast.port)
        for address in d.anycast.addresses
    )
    retry = {kind: float(d.retry[kind.value.replace("-", "_")]) for kind in FailureKind}
    mechanisms = overrides.mechanisms or d.mechanisms
    return ProcedureSettings(
        mechanisms=tuple(Mechanism(m) for m in mechanisms),
        collect_all=d.collect_all if overrides.collect_all is None else overrides.collect_all,
        manual=manual,
        anycast=anycast,
        domains=tuple(overrides.domains),
        default_domain=d.default_domain,
        dns_servers=tuple(overrides.dns_servers) or d.dns_servers,
        trusted_domains=d.trusted_domains,
        min_validity=float(d.min_validity),
        dhcp_refresh=float(d.dhcp.refresh),
        mdns_browse_time=float(d.mdns.browse_time),
        retry_waits=MappingProxyType(retry),
        retry_max=float(d.retry["max"]),
        dnssec=DnssecMode(overrides.dnssec or d.dnssec.value),
    )


def selected_interfaces(settings: Settings, overrides: Overrides) -> Sequence[str]:
    return overrides.interfaces or settings.discovery.interfaces


def selected_families(settings: Settings, overrides: Overrides) -> Sequence[int]:
    return overrides.families or settings.discovery.families

