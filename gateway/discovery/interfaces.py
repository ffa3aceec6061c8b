"""What the kernel says about the network interfaces: names, indexes, MAC, addresses, flags.

I/O adapter (reads ``getifaddrs`` through ``ifaddr`` and ``/sys/class/net``); the procedure
only sees ``Slot`` values built from it. ``slots_for`` turns the configured interface and
family lists into slots: an interface x family without an address of that family cannot run
DHCP (DHCPINFORM needs ``ciaddr``, DHCPv6 a link-local source) and is skipped with a reason.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ifaddr

from gateway.discovery.candidates import Family, Slot

_SYS = Path("/sys/class/net")
IFF_UP, IFF_LOOPBACK, IFF_MULTICAST = 0x1, 0x8, 0x1000


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    name: str
    index: int
    mac: bytes
    flags: int
    ipv4: tuple[ipaddress.IPv4Address, ...]
    ipv6: tuple[ipaddress.IPv6Address, ...]

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & IFF_LOOPBACK)

    @property
    def link_local_v6(self) -> ipaddress.IPv6Address | None:
        return next((a for a in self.ipv6 if a.is_link_local), None)

    def has_family(self, family: Family) -> bool:
        return bool(self.ipv4) if family is Family.V4 else self.link_local_v6 is not None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def list_interfaces() -> dict[str, InterfaceInfo]:
    found: dict[str, InterfaceInfo] = {}
    for adapter in ifaddr.get_adapters():
        name = adapter.name if isinstance(adapter.name, str) else adapter.name.decode()
        v4: list[ipaddress.IPv4Address] = []
        v6: list[ipaddress.IPv6Address] = []
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                v6.append(ipaddress.IPv6Address(ip.ip[0].split("%")[0]))
            else:
                v4.append(ipaddress.IPv4Address(ip.ip))
        mac_text = _read(_SYS / name / "address")
        try:
            mac = bytes.fromhex(mac_text.replace(":", "")) if mac_text else b""
        except ValueError:
            mac = b""
        flags_text = _read(_SYS / name / "flags")
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            continue
        found[name] = InterfaceInfo(
            name=name,
            index=index,
            mac=mac,
            flags=int(flags_text, 16) if flags_text else 0,
            ipv4=tuple(v4),
            ipv6=tuple(v6),
        )
    return found


def slots_for(
    interfaces: dict[str, InterfaceInfo],
    wanted: Sequence[str],
    families: Sequence[int],
) -> tuple[list[Slot], list[str]]:
    """Slots for the wanted interfaces (all that are up and not loopback when empty) x
    families, and one line per combination skipped."""
    skipped: list[str] = []
    names = list(wanted) or sorted(
        name for name, info in interfaces.items() if info.up and not info.loopback
    )
    slots: list[Slot] = []
    for name in names:
        info = interfaces.get(name)
        if info is None:
            skipped.append(f"{name}: no such interface")
            continue
        if not info.up:
            skipped.append(f"{name}: interface is down")
            continue
        for value in families:
            family = Family(value)
            if info.has_family(family):
                slots.append(Slot(name, family))
            else:
                what = "IPv4 address" if family is Family.V4 else "IPv6 link-local address"
                skipped.append(f"{name}/ipv{value}: no {what}")
    return slots, skipped
