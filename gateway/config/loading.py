"""Configuration of dots-gateway: one TOML file -> typed, frozen ``Settings``.

This module owns the schema: which sections and keys exist, their defaults and ranges, the
rules that tie keys together, and the embedded defaults used when there is no file at all
(terminal mode, dev PKI in the state directory, 127.0.0.1 and ::1, port 4646, UDP and TCP).
The typed readers it uses (exact TOML types, key paths, unknown keys) are in
``gateway.config.schema``.

Every problem names its key by full dotted path (``session.idle.ack_timeout.max``,
``clients[2].prefixes[0]``); all problems in a file are raised together as one ``ConfigError``
whose ``errors`` lists them. Relative paths are resolved against the config file's directory.

It reads the one file and does nothing else: no sockets, no DNS, no checks that the paths it
names exist (whoever opens them reports that). Imports: standard library, ``cryptography``'s
X.509 name parser, ``gateway.config.schema``.
"""

from __future__ import annotations

import difflib
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.config.endpoints import (
    DEFAULT_PORT,
    LimitSettings,
    PskEntry,
    ServerSettings,
    TlsSettings,
    Transport,
    read_limits,
    read_psk,
    read_server,
    read_tls,
)
from gateway.config.operations import (
    ControlSettings,
    GeneralSettings,
    LoggingSettings,
    MetricsSettings,
    read_control,
    read_general,
    read_logging,
    read_metrics,
)
from gateway.config.schema import (
    UINT32_MAX,
    ConfigError,
    IPAddress,
    IPNetwork,
    Table,
    Unique,
    describe,
    parse_dns_name,
    parse_ip,
    parse_prefix,
)
from gateway.config.sessions import (
    ClientSettings,
    MitigationSettings,
    SessionSettings,
    TrustedGatewaysSettings,
    read_clients,
    read_mitigation,
    read_session,
    read_trusted_gateways,
)

DEFAULT_STATE_DIR = Path("/var/lib/dots-gateway")


class AnycastBackend(StrEnum):
    """How the anycast route is announced (``anycast/announce.py``)."""

    KERNEL_TABLE = "kernel-table"  # routes in a kernel table that BIRD learns
    EXABGP = "exabgp"  # "announce route" lines on stdout, read by ExaBGP


class InterfaceKind(StrEnum):
    """Link type created for the anycast holder when no interface of that name exists."""

    DUMMY = "dummy"
    IFB = "ifb"  # for kernels without CONFIG_DUMMY (some test machines)


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
    reconnect_interval: int = 300  # RFC 9132 §4.7: >= 60 between failed re-establishments
    #: The gateway's own credential towards upstream servers (dev PKI client when unset).
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None  # CAs for upstream servers' certificates (default: tls.ca)
    psk_identity: str | None = None
    psk_key: bytes | None = field(default=None, repr=False)


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


@dataclass(frozen=True, slots=True)
class AnycastHealthSettings:
    """When the node announces the anycast route (``anycast/health.py``)."""

    interval: Decimal = Decimal("1.00")  # seconds between health checks
    rise: int = 3  # consecutive passed checks before announcing
    fall: int = 2  # consecutive failed checks before withdrawing
    hold_down: Decimal = Decimal("10.00")  # seconds withdrawn at least, after a first fall
    max_hold_down: Decimal = Decimal("300.00")  # cap of the damped hold-down
    half_life: Decimal = Decimal("120.00")  # seconds for the flap penalty to halve
    command: str = ""  # operator check: exit status 0 = healthy; "" = none
    command_timeout: Decimal = Decimal("2.00")


@dataclass(frozen=True, slots=True)
class AnycastSettings:
    """The node's own anycast service addresses (RFC 4786); not ``discovery.anycast``,
    which lists upstream servers' addresses. Off by default."""

    enabled: bool = False
    addresses: tuple[IPAddress, ...] = ()
    interface: str = "dots-anycast"
    interface_kind: InterfaceKind = InterfaceKind.DUMMY
    backend: AnycastBackend = AnycastBackend.KERNEL_TABLE
    table: int = 46
    grace: Decimal = Decimal("5.00")  # seconds of serving after the withdrawal on drain/stop
    health: AnycastHealthSettings = AnycastHealthSettings()


