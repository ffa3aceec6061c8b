"""Configuration of dots-gateway: one TOML file -> typed, frozen ``Settings``.

This module owns the schema: which sections and keys exist, their defaults and ranges, the
rules that tie keys together, and the embedded defaults used when there is no file at all
(terminal mode, dev PKI in the state directory, 127.0.0.1 and ::1, port 4646, UDP and TCP).
The typed readers it uses (exact TOML types, key paths, unknown keys) are in
``gateway.config_schema``.

Every problem names its key by full dotted path (``session.idle.ack_timeout.max``,
``clients[2].prefixes[0]``); all problems in a file are raised together as one ``ConfigError``
whose ``errors`` lists them. Relative paths are resolved against the config file's directory.

It reads the one file and does nothing else: no sockets, no DNS, no checks that the paths it
names exist (whoever opens them reports that). Imports: standard library, ``cryptography``'s
X.509 name parser, ``gateway.config_schema``.
"""

from __future__ import annotations

import difflib
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from gateway.config_schema import (
    ConfigError as ConfigError,  # re-exported: callers catch it from here
)
from gateway.config_schema import (
    IPAddress,
    IPNetwork,
    Table,
    Unique,
    describe,
    parse_cuid,
    parse_dn,
    parse_dns_name,
    parse_host_port,
    parse_ip,
    parse_prefix,
)

DEFAULT_STATE_DIR = Path("/var/lib/dots-gateway")
DEFAULT_PORT = 4646  # RFC 9132 §3: same number for UDP and TCP
UINT16_MAX = 2**16 - 1
UINT32_MAX = 2**32 - 1
# YANG decimal64 with fraction-digits 2 (RFC 9132 §5.3): the largest value it can carry.
DECIMAL64_2_MAX = Decimal("92233720368547758.07")
# AF_UNIX sun_path is 108 bytes on Linux, one of them the terminating NUL.
UNIX_PATH_MAX = 107


class Mode(StrEnum):
    TERMINAL = "terminal"  # the gateway is the DOTS server
    GATEWAY = "gateway"  # relay to upstream DOTS servers


class LogFormat(StrEnum):
    KV = "kv"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Transport(StrEnum):
    UDP = "udp"  # coaps: CoAP over DTLS
    TCP = "tcp"  # coaps+tcp: CoAP over TLS


class ConflictPolicy(StrEnum):
    """Overlapping requests from different clients: server policy (RFC 9132 §4.4.1.3)."""

    REJECT_NEW = "reject-new"
    ACCEPT_BOTH = "accept-both"
    REPLACE_EXISTING = "replace-existing"


class Backend(StrEnum):
    LOG = "log"
    COMMAND = "command"


class AnycastBackend(StrEnum):
    """How the anycast route is announced (``anycast/announce.py``)."""

    KERNEL_TABLE = "kernel-table"  # routes in a kernel table that BIRD learns
    EXABGP = "exabgp"  # "announce route" lines on stdout, read by ExaBGP


class InterfaceKind(StrEnum):
    """Link type created for the anycast holder when no interface of that name exists."""

    DUMMY = "dummy"
    IFB = "ifb"  # for kernels without CONFIG_DUMMY (some test machines)


N = TypeVar("N", int, Decimal)


@dataclass(frozen=True, slots=True)
class GeneralSettings:
    state_dir: Path
    mode: Mode
    node_name: str


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    format: LogFormat
    level: LogLevel


