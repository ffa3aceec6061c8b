"""How the gateway reaches upstream DOTS servers: ``[gateway]``, ``[[upstream]]``, ``[discovery]``.

Owns their settings types, defaults and readers: the relay's rewriting rules and its own
credential towards upstream servers, the configured upstream servers (each with the name its
certificate must match), and the embedded discovery engine (seed §5-10, RFC 8973: mechanisms,
interfaces, DHCP, mDNS, anycast addresses of upstream servers, retry delays, DNSSEC).
Imports: standard library, ``gateway.config.schema``, ``gateway.config.endpoints``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path

from gateway.config.endpoints import DEFAULT_PORT, Transport
from gateway.config.schema import (
    UINT32_MAX,
    IPAddress,
    Table,
    Unique,
    describe,
    is_interface_name,
    parse_dns_name,
    parse_ip,
)


class GatewayDomain(StrEnum):
    """RFC 9132 §4.4.1.2: where the gateway sits; server-domain gateways insert cdid."""

    SERVER = "server"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The relay (mode = "gateway"): rewriting rules and the upstream client's identity."""

    domain: GatewayDomain = GatewayDomain.SERVER
    insert_cdid: bool = True
    hop_limit: int = 16  # RFC 8768 §3 initial value
    identity: str = ""  # in 5.08 loop reports; "" -> general.node_name
    request_timeout: int = 10  # seconds an upstream answer may take before failing over
    heartbeat_interval: int = 0  # preferred on the upstream session; 0: the server's default
    missing_hb_allowed: int = 0
    #: Seconds before the first retry after a failed re-establishment; the wait doubles
    #: after each failure up to ``reconnect_max_interval``. RFC 9132 §4.7: never less than
    #: 60 (MUST NOT); 300 is its SHOULD, which a gateway relaying attack signals trades for
    #: a faster return of its upstream (the cap bounds the operator's wait).
    reconnect_interval: int = 60
    #: The gateway's own credential towards upstream servers (dev PKI client when unset).
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None  # CAs for upstream servers' certificates (default: tls.ca)
    psk_identity: str | None = None
    psk_key: bytes | None = field(default=None, repr=False)
    #: With no upstream configured or discovered at start: run as the DOTS server itself
    #: (True) or refuse to start (False, the default: a gateway that answers 2.01 to
    #: mitigations that go nowhere is worse than one that does not start).
    fallback_to_terminal: bool = False
    #: The longest wait between two failed upstream establishment attempts (see above).
    reconnect_max_interval: int = 300


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    name: str
    address: IPAddress | None
    host: str | None
    reference_identifier: str | None
    port: int
    transport: Transport

    @property
    def server_name(self) -> str | None:
        """The name the server's certificate must match (RFC 9132 §8: DNS-ID)."""
        return self.reference_identifier or self.host


@dataclass(frozen=True, slots=True)
class DiscoveryDhcpSettings:
    timeout: Decimal  # seconds to wait for a reply, per attempt
    attempts: int
    refresh: int  # seconds DHCP information stays valid without a lease/refresh time
    v4_seed_address_option: int | None  # code of the seed's multi-list address option
    v4_seed_ri_option: int | None  # code of a seed-era RI option (RFC 8973 format)


@dataclass(frozen=True, slots=True)
class DiscoveryMdnsSettings:
    browse_time: Decimal
    advertise: bool
    instance: str  # DNS-SD instance label when advertising ("" -> general.node_name)


@dataclass(frozen=True, slots=True)
class DiscoveryAnycastSettings:
    """Seed §10: anycast addresses of upstream servers (DOTS has no IANA address)."""

    addresses: tuple[IPAddress, ...]
    reference_identifier: str | None
    port: int


class DnssecMode(StrEnum):
    """``discovery.dnssec`` (seed §11): what to do with DNS answers DNSSEC did not validate."""

    OFF = "off"
    PREFER = "prefer"  # use them, marked, logged and counted
    REQUIRE = "require"  # refuse them


