"""DNS-SD over multicast DNS with zeroconf (seed §8.2): a browser that caches what it hears,
and an advertiser so a gateway can announce itself to local DOTS clients.

Thin adapter. The browser runs for as long as the engine does, on the addresses of one
interface only, so the servers' gratuitous announcements (seed §8.2: "DOTS clients receive
these gratuitous packets and cache information contained in it") are in its cache when the
procedure asks; ``browse`` waits ``duration`` seconds only when nothing is cached yet. The
advertiser registers the instance under RFC 8973's service names with an empty TXT record
(RFC 8973 §7 defines no keys).

zeroconf note: its ``service_type_name()`` reads ``_dots._signal._udp.local.`` (the seed's
two-label service name) as ``_signal._udp.local.``, but registering and browsing under the
full name work (checked in the lab tests), so the advertiser announces both namings: RFC
8973's, and the seed's for clients that follow seed §8.2.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from gateway.discovery.candidates import IPAddress, Transport
from gateway.discovery.dnssd import SERVICES
from gateway.discovery.interfaces import InterfaceInfo
from gateway.discovery.lookups import FailureKind, LookupFailure, MdnsService

log = logging.getLogger(__name__)

BROWSE_TYPES = tuple(f"{name}.local." for name, _, _ in SERVICES)
# transport -> the service types it is announced under, RFC 8973's name first.
ADVERTISE_TYPES: dict[Transport, tuple[str, ...]] = {
    t: tuple(f"{name}.local." for name, transport, _ in SERVICES if transport is t)
    for t in Transport
}
_RESOLVE_MS = 1000


def _zeroconf_interfaces(interface: InterfaceInfo) -> list[str | int]:
    """Only this interface's addresses (IPv4 literals) and index (IPv6): zeroconf must not
    listen on, or send to, any other link."""
    choice: list[str | int] = [str(a) for a in interface.ipv4]
    if interface.link_local_v6 is not None:
        choice.append(interface.index)
    return choice


def _ip_version(interface: InterfaceInfo) -> IPVersion:
    if interface.ipv4 and interface.link_local_v6 is not None:
        return IPVersion.All
    return IPVersion.V4Only if interface.ipv4 else IPVersion.V6Only


class MdnsBrowser:
    """Browses the DOTS service types on one interface from ``start()`` until ``close()``."""

    def __init__(self, interface: InterfaceInfo) -> None:
        self.interface = interface
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._names: dict[str, str] = {}  # instance name -> service type
        self._changed = asyncio.Event()

    async def start(self) -> None:
        self._azc = AsyncZeroconf(interfaces=_zeroconf_interfaces(self.interface),
                                  ip_version=_ip_version(self.interface))
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, list(BROWSE_TYPES),
                                            handlers=[self._on_change])

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self._names.pop(name, None)
        else:
            self._names[name] = service_type
        self._changed.set()

    async def browse(self, duration: float) -> tuple[MdnsService, ...] | LookupFailure:
        """Instances known now; if none, wait up to ``duration`` s for the first ones."""
        if self._azc is None:
            try:
                await self.start()
            except (OSError, RuntimeError, ValueError) as exc:
                return LookupFailure(FailureKind.UNAVAILABLE, f"mDNS on {self.interface.name}: "
                                     f"{exc}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        while not self._names and (left := deadline - loop.time()) > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                break
        if self._names:
            # Other instances announced at the same moment arrive together; a short grace.
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
        return tuple(await self._resolve_all())

    async def _resolve_all(self) -> list[MdnsService]:
        assert self._azc is not None
        found: list[MdnsService] = []
        for name, service_type in sorted(self._names.items()):
            info = AsyncServiceInfo(service_type, name)
            try:
                ok = await info.async_request(self._azc.zeroconf, _RESOLVE_MS)
            except Exception as exc:  # a weird answer must not stop the engine
                log.info("mdns: cannot resolve %s: %s", name, exc)
                continue
            if not ok or not info.server or not info.port:
                continue
            addresses: list[IPAddress] = []
            for text in info.parsed_scoped_addresses(IPVersion.All):
                try:
                    addresses.append(ipaddress.ip_address(text.split("%")[0]))
                except ValueError:
                    continue
            found.append(MdnsService(service_type, name, info.server, info.port,
                                     tuple(addresses), int(info.other_ttl or info.host_ttl)))
        return found

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._azc is not None:
            await self._azc.async_close()
            self._azc = None


class MdnsAdvertiser:
    """Announces this gateway as a DOTS server on one interface (seed §8.2: gratuitous
    announcements at start-up; zeroconf sends them on registration)."""

    def __init__(self, interface: InterfaceInfo, instance: str, host: str,
                 ports: dict[Transport, int], addresses: Sequence[IPAddress] = ()) -> None:
        self.interface = interface
        self.instance = instance
        self.host = host if host.endswith(".local.") else f"{host}.local."
        self.ports = ports
        self.addresses = list(addresses) or [*interface.ipv4, *(
            [interface.link_local_v6] if interface.link_local_v6 else [])]
        self._azc: AsyncZeroconf | None = None
        self._infos: list[AsyncServiceInfo] = []

    async def start(self) -> None:
        self._azc = AsyncZeroconf(interfaces=_zeroconf_interfaces(self.interface),
                                  ip_version=_ip_version(self.interface))
        waits = []
        for transport, port in self.ports.items():
            for service_type in ADVERTISE_TYPES[transport]:
                info = AsyncServiceInfo(
                    service_type, f"{self.instance}.{service_type}", port=port,
                    properties={},  # RFC 8973 §7: no TXT keys
                    server=self.host, addresses=[a.packed for a in self.addresses],
                )
                waits.append(await self._azc.async_register_service(info,
                                                                    allow_name_change=True))
                self._infos.append(info)
        await asyncio.gather(*waits)

    async def close(self) -> None:
        if self._azc is None:
            return
        for info in self._infos:
            await self._azc.async_unregister_service(info)
        await self._azc.async_close()
        self._azc = None