@dataclass(frozen=True, slots=True)
class ServerSettings:
    addresses: tuple[IPAddress, ...]
    port: int
    transports: tuple[Transport, ...]


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Either the three operator files, or ``dev_pki_dir`` (no ``[tls]``: dev PKI there)."""

    ca: Path | None
    cert: Path | None
    key: Path | None
    dev_pki_dir: Path | None
    #: Optional CRL (PEM) checked for client certificates.
    crl: Path | None = None
    #: Files shared by every node of an anycast fleet (one hex secret per line, first one
    #: active): DTLS cookie HMAC secrets and session-ticket keys. None: random per process.
    cookie_secret_file: Path | None = None
    #: Test peers only (tinydtls): also offer PSK suites without (EC)DHE, which RFC 9132 §7.1
    #: does not allow for production.
    allow_legacy_psk: bool = False
    ticket_key_file: Path | None = None

    @property
    def dev_pki(self) -> bool:
        return self.dev_pki_dir is not None


@dataclass(frozen=True, slots=True)
class PskEntry:
    identity: str
    key: bytes = field(repr=False)  # never in logs or tracebacks


@dataclass(frozen=True, slots=True)
class Bounds(Generic[N]):
    """What the server offers for one session parameter: RFC 9132 min-value/max-value and the
    value used when the client does not negotiate (current-value)."""

    min: N
    max: N
    default: N


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """One RFC 9132 §4.5 parameter set (idle-config or mitigating-config)."""

    heartbeat_interval: Bounds[int]
    missing_hb_allowed: Bounds[int]
    probing_rate: Bounds[int]
    max_retransmit: Bounds[int]
    ack_timeout: Bounds[Decimal]
    ack_random_factor: Bounds[Decimal]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    idle: SessionConfig
    mitigating: SessionConfig
    max_age: int


@dataclass(frozen=True, slots=True)
class MitigationSettings:
    active_but_terminating: int
    active_but_terminating_max: int
    allow_indefinite_lifetime: bool
    max_lifetime: int  # 0: no cap
    conflict_policy: ConflictPolicy
    backend: Backend
    command: str


@dataclass(frozen=True, slots=True)
class ClientSettings:
    name: str
    cuid: str | None
    psk_identity: str | None
    cert_subject: str | None  # RFC 4514 form as cryptography prints it
    prefixes: tuple[IPNetwork, ...]
    fqdns: tuple[str, ...]
    allow_any_cuid: bool


@dataclass(frozen=True, slots=True)
class TrustedGatewaysSettings:
    identities: tuple[str, ...]


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
class MetricsSettings:
    listen: tuple[str, int] | None  # None: no metrics endpoint


@dataclass(frozen=True, slots=True)
class ControlSettings:
    socket: Path


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Transport limits; each one, when hit, gives the client a defined outcome and a log
    line (no cookie / refused connection), never silent memory growth."""

    max_sessions: int = 20_000
    max_handshakes: int = 512
    handshake_deadline: int = 20  # seconds to finish a (D)TLS handshake
    idle_timeout: int = 6 * 3600  # seconds without any datagram or byte from the peer
    handshakes_per_source: int = 20  # per second, per source address (burst: twice that)
    max_handshakes_per_source: int = 8  # concurrent DTLS handshakes per source address
    handshake_deadline_min: int = 4  # DTLS deadline when max_handshakes are all in use
    pmtu: int = 1280  # path MTU assumed for DTLS records (RFC 9132 §7.3)
    handshake_threads: int = 2


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


# Offered by default in both sets: the ranges of RFC 9132's Figure 20 example, the defaults of
# its YANG module and Appendix C.
_SESSION_DEFAULTS: dict[str, Bounds[Any]] = {
    "heartbeat_interval": Bounds(15, 240, 30),
    "missing_hb_allowed": Bounds(3, 20, 15),
    "probing_rate": Bounds(5, 20, 5),
    "max_retransmit": Bounds(2, 15, 3),
    "ack_timeout": Bounds(Decimal("1.00"), Decimal("30.00"), Decimal("2.00")),
    "ack_random_factor": Bounds(Decimal("1.10"), Decimal("4.00"), Decimal("1.50")),
}
# Lowest value of each parameter (uint16 or decimal64). A heartbeat-interval of 0 disables
# heartbeats (RFC 9132 §4.7); 0 missing heartbeats would declare loss before any was missed and
# 0 bytes/s would forbid sending anything, so those start at 1. ACK_TIMEOUT must be above 0 and
# ACK_RANDOM_FACTOR above 1 (RFC 7252 §4.8): the decimal floors are exclusive.
_FLOORS: dict[str, Any] = {
    "heartbeat_interval": 0,
    "missing_hb_allowed": 1,
    "probing_rate": 1,
    "max_retransmit": 0,
    "ack_timeout": Decimal(0),
    "ack_random_factor": Decimal(1),
}


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
    general = _general(root.table("general"), base_dir, state_dir)
    logging = _logging(root.table("logging"))
    server = _server(root.table("server"))
    tls = _tls(root.table("tls"), base_dir, general.state_dir)
    psk, psk_identities = _psk(root)
    session = _session(root.table("session"))
    mitigation = _mitigation(root.table("mitigation"))
    clients = _clients(root, psk_identities)
    trusted_gateways = _trusted_gateways(root.table("trusted_gateways"))
    upstream = _upstream(root)
    discovery = _discovery(root.table("discovery"))
    metrics = _metrics(root.table("metrics"))
    control = _control(root.table("control"), base_dir, general.state_dir)
    limits = _limits(root.table("limits"))
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