@dataclass(frozen=True, slots=True)
class RedirectTargetSettings:
    name: str  # the alternate server's FQDN (alt-server, mandatory in a redirect)
    addresses: tuple[IPAddress, ...] = ()  # alt-server-record
    cuid: str | None = None  # static assignments: by the client's cuid...
    prefixes: tuple[IPNetwork, ...] = ()  # ... or by the client's source address


class RedirectMode(StrEnum):
    REDIRECT = "redirect"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class RedirectSettings:
    """RFC 9132 §4.6 / seed §10: sessions reaching an anycast address are sent to unicast."""

    mode: RedirectMode = RedirectMode.REDIRECT
    name: str | None = None  # this node's unicast FQDN
    addresses: tuple[IPAddress, ...] = ()
    ttl: int = 3600
    capacity: int = 0
    pool: tuple[RedirectTargetSettings, ...] = ()
    static: tuple[RedirectTargetSettings, ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    source: str  # the file it came from, or "<defaults>"
    general: GeneralSettings
    logging: LoggingSettings
    server: ServerSettings
    tls: TlsSettings
    psk: tuple[PskEntry, ...]
    session: SessionSettings
    mitigation: MitigationSettings
    clients: tuple[ClientSettings, ...]
    trusted_gateways: TrustedGatewaysSettings
    upstream: tuple[UpstreamSettings, ...]
    metrics: MetricsSettings
    control: ControlSettings
    discovery: DiscoverySettings
    limits: LimitSettings = LimitSettings()
    anycast: AnycastSettings = AnycastSettings()
    redirect: RedirectSettings = RedirectSettings()
    gateway: GatewaySettings = GatewaySettings()


def load_config(path: Path, *, default_state_dir: Path | None = None) -> Settings:
    """Read and check one config file. Raises ConfigError listing every problem found.

    ``default_state_dir`` is used when the file sets no ``general.state_dir``.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        message = f"cannot read config file: {exc.strerror or exc}"
        raise ConfigError("", message, source=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (line {line}, byte offset {exc.start})"
        raise ConfigError("", message, source=str(path)) from None
    return parse_config(
        text, str(path), base_dir=path.absolute().parent, default_state_dir=default_state_dir
    )


def parse_config(
    text: str,
    source: str = "<string>",
    *,
    base_dir: Path | None = None,
    default_state_dir: Path | None = None,
) -> Settings:
    """Check TOML text. Relative paths are joined to ``base_dir`` (kept relative when None)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)"; the line itself is not echoed because
        # it may hold a PSK.
        raise ConfigError("", f"TOML syntax error: {exc}", source=source) from None
    return _build(data, source, base_dir, default_state_dir or DEFAULT_STATE_DIR)


def default_settings(state_dir: Path | None = None) -> Settings:
    """The embedded defaults: what ``dots-gateway run`` uses without a config file."""
    return _build({}, "<defaults>", None, state_dir or DEFAULT_STATE_DIR)


def check_config(path: Path) -> list[str]:
    """Every problem in the file as one "file: key: what is wrong" line; [] when it is fine."""
    try:
        load_config(path)
    except ConfigError as exc:
        return [str(error) for error in exc.errors]
    return []