class DnssecValidator(StrEnum):
    """``discovery.dnssec_validator``: in process from trust anchors, or the AD bit."""

    LOCAL = "local"
    RESOLVER = "resolver"


@dataclass(frozen=True, slots=True)
class DiscoverySettings:
    """The embedded discovery engine (seed §5-10, RFC 8973)."""

    interfaces: tuple[str, ...]  # empty: every interface that is up, loopback excepted
    families: tuple[int, ...]
    mechanisms: tuple[str, ...]  # enabled ones; the order is always the seed's
    collect_all: bool
    default_domain: str | None
    dns_servers: tuple[IPAddress, ...]
    trusted_domains: tuple[str, ...]  # RFC 8973 §8.1; "*.example.net" for subdomains
    min_validity: int
    dns_timeout: Decimal
    dhcp: DiscoveryDhcpSettings
    mdns: DiscoveryMdnsSettings
    anycast: DiscoveryAnycastSettings
    retry: dict[str, int]  # seconds per failure kind, and "max"
    dnssec: DnssecMode = DnssecMode.OFF
    dnssec_validator: DnssecValidator = DnssecValidator.LOCAL
    dnssec_trust_anchors: Path | None = None  # zone-file DS / DNSKEY lines


def read_gateway(t: Table, base_dir: Path | None) -> GatewaySettings:
    d = GatewaySettings()
    domain = t.choice("domain", GatewayDomain, d.domain)
    insert_cdid = t.boolean("insert_cdid", d.insert_cdid)
    hop_limit = t.integer("hop_limit", d.hop_limit, 1, 255, "RFC 8768: one byte, 1-255")
    identity = t.string("identity", d.identity)
    request_timeout = t.integer("request_timeout", d.request_timeout, 1, 300)
    heartbeat_interval = t.integer("heartbeat_interval", 0, 0, 65535)
    missing_hb_allowed = t.integer("missing_hb_allowed", 0, 0, 65535)
    reconnect_interval = t.integer("reconnect_interval", d.reconnect_interval, 60, 86400,
                                   "RFC 9132 §4.7: at least 60 s between attempts")
    reconnect_max = t.integer("reconnect_max_interval",
                              max(d.reconnect_max_interval, reconnect_interval), 60, 86400,
                              "RFC 9132 §4.7: at least 60 s between attempts")
    if reconnect_max < reconnect_interval:
        t.error("reconnect_max_interval", f"must be at least reconnect_interval "
                f"({reconnect_interval})")
    cert, key, ca = (t.opt_path(name, base_dir) for name in ("cert", "key", "ca"))
    if (cert is None) != (key is None):
        t.error("key" if key is None else "cert", "cert and key go together")
    fallback_to_terminal = t.boolean("fallback_to_terminal", d.fallback_to_terminal)
    psk_identity = t.opt_string("psk_identity")
    psk_hex = t.opt_string("psk_key_hex", secret=True)
    psk_key = None
    if (psk_identity is None) != (psk_hex is None):
        t.error("psk_key_hex" if psk_hex is None else "psk_identity",
                "psk_identity and psk_key_hex go together")
    elif psk_hex is not None:
        if re.fullmatch(r"(?:[0-9A-Fa-f]{2}){16,}", psk_hex):
            psk_key = bytes.fromhex(psk_hex)
        else:
            t.error("psk_key_hex", "must be at least 16 bytes as an even number of hex digits")
    t.finish()
    return GatewaySettings(domain, insert_cdid, hop_limit, identity, request_timeout,
                           heartbeat_interval, missing_hb_allowed, reconnect_interval, cert,
                           key, ca, psk_identity, psk_key, fallback_to_terminal,
                           reconnect_max)