def _limits(t: Table) -> LimitSettings:
    d = LimitSettings()
    limits = LimitSettings(
        max_sessions=t.integer("max_sessions", d.max_sessions, 1, 10_000_000),
        max_handshakes=t.integer("max_handshakes", d.max_handshakes, 1, 1_000_000),
        handshake_deadline=t.integer("handshake_deadline", d.handshake_deadline, 1, 600),
        idle_timeout=t.integer("idle_timeout", d.idle_timeout, 10, 30 * 86400),
        handshakes_per_source=t.integer("handshakes_per_source", d.handshakes_per_source, 1,
                                        1_000_000),
        max_handshakes_per_source=t.integer("max_handshakes_per_source",
                                            d.max_handshakes_per_source, 1, 1_000_000),
        handshake_deadline_min=t.integer("handshake_deadline_min", d.handshake_deadline_min,
                                         1, 600),
        # IPv4's 576 is the smallest a DOTS agent may assume (RFC 9132 §7.3).
        pmtu=t.integer("pmtu", d.pmtu, 576, 65535),
        handshake_threads=t.integer("handshake_threads", d.handshake_threads, 1, 64),
    )
    t.finish()
    return limits


def _general(t: Table, base_dir: Path | None, default_state_dir: Path) -> GeneralSettings:
    state_dir = t.opt_path("state_dir", base_dir) or default_state_dir
    mode = t.choice("mode", Mode, Mode.TERMINAL)
    node_name = t.opt_string("node_name", empty_ok=True) or "dots-gateway"
    # It goes into log lines and the 5.08 diagnostic payload (RFC 8768), both one-line text.
    if not node_name.isprintable() or len(node_name.encode()) > 255:
        t.error("node_name", "must be printable text of at most 255 bytes")
    t.finish()
    return GeneralSettings(state_dir, mode, node_name)


def _logging(t: Table) -> LoggingSettings:
    settings = LoggingSettings(
        t.choice("format", LogFormat, LogFormat.KV), t.choice("level", LogLevel, LogLevel.INFO)
    )
    t.finish()
    return settings


def _server(t: Table) -> ServerSettings:
    before = t.error_count
    seen = Unique("address")
    addresses = [
        address
        for key, address in t.parsed_list("addresses", parse_ip, ("127.0.0.1", "::1"))
        if seen.check(t, key, address)
    ]
    if not addresses and t.error_count == before:
        t.error("addresses", "must list at least one address to listen on")
    port = t.integer("port", DEFAULT_PORT, 1, 65535)
    before = t.error_count
    seen = Unique("transport")
    transports = []
    for key, text in t.strings("transports", ("udp", "tcp")):
        if text not in {"udp", "tcp"}:
            t.error_at(key, f"must be 'udp' or 'tcp', got {text!r}")
        elif seen.check(t, key, text):
            transports.append(Transport(text))
    if not transports and t.error_count == before:
        t.error("transports", "must list at least one of 'udp', 'tcp'")
    t.finish()
    return ServerSettings(tuple(addresses), port, tuple(transports))


