"""What the DOTS server offers and allows its clients: ``[session]``, ``[mitigation]``,
``[[clients]]``, ``[trusted_gateways]``.

Owns their settings types, defaults and readers: the RFC 9132 §4.5 session parameter ranges
(idle and mitigating), what happens to accepted mitigation requests (lifetimes, conflicts,
backend), the configured clients with the credentials that recognise them and the prefixes and
names they may protect, and the downstream gateways trusted to speak for their clients.
Imports: standard library, ``gateway.config.schema``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from functools import partial
from typing import Any, Generic, TypeVar

from gateway.config.schema import (
    UINT16_MAX,
    UINT32_MAX,
    IPNetwork,
    Table,
    Unique,
    parse_cuid,
    parse_dn,
    parse_dns_name,
    parse_prefix,
)

# YANG decimal64 with fraction-digits 2 (RFC 9132 §5.3): the largest value it can carry.
DECIMAL64_2_MAX = Decimal("92233720368547758.07")


class ConflictPolicy(StrEnum):
    """Overlapping requests from different clients: server policy (RFC 9132 §4.4.1.3)."""

    REJECT_NEW = "reject-new"
    ACCEPT_BOTH = "accept-both"
    REPLACE_EXISTING = "replace-existing"


class Backend(StrEnum):
    LOG = "log"
    COMMAND = "command"


N = TypeVar("N", int, Decimal)


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


#: Observations one signal session may hold (RFC 7641 §4.1 lets a server decline more): one
#: per mitigation of a client at the default per-client cap, plus room for observing the whole
#: list and the configuration.
DEFAULT_MAX_OBSERVATIONS = 1024
#: Mitigation requests one client may hold (issue 17): far above what a client protecting its
#: own domain needs, low enough that one client cannot fill the server.
DEFAULT_MAX_REQUESTS_PER_CLIENT = 1000


@dataclass(frozen=True, slots=True)
class SessionSettings:
    idle: SessionConfig
    mitigating: SessionConfig
    max_age: int
    #: Observations per session; a registration beyond it is answered without Observe.
    max_observations: int = DEFAULT_MAX_OBSERVATIONS


@dataclass(frozen=True, slots=True)
class MitigationSettings:
    active_but_terminating: int
    active_but_terminating_max: int
    allow_indefinite_lifetime: bool
    max_lifetime: int  # 0: no cap
    conflict_policy: ConflictPolicy
    backend: Backend
    command: str
    #: Requests one client (cuid) may hold in any state; a new one beyond it gets 5.03.
    max_requests_per_client: int = DEFAULT_MAX_REQUESTS_PER_CLIENT


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


def read_session(t: Table) -> SessionSettings:
    idle = _session_config(t.table("idle"))
    mitigating = _session_config(t.table("mitigating"))
    max_age = t.integer("max_age", 3600, 1, UINT32_MAX, " seconds (RFC 9132 §4.5.3 Max-Age)")
    # RFC 9132 §4.4.2: Observe must be supported, so at least one.
    observations = t.integer("max_observations", DEFAULT_MAX_OBSERVATIONS, 1, 1_000_000,
                             " observations per session")
    t.finish()
    return SessionSettings(idle, mitigating, max_age, observations)


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


def read_mitigation(t: Table) -> MitigationSettings:
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
    cap = t.integer("max_requests_per_client", DEFAULT_MAX_REQUESTS_PER_CLIENT, 1, 10_000_000,
                    " requests per client")
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
    return MitigationSettings(abt, abt_max, indefinite, max_lifetime, policy, backend, command,
                              cap)


def read_clients(root: Table, psk_identities: set[str]) -> tuple[ClientSettings, ...]:
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


def read_trusted_gateways(t: Table) -> TrustedGatewaysSettings:
    seen = Unique("identity")
    identities = tuple(
        text for key, text in t.strings("identities", ()) if seen.check(t, key, text)
    )
    t.finish()
    return TrustedGatewaysSettings(identities)