def _build(data: dict[str, Any], source: str, base_dir: Path | None, state_dir: Path) -> Settings:
    errors: list[ConfigError] = []
    root = Table(data, "", errors)
    # Sections are read in the order the example file documents them, so problems are
    # listed in that order too.
    general = read_general(root.table("general"), base_dir, state_dir)
    logging = read_logging(root.table("logging"))
    server = read_server(root.table("server"))
    tls = read_tls(root.table("tls"), base_dir, general.state_dir)
    psk, psk_identities = read_psk(root)
    session = read_session(root.table("session"))
    mitigation = read_mitigation(root.table("mitigation"))
    clients = read_clients(root, psk_identities)
    trusted_gateways = read_trusted_gateways(root.table("trusted_gateways"))
    upstream = _upstream(root)
    discovery = _discovery(root.table("discovery"))
    metrics = read_metrics(root.table("metrics"))
    control = read_control(root.table("control"), base_dir, general.state_dir)
    limits = read_limits(root.table("limits"))
    anycast = _anycast(root.table("anycast"), server)
    redirect = _redirect(root.table("redirect"))
    gateway = _gateway(root.table("gateway"), base_dir)
    root.finish()
    if errors:
        found = [ConfigError(e.key, e.message, source=source) for e in errors]
        if len(found) == 1:
            raise found[0]
        raise ConfigError("", f"{len(found)} problems", source=source, errors=found)
    return Settings(
        source, general, logging, server, tls, psk, session, mitigation, clients,
        trusted_gateways, upstream, metrics, control, discovery, limits, anycast, redirect,
        gateway,
    )  # fmt: skip


def _gateway(t: Table, base_dir: Path | None) -> GatewaySettings:
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
    cert, key, ca = (t.opt_path(name, base_dir) for name in ("cert", "key", "ca"))
    if (cert is None) != (key is None):
        t.error("key" if key is None else "cert", "cert and key go together")
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
                           key, ca, psk_identity, psk_key)


def _upstream(root: Table) -> tuple[UpstreamSettings, ...]:
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
    "no_reply": 60, "malformed": 300, "unavailable": 60, "max": 3600,
}
# DHCPv4 codes the DHCPINFORM already requests for their RFC meaning; a seed-format code
# must not reuse one of them.
_DHCPV4_TAKEN = {0, 1, 3, 6, 15, 51, 52, 53, 54, 55, 147, 148, 213, 255}
_IFNAME = re.compile(r"[^/\s:]{1,15}")


def _discovery(t: Table) -> DiscoverySettings:
    seen = Unique("interface")
    interfaces = []
    for key, name in t.strings("interfaces", ()):
        if not _IFNAME.fullmatch(name) or name in (".", ".."):
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
    t.finish()
    return DiscoverySettings(
        tuple(interfaces), tuple(families), tuple(mechanisms), collect_all, default_domain,
        dns_servers, tuple(trusted), min_validity, dns_timeout, dhcp, mdns, anycast, retry,
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


# Kernel tables with a fixed meaning (linux/rtnetlink.h): unspec, default, main, local.
_RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}


def _redirect_target(t: Table, *, with_cuid: bool) -> RedirectTargetSettings | None:
    before = t.error_count
    name = t.opt_string("name", required=True)
    if name is not None and not _valid_fqdn(name):
        t.error("name", f"{name!r} is not a domain name (alt-server is an FQDN)")
    addresses = tuple(a for _key, a in t.parsed_list("addresses", parse_ip))
    cuid, prefixes = None, ()
    if with_cuid:  # a static assignment names its clients: by cuid or by source prefix
        cuid = t.opt_string("cuid")
        prefixes = tuple(prefix for _, prefix in t.parsed_list("prefixes", parse_prefix))
        if t.has("cuid") == t.has("prefixes"):
            t.error(None, "needs either cuid or prefixes (the clients' source addresses)")
    t.finish()
    if name is None or t.error_count != before:
        return None
    return RedirectTargetSettings(name, addresses, cuid, prefixes)


def _valid_fqdn(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return 0 < len(name) <= 253 and all(
        0 < len(label) <= 63 and re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9])?", label)
        for label in labels)