def _tls(t: Table, base_dir: Path | None, state_dir: Path) -> TlsSettings:
    names = ("ca", "cert", "key")
    given = [name for name in names if t.has(name)]
    paths = [t.opt_path(name, base_dir) for name in names]
    listed = " and ".join(f"tls.{name}" for name in given)
    for name in names:
        if given and name not in given:
            t.error(name, f"required when {listed} is set (all three, or none for the dev PKI)")
    extras: dict[str, Any] = {name: t.opt_path(name, base_dir)
                              for name in ("crl", "cookie_secret_file", "ticket_key_file")}
    extras["allow_legacy_psk"] = t.boolean("allow_legacy_psk", False)
    t.finish()
    if given:
        return TlsSettings(paths[0], paths[1], paths[2], dev_pki_dir=None, **extras)
    return TlsSettings(None, None, None, dev_pki_dir=state_dir / "pki", **extras)


def _psk(root: Table) -> tuple[tuple[PskEntry, ...], set[str]]:
    """The entries, and every identity named, even with a bad key: a client that refers to one
    should not get a second, misleading error."""
    entries: list[PskEntry] = []
    identities: set[str] = set()
    seen = Unique("identity")
    for t in root.tables("psk"):
        identity = t.opt_string("identity", required=True)
        if identity is not None and len(identity.encode()) > 128:
            t.error("identity", f"must be at most 128 bytes of UTF-8, got {len(identity.encode())}")
        elif identity is not None:
            seen.check(t, t.key("identity"), identity)
            identities.add(identity)
        has_text, has_hex = t.has("key"), t.has("key_hex")
        text = t.opt_string("key", secret=True)
        hex_text = t.opt_string("key_hex", secret=True)
        secret, which = None, "key"
        if has_text and has_hex:
            t.error("key_hex", "give either key or key_hex, not both")
        elif not has_text and not has_hex:
            t.error(None, "needs a key: key (text) or key_hex (hex digits)")
        elif text is not None:
            if text.isprintable():
                secret = text.encode()
            else:
                t.error("key", "must be printable text; write other keys as key_hex")
        elif hex_text is not None:
            which = "key_hex"
            if re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", hex_text):
                secret = bytes.fromhex(hex_text)
            else:
                t.error("key_hex", "must be an even number of hex digits (no spaces, no 0x)")
        # Short PSKs fall to offline guessing; 128 bits is the floor.
        if secret is not None and len(secret) < 16:
            t.error(which, f"must be at least 16 bytes, got {len(secret)}")
        t.finish()
        if identity is not None and secret is not None:
            entries.append(PskEntry(identity, secret))
    return tuple(entries), identities


def _session(t: Table) -> SessionSettings:
    idle = _session_config(t.table("idle"))
    mitigating = _session_config(t.table("mitigating"))
    max_age = t.integer("max_age", 3600, 1, UINT32_MAX, " seconds (RFC 9132 §4.5.3 Max-Age)")
    t.finish()
    return SessionSettings(idle, mitigating, max_age)


def _session_config(t: Table) -> SessionConfig:
    values: dict[str, Bounds[Any]] = {}
    for name, default in _SESSION_DEFAULTS.items():
        defaults = {"min": default.min, "max": default.max, "default": default.default}
        if isinstance(default.min, int):
            read: Any = partial(Table.integer, lo=_FLOORS[name], hi=UINT16_MAX)
        else:
            read = partial(Table.decimal, above=_FLOORS[name], hi=DECIMAL64_2_MAX)
        values[name] = Bounds(**t.min_max_default(name, defaults, read))
    t.finish()
    return SessionConfig(**values)