def read_upstream(root: Table) -> tuple[UpstreamSettings, ...]:
    # mode = "gateway" with no [[upstream]] is fine: discovery finds the servers.
    servers: list[UpstreamSettings] = []
    seen = Unique("name")
    for t in root.tables("upstream"):
        name = t.opt_string("name", required=True)
        if name is not None:
            seen.check(t, t.key("name"), name)
        address = t.parsed("address", parse_ip)
        host = t.parsed("host", parse_dns_name)
        reference_identifier = t.parsed("reference_identifier", parse_dns_name)
        if not t.has("address") and not t.has("host"):
            t.error(None, "needs address or host")
        elif not t.has("host") and not t.has("reference_identifier"):
            # Seed §5 / RFC 8973: with only an address there is no name to authenticate the
            # server's certificate against, so one must be configured.
            t.error(
                "reference_identifier",
                "required when only an address is given: the DNS "
                "name the server's certificate must match",
            )
        port = t.integer("port", DEFAULT_PORT, 1, 65535)
        transport = t.choice("transport", Transport, Transport.UDP)
        t.finish()
        servers.append(
            UpstreamSettings(name or "", address, host, reference_identifier, port, transport)
        )
    return tuple(servers)


DISCOVERY_MECHANISMS = ("manual", "dhcp", "s-naptr", "dns-sd", "mdns", "anycast")
# Seed §6: a failed lookup waits before it is retried, by kind of failure (never 0 s).
DISCOVERY_RETRY_DEFAULTS = {
    "nxdomain": 300, "nodata": 300, "servfail": 60, "refused": 300, "timeout": 30,
    "no_reply": 60, "malformed": 300, "unavailable": 60, "unvalidated": 300, "max": 3600,
}
# DHCPv4 codes the DHCPINFORM already requests for their RFC meaning; a seed-format code
# must not reuse one of them.
_DHCPV4_TAKEN = {0, 1, 3, 6, 15, 51, 52, 53, 54, 55, 147, 148, 213, 255}


