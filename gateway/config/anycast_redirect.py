"""The node's anycast service and where its sessions are sent: ``[anycast]``, ``[redirect]``.

Owns their settings types, defaults and readers: the anycast addresses this node announces
(RFC 4786), the interface and kernel table or ExaBGP feed that carry the route, the health
checks that decide when it is announced, and the redirects (RFC 9132 §4.6, seed §10) that move
sessions reaching an anycast address to a unicast server. Not ``discovery.anycast``, which
lists upstream servers' addresses (``gateway.config.upstream``).
Imports: standard library, ``gateway.config.schema``, ``gateway.config.endpoints``.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from gateway.config.endpoints import ServerSettings
from gateway.config.schema import (
    UINT32_MAX,
    IPAddress,
    IPNetwork,
    Table,
    Unique,
    is_interface_name,
    parse_ip,
    parse_prefix,
)


class AnycastBackend(StrEnum):
    """How the anycast route is announced (``anycast/announce.py``)."""

    KERNEL_TABLE = "kernel-table"  # routes in a kernel table that BIRD learns
    EXABGP = "exabgp"  # "announce route" lines on stdout, read by ExaBGP


class InterfaceKind(StrEnum):
    """Link type created for the anycast holder when no interface of that name exists."""

    DUMMY = "dummy"
    IFB = "ifb"  # for kernels without CONFIG_DUMMY (some test machines)


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


# Kernel tables with a fixed meaning (linux/rtnetlink.h): unspec, default, main, local.
_RESERVED_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}


def read_anycast(t: Table, server: ServerSettings) -> AnycastSettings:
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
    if not is_interface_name(interface):
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


def read_redirect(t: Table) -> RedirectSettings:
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


def _redirect_target(t: Table, *, with_cuid: bool) -> RedirectTargetSettings | None:
    before = t.error_count
    name = t.opt_string("name", required=True)
    if name is not None and not _valid_fqdn(name):
        t.error("name", f"{name!r} is not a domain name (alt-server is an FQDN)")
    addresses = tuple(a for _key, a in t.parsed_list("addresses", parse_ip))
    cuid: str | None = None
    prefixes: tuple[IPNetwork, ...] = ()
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