def _mitigation(t: Table) -> MitigationSettings:
    before = t.error_count
    # RFC 9132 §4.4.4: 120 s by default, extendable up to 300 s.
    abt = t.integer("active_but_terminating", 120, 0, 300, " seconds (RFC 9132 §4.4.4)")
    abt_max = t.integer("active_but_terminating_max", 300, 0, 300, " seconds (RFC 9132 §4.4.4)")
    if t.error_count == before and abt_max < abt:
        t.error(
            "active_but_terminating_max",
            f"must be at least active_but_terminating ({abt}), got {abt_max}",
        )
    indefinite = t.boolean("allow_indefinite_lifetime", True)
    max_lifetime = t.integer("max_lifetime", 0, 0, UINT32_MAX, " seconds (0: no cap)")
    policy = t.choice("conflict_policy", ConflictPolicy, ConflictPolicy.REJECT_NEW)
    before = t.error_count
    backend = t.choice("backend", Backend, Backend.LOG)
    command = t.string("command", "")
    if t.error_count == before:
        if backend is Backend.COMMAND:
            if not command:
                t.error("command", 'required (non-empty) when backend = "command"')
            else:
                try:
                    shlex.split(command)  # run without a shell: it must split into argv
                except ValueError as exc:
                    t.error("command", f"cannot be split into arguments: {exc}")
        elif command:
            t.error("command", f'only used with backend = "command", but backend is "{backend}"')
    t.finish()
    return MitigationSettings(abt, abt_max, indefinite, max_lifetime, policy, backend, command)


def _clients(root: Table, psk_identities: set[str]) -> tuple[ClientSettings, ...]:
    clients: list[ClientSettings] = []
    # One credential must map to one client entry, or authorization would depend on order.
    seen = {name: Unique(name) for name in ("name", "cuid", "psk_identity", "cert_subject")}
    for t in root.tables("clients"):
        if not any(t.has(name) for name in ("cuid", "psk_identity", "cert_subject")):
            t.error(None, "needs cuid, psk_identity or cert_subject to recognise the client by")
        values = {
            "name": t.opt_string("name", required=True),
            "cuid": t.parsed("cuid", parse_cuid),
            "psk_identity": t.opt_string("psk_identity"),
            "cert_subject": t.parsed("cert_subject", parse_dn),
        }
        if values["psk_identity"] not in psk_identities | {None}:
            t.error(
                "psk_identity",
                f"{values['psk_identity']!r} is not the identity of any [[psk]] entry",
            )
        for name, value in values.items():
            if value is not None:
                seen[name].check(t, t.key(name), value)
        before = t.error_count
        prefixes = tuple(prefix for _, prefix in t.parsed_list("prefixes", parse_prefix))
        if not t.has("prefixes"):
            t.error("prefixes", "required key is missing: the prefixes this client may protect")
        elif not prefixes and t.error_count == before:
            t.error("prefixes", "must list at least one prefix")
        clients.append(
            ClientSettings(
                name=values["name"] or "",
                cuid=values["cuid"],
                psk_identity=values["psk_identity"],
                cert_subject=values["cert_subject"],
                prefixes=prefixes,
                fqdns=tuple(name for _, name in t.parsed_list("fqdns", parse_dns_name)),
                allow_any_cuid=t.boolean("allow_any_cuid", False),
            )
        )
        t.finish()
    return tuple(clients)


def _trusted_gateways(t: Table) -> TrustedGatewaysSettings:
    seen = Unique("identity")
    identities = tuple(
        text for key, text in t.strings("identities", ()) if seen.check(t, key, text)
    )
    t.finish()
    return TrustedGatewaysSettings(identities)


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


def _metrics(t: Table) -> MetricsSettings:
    listen = t.parsed("listen", parse_host_port, empty_ok=True)  # "" disables metrics
    t.finish()
    return MetricsSettings(listen)


def _control(t: Table, base_dir: Path | None, state_dir: Path) -> ControlSettings:
    path = t.opt_path("socket", base_dir, empty_ok=True)
    socket = path or state_dir / "control.sock"
    if len(str(socket).encode()) > UNIX_PATH_MAX:
        origin = "" if path else " (derived from general.state_dir)"
        t.error(
            "socket",
            f"{str(socket)!r}{origin} is longer than the {UNIX_PATH_MAX} bytes "
            "a Unix socket path can have",
        )
    t.finish()
    return ControlSettings(socket)


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
