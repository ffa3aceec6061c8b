"""What discovery produces: ordered upstream candidates, and the trust allow-list.

A ``Candidate`` is one way to reach one DOTS server: mechanism, interface, address family,
transport, address, port, the reference identifier its certificate must match, and how long
the information is valid. Discovery never weakens authentication (seed §11, RFC 8973 §8):
every candidate carries a reference identifier, and the allow-list of trusted DOTS domains
(RFC 8973 §8.1) rejects names a rogue DHCP server or mDNS responder could hand out.
Pure: no I/O.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.discovery.dnsname import normalize_name
from gateway.discovery.errors import DiscoveryUsageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

SIGNAL_PORT = 4646  # RFC 9132 §3; RFC 8973 §5: also the default for DHCP-learned servers
DATA_PORT = 443  # RFC 8973 §6: the data channel (RESTCONF) default


class Mechanism(enum.StrEnum):
    """The discovery mechanisms, in the seed's order of preference (seed §5)."""

    MANUAL = "manual"  # explicit configuration, local
    DHCP = "dhcp"  # explicit configuration, automatic (seed §9)
    SNAPTR = "s-naptr"  # service resolution (seed §6-7)
    DNSSD = "dns-sd"  # DNS-SD over unicast DNS (seed §8.1)
    MDNS = "mdns"  # DNS-SD over multicast DNS in local. (seed §8.2)
    ANYCAST = "anycast"  # configured anycast addresses (seed §10)


# Seed §5: "Clients will prefer information received from the discovery methods in the order
# listed." DNS-SD runs over unicast DNS before mDNS.
MECHANISM_ORDER: tuple[Mechanism, ...] = tuple(Mechanism)


class Family(enum.IntEnum):
    V4 = 4
    V6 = 6

    @classmethod
    def of(cls, address: IPAddress) -> Family:
        return cls(address.version)


class Transport(enum.StrEnum):
    """The S-NAPTR application protocol tags (seed §6, RFC 8973 §9.4)."""

    SIGNAL_UDP = "signal.udp"
    SIGNAL_TCP = "signal.tcp"
    DATA_TCP = "data.tcp"

    @property
    def default_port(self) -> int:
        return DATA_PORT if self is Transport.DATA_TCP else SIGNAL_PORT

    @property
    def protocol(self) -> str:
        return "UDP" if self is Transport.SIGNAL_UDP else "TCP"


SIGNAL_TRANSPORTS = (Transport.SIGNAL_UDP, Transport.SIGNAL_TCP)


class DnssecStatus(enum.StrEnum):
    """What DNSSEC says about the DNS answers behind a candidate (``gateway.discovery.dnssec``;
    seed §11). ``UNCHECKED``: validation is off."""

    SECURE = "secure"  # every answer chained to a trust anchor (or had the resolver's AD bit)
    UNCHECKED = "unchecked"
    INSECURE = "insecure"  # unsigned, or no trust anchor covers the name
    BOGUS = "bogus"  # signed, but the signatures do not validate

    @classmethod
    def combine(cls, statuses: Iterable[DnssecStatus]) -> DnssecStatus:
        """The status of data built from several answers: the worst of them (an empty
        combination is secure: nothing unvalidated went in)."""
        order = list(cls)
        return max(statuses, key=order.index, default=cls.SECURE)


class IdentifierType(enum.StrEnum):
    """What kind of reference identifier a certificate is checked against (RFC 6125)."""

    DNS = "dns"  # DNS-ID: a host name
    IP = "ip"  # iPAddress SAN: DHCP gave addresses only (seed §9.1.3 last paragraph)


@dataclass(frozen=True, slots=True)
class Slot:
    """One interface x address family the procedure runs for (seed §5)."""

    interface: str
    family: Family

    def __str__(self) -> str:
        return f"{self.interface}/ipv{self.family.value}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to reach one upstream DOTS server, in preference order within its list.

    ``expires_at`` is absolute (monotonic seconds) or None for configuration that does not
    expire; ``source`` says where the row came from (``option 142``, the NAPTR chain...).
    """

    mechanism: Mechanism
    interface: str
    family: Family
    transport: Transport
    address: IPAddress
    port: int
    reference_identifier: str
    identifier_type: IdentifierType = IdentifierType.DNS
    expires_at: float | None = None
    source: str = ""
    #: The DNS answers it was built from; None when none were (DHCP addresses, mDNS,
    #: configured addresses), which DNSSEC cannot vouch for.
    dnssec: DnssecStatus | None = None

    @property
    def validated(self) -> bool:
        return self.dnssec is DnssecStatus.SECURE

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise DiscoveryUsageError(f"port {self.port} out of range")
        if not self.reference_identifier:
            # Seed §11: a candidate without something to authenticate it against is unusable.
            raise DiscoveryUsageError("a candidate needs a reference identifier")

    def to_json(self, now: float | None = None, wall_offset: float | None = None) -> dict[str, Any]:
        """A JSON object; ``expires_at`` is converted to wall-clock seconds when the caller
        passes ``wall_offset`` (wall time minus monotonic time), and ``expires_in`` is added
        when it passes ``now``."""
        expires_at = self.expires_at
        if expires_at is not None and wall_offset is not None:
            expires_at = round(expires_at + wall_offset, 3)
        result: dict[str, Any] = {
            "mechanism": self.mechanism.value,
            "interface": self.interface,
            "family": self.family.value,
            "transport": self.transport.value,
            "address": str(self.address),
            "port": self.port,
            "reference_identifier": self.reference_identifier,
            "identifier_type": self.identifier_type.value,
            "expires_at": expires_at,
            "source": self.source,
            "validated": self.validated,
            "dnssec": None if self.dnssec is None else self.dnssec.value,
        }
        if now is not None:
            result["expires_in"] = (
                None if self.expires_at is None else round(self.expires_at - now, 3)
            )
        return result


def usable_address(address: IPAddress) -> bool:
    """RFC 8973 §5.1.3 / §5.2.3: multicast and loopback addresses are silently discarded;
    unspecified ones cannot be connected to either."""
    return not (address.is_multicast or address.is_loopback or address.is_unspecified)


class TrustList:
    """The optional allow-list of trusted DOTS domains (RFC 8973 §8.1).

    ``example.net`` trusts exactly that name; ``*.example.net`` trusts every name below it
    (not the domain itself). An empty list trusts every name: the certificate check still
    applies to each candidate.
    """

    __slots__ = ("_exact", "_suffixes")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self._exact: set[str] = set()
        self._suffixes: list[str] = []
        for pattern in patterns:
            name = normalize_name(pattern)
            if name.startswith("*."):
                self._suffixes.append(name[1:])  # ".example.net"
            else:
                self._exact.add(name)

    @property
    def active(self) -> bool:
        return bool(self._exact or self._suffixes)

    def trusts(self, name: str) -> bool:
        if not self.active:
            return True
        name = normalize_name(name)
        return name in self._exact or any(name.endswith(s) for s in self._suffixes)