def read_discovery(t: Table, base_dir: Path | None = None) -> DiscoverySettings:
    seen = Unique("interface")
    interfaces = []
    for key, name in t.strings("interfaces", ()):
        if not is_interface_name(name):
            t.error_at(key, f"{name!r} is not an interface name (1-15 characters, no '/', "
                       "':' or spaces)")
        elif seen.check(t, key, name):
            interfaces.append(name)
    families: list[int] = []
    # Table has no integer-array reader; _take checks the type and records the error.
    value = t._take("families", "an array of 4 and/or 6", list)
    given = value if isinstance(value, list) else None
    for index, item in enumerate([4, 6] if given is None else given):
        key = f"{t.key('families')}[{index}]"
        if type(item) is not int or item not in (4, 6):
            t.error_at(key, f"must be 4 or 6, got {describe(item)}")
        elif item in families:
            t.error_at(key, f"duplicate family {item}")
        else:
            families.append(item)
    if given == []:
        t.error("families", "must list at least one of 4, 6")
    seen = Unique("mechanism")
    mechanisms = []
    for key, text in t.strings("mechanisms", DISCOVERY_MECHANISMS):
        if text not in DISCOVERY_MECHANISMS:
            hint = difflib.get_close_matches(text, DISCOVERY_MECHANISMS, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            t.error_at(key, f"must be one of {', '.join(DISCOVERY_MECHANISMS)}, "
                       f"got {text!r}{suggestion}")
        elif seen.check(t, key, text):
            mechanisms.append(text)
    collect_all = t.boolean("collect_all", False)
    default_domain = t.parsed("default_domain", parse_dns_name, empty_ok=True)
    seen = Unique("address")
    dns_servers = tuple(a for key, a in t.parsed_list("dns_servers", parse_ip)
                        if seen.check(t, key, a))
    trusted = []
    for key, text in t.strings("trusted_domains", ()):
        try:
            parse_dns_name(text[2:] if text.startswith("*.") else text)
            trusted.append(text)
        except ValueError:
            t.error_at(key, f"{text!r} is not a DNS name or '*.' followed by one")
    min_validity = t.integer("min_validity", 60, 1, 86400, " seconds")
    dns_timeout = t.decimal("dns_timeout", Decimal("2.00"), Decimal(0), Decimal(60))
    dhcp = _discovery_dhcp(t.table("dhcp"))
    mdns = _discovery_mdns(t.table("mdns"))
    anycast = _discovery_anycast(t.table("anycast"))
    r = t.table("retry")
    retry = {
        kind: r.integer(kind, default, 1, 86400, " seconds (seed §6: never 0)")
        for kind, default in DISCOVERY_RETRY_DEFAULTS.items()
    }
    r.finish()
    before = t.error_count
    dnssec = t.choice("dnssec", DnssecMode, DnssecMode.OFF)
    validator = t.choice("dnssec_validator", DnssecValidator, DnssecValidator.LOCAL)
    anchors = t.opt_path("dnssec_trust_anchors", base_dir)
    if (t.error_count == before
            and dnssec is not DnssecMode.OFF and validator is DnssecValidator.LOCAL
            and anchors is None and not t.has("dnssec_trust_anchors")):
        # Seed §11: validation needs something to chain to; there is no built-in root key.
        t.error("dnssec_trust_anchors", f'required with dnssec = "{dnssec.value}" and '
                'dnssec_validator = "local": a file of DS or DNSKEY records for the zones '
                'discovery looks in (or dnssec_validator = "resolver" to trust the AD bit)')
    t.finish()
    return DiscoverySettings(
        tuple(interfaces), tuple(families), tuple(mechanisms), collect_all, default_domain,
        dns_servers, tuple(trusted), min_validity, dns_timeout, dhcp, mdns, anycast, retry,
        dnssec, validator, anchors,
    )  # fmt: skip


def _discovery_dhcp(t: Table) -> DiscoveryDhcpSettings:
    timeout = t.decimal("timeout", Decimal("2.00"), Decimal(0), Decimal(60))
    attempts = t.integer("attempts", 2, 1, 10)
    refresh = t.integer("refresh", 3600, 60, UINT32_MAX, " seconds")
    codes = {}
    for name in ("v4_seed_address_option", "v4_seed_ri_option"):
        code = t.integer(name, 0, 0, 254, " (0: not used)")
        if code in _DHCPV4_TAKEN - {0}:
            t.error(name, f"option {code} already has a meaning the DHCPINFORM asks for")
            code = 0
        codes[name] = code or None
    if codes["v4_seed_address_option"] and codes["v4_seed_address_option"] == codes[
            "v4_seed_ri_option"]:
        t.error("v4_seed_ri_option", "must differ from v4_seed_address_option")
    t.finish()
    return DiscoveryDhcpSettings(timeout, attempts, refresh, codes["v4_seed_address_option"],
                                 codes["v4_seed_ri_option"])


def _discovery_mdns(t: Table) -> DiscoveryMdnsSettings:
    browse_time = t.decimal("browse_time", Decimal("2.00"), Decimal(0), Decimal(60))
    advertise = t.boolean("advertise", False)
    instance = t.string("instance", "")
    # RFC 6763 §4.1.1: an instance label is at most 63 octets of UTF-8, no control characters.
    if len(instance.encode()) > 63 or not instance.isprintable():
        t.error("instance", "must be printable text of at most 63 bytes")
        instance = ""
    t.finish()
    return DiscoveryMdnsSettings(browse_time, advertise, instance)


def _discovery_anycast(t: Table) -> DiscoveryAnycastSettings:
    seen = Unique("address")
    addresses: list[IPAddress] = []
    for name, version in (("ipv4", 4), ("ipv6", 6)):
        for key, address in t.parsed_list(name, parse_ip):
            if address.version != version:
                t.error_at(key, f"{address} is not an IPv{version} address")
            elif seen.check(t, key, address):
                addresses.append(address)
    reference_identifier = t.parsed("reference_identifier", parse_dns_name, empty_ok=True)
    if addresses and reference_identifier is None and not t.has("reference_identifier"):
        # Seed §5 applied to configured anycast addresses: an address alone cannot
        # authenticate the server behind it.
        t.error("reference_identifier", "required when anycast addresses are given: the DNS "
                "name the servers' certificates must match")
    port = t.integer("port", DEFAULT_PORT, 1, 65535)
    t.finish()
    return DiscoveryAnycastSettings(tuple(addresses), reference_identifier, port)