def _redirect(t: Table) -> RedirectSettings:
    d = RedirectSettings()
    mode = t.choice("mode", RedirectMode, d.mode)
    name = t.opt_string("name", empty_ok=True) or None
    if name is not None and not _valid_fqdn(name):
        t.error("name", f"{name!r} is not a domain name (alt-server is an FQDN)")
    addresses = tuple(a for _key, a in t.parsed_list("addresses", parse_ip))
    if addresses and name is None:
        t.error("addresses", "needs redirect.name: a redirect always names the alt-server")
    ttl = t.integer("ttl", d.ttl, 0, UINT32_MAX, "0 = this request only, 4294967295 = "
                    "until further notice (RFC 9132 §4.6)")
    capacity = t.integer("capacity", d.capacity, 0, 10_000_000)
    pool = tuple(x for x in (_redirect_target(p, with_cuid=False) for p in t.tables("pool"))
                 if x is not None)
    static = tuple(x for x in (_redirect_target(p, with_cuid=True) for p in t.tables("static"))
                   if x is not None)
    t.finish()
    return RedirectSettings(mode, name, addresses, ttl, capacity, pool, static)


def _anycast(t: Table, server: ServerSettings) -> AnycastSettings:
    d = AnycastSettings()
    enabled = t.boolean("enabled", d.enabled)
    seen = Unique("address")
    addresses: list[IPAddress] = []
    before = t.error_count
    for key, address in t.parsed_list("addresses", parse_ip):
        if (address.is_multicast or address.is_unspecified or address.is_loopback
                or address.is_link_local):
            t.error_at(key, f"{address} is not a unicast host address an anycast route can "
                       "carry (multicast, unspecified, loopback and link-local are refused)")
        elif seen.check(t, key, address):
            addresses.append(address)
            # The route attracts clients to this address; the gateway must listen on it.
            wildcard = "0.0.0.0" if address.version == 4 else "::"
            if enabled and not any(str(a) in (str(address), wildcard)
                                   for a in server.addresses):
                t.error_at(key, f"{address} is not in server.addresses (nor its family's "
                           "wildcard): the route would attract clients nobody serves")
    if enabled and not addresses and t.error_count == before:
        t.error("addresses", "must list at least one address when enabled = true")
    interface = t.string("interface", d.interface)
    if not _IFNAME.fullmatch(interface) or interface in (".", ".."):
        t.error("interface", f"{interface!r} is not an interface name (1-15 characters, no "
                "'/', ':' or spaces)")
    kind = t.choice("interface_kind", InterfaceKind, d.interface_kind)
    backend = t.choice("backend", AnycastBackend, d.backend)
    table = t.integer("table", d.table, 1, UINT32_MAX)
    if table in _RESERVED_TABLES:
        t.error("table", f"table {table} is the kernel's {_RESERVED_TABLES[table]} table; "
                "use a table of its own (46 by default)")
        table = d.table
    grace = t.decimal("grace", d.grace, Decimal(0), Decimal(3600))
    health = _anycast_health(t.table("health"))
    t.finish()
    return AnycastSettings(enabled, tuple(addresses), interface, kind, backend, table, grace,
                           health)


def _anycast_health(t: Table) -> AnycastHealthSettings:
    d = AnycastHealthSettings()
    interval = t.decimal("interval", d.interval, Decimal(0), Decimal(3600))
    rise = t.integer("rise", d.rise, 1, 100)
    fall = t.integer("fall", d.fall, 1, 100)
    before = t.error_count
    hold_down = t.decimal("hold_down", d.hold_down, Decimal(0), Decimal(86400))
    max_hold_down = t.decimal("max_hold_down", d.max_hold_down, Decimal(0), Decimal(86400))
    if t.error_count == before and max_hold_down < hold_down:
        t.error("max_hold_down", f"must be at least hold_down ({hold_down}), got {max_hold_down}")
    half_life = t.decimal("half_life", d.half_life, Decimal(0), Decimal(86400))
    command = t.string("command", d.command)
    try:
        shlex.split(command)
    except ValueError as exc:
        t.error("command", f"cannot be split into words: {exc}")
        command = ""
    command_timeout = t.decimal("command_timeout", d.command_timeout, Decimal(0), Decimal(600))
    t.finish()
    return AnycastHealthSettings(interval, rise, fall, hold_down, max_hold_down, half_life,
                                 command, command_timeout)
