"""Session configuration negotiation (RFC 9132 §4.5), server and client sides.

Two parameter sets exist, ``mitigating-config`` and ``idle-config``; which one is in force
depends on whether the client has an active mitigation, and agents switch automatically.
The server offers min/max/current values (GET), accepts a client's choice under a
monotonically increasing ``sid`` (PUT: 2.01 new sid, 2.04 same sid, 4.22 outside bounds),
and resets to defaults on DELETE. Over reliable transports only heartbeat-interval and
probing-rate are negotiated (§4.5).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from gateway.dots.codes import MAX_AGE_INFINITE
from gateway.dots.errors import DotsUsageError, InvalidValue, NotFound, UnacceptableConfig
from gateway.dots.model import CONFIG_PARAMETERS, ConfigSet, ConfigValue, Number, SignalConfig

log = logging.getLogger(__name__)

#: Parameters that only make sense over unreliable transports (RFC 9132 §4.5).
UNRELIABLE_ONLY = frozenset({"missing_hb_allowed", "max_retransmit", "ack_timeout",
                             "ack_random_factor"})
#: RFC 9132 §4.5.3: without Max-Age, refresh every 60 s (CoAP's default Max-Age).
DEFAULT_MAX_AGE = 60
_UINT32_MAX = 2**32 - 1
_UINT16_MAX = 2**16 - 1


@dataclass(frozen=True, slots=True)
class Limit:
    min_value: Number
    max_value: Number
    default: Number

    def __post_init__(self) -> None:
        if not self.min_value <= self.default <= self.max_value:
            raise DotsUsageError(f"limit needs min <= default <= max, got {self}")


@dataclass(frozen=True, slots=True)
class SessionParameters:
    """The values in force for one set (what transports and heartbeats use)."""

    heartbeat_interval: int = 30
    missing_hb_allowed: int = 15
    probing_rate: int = 5
    max_retransmit: int = 3
    ack_timeout: Decimal = Decimal("2.00")
    ack_random_factor: Decimal = Decimal("1.50")


@dataclass(frozen=True, slots=True)
class ConfigLimits:
    """What the server accepts for one set (RFC 9132 App. C defaults, Figure 20 bounds)."""

    heartbeat_interval: Limit = Limit(15, 240, 30)
    missing_hb_allowed: Limit = Limit(3, 20, 15)
    probing_rate: Limit = Limit(5, 20, 5)
    max_retransmit: Limit = Limit(2, 15, 3)
    ack_timeout: Limit = Limit(Decimal("1.00"), Decimal("30.00"), Decimal("2.00"))
    ack_random_factor: Limit = Limit(Decimal("1.10"), Decimal("4.00"), Decimal("1.50"))

    def defaults(self) -> SessionParameters:
        return SessionParameters(**{f.name: getattr(self, f.name).default for f in fields(self)})


_DEFAULT_LIMITS = ConfigLimits()
_DefaultSets = tuple[Mapping[bool, ConfigLimits], Mapping[bool, SessionParameters]]
#: (id, id) of the limits -> (the limits, their sets). By identity: the server passes the
#: same limit objects for every session, and hashing the nested frozen dataclasses (a
#: Python __hash__ per field) cost more than building the sets did.
_default_sets_cache: dict[tuple[int, int], tuple[ConfigLimits, ConfigLimits, _DefaultSets]] = {}


def _default_sets(mitigating: ConfigLimits, idle: ConfigLimits) -> _DefaultSets:
    cached = _default_sets_cache.get((id(mitigating), id(idle)))
    if cached is not None and cached[0] is mitigating and cached[1] is idle:
        return cached[2]
    sets: _DefaultSets = (
        MappingProxyType({True: mitigating, False: idle}),
        MappingProxyType({True: mitigating.defaults(), False: idle.defaults()}))
    if len(_default_sets_cache) >= 16:  # bounded; the entries keep their limits alive
        _default_sets_cache.clear()
    _default_sets_cache[(id(mitigating), id(idle))] = (mitigating, idle, sets)
    return sets


def _params_to_set(params: SessionParameters, limits: ConfigLimits | None,
                   reliable: bool) -> ConfigSet:
    values: dict[str, ConfigValue] = {}
    for name, _key, _decimal in CONFIG_PARAMETERS:
        if reliable and name in UNRELIABLE_ONLY:
            continue
        limit: Limit | None = getattr(limits, name) if limits else None
        values[name] = ConfigValue(getattr(params, name),
                                   limit.min_value if limit else None,
                                   limit.max_value if limit else None)
    return ConfigSet(**values)  # type: ignore[arg-type]


class ServerSessionConfig:
    """The configuration of one signal-channel session, as the server keeps it."""

    def __init__(self, mitigating: ConfigLimits | None = None, idle: ConfigLimits | None = None,
                 *, max_age: int = 3600, reliable: bool = False) -> None:
        # Shared by every session with the same limits (read-only; replaced, never changed
        # in place): built once, not for each of tens of thousands of sessions.
        self.limits, self._params = _default_sets(mitigating or _DEFAULT_LIMITS,
                                                  idle or _DEFAULT_LIMITS)
        self.max_age = max_age
        self.reliable = reliable
        self.sid: int | None = None

    def parameters(self, mitigating: bool) -> SessionParameters:
        """The set in force: ``mitigating-config`` while any mitigation is active (§4.5)."""
        params = self._params[mitigating]
        if self.reliable:
            # Over TCP a heartbeat unanswered within the interval is a failure (§4.7).
            params = replace(params, missing_hb_allowed=1)
        return params

    def get(self, sid: int | None) -> SignalConfig:
        """GET config: limits and current values; with a sid, the negotiated values (§4.5.1)."""
        if sid is not None and sid != self.sid:
            raise NotFound(f"no session configuration with sid {sid}")
        with_limits = sid is None
        return SignalConfig(
            mitigating_config=_params_to_set(self._params[True],
                                             self.limits[True] if with_limits else None,
                                             self.reliable),
            idle_config=_params_to_set(self._params[False],
                                       self.limits[False] if with_limits else None,
                                       self.reliable),
        )

    def put(self, sid: int, config: SignalConfig) -> bool:
        """Install a client's choice; True when the sid is new (2.01), False for 2.04."""
        if self.sid is not None and sid < self.sid:
            raise InvalidValue(
                f"sid {sid} is lower than the installed sid {self.sid}; sids increase "
                "monotonically (RFC 9132 §4.5.2); DELETE config to start over"
            )
        new_params: dict[bool, SessionParameters] = {}
        problems: list[str] = []
        for mitigating, set_name, config_set in ((True, "mitigating-config",
                                                  config.mitigating_config),
                                                 (False, "idle-config", config.idle_config)):
            # Values not supplied keep the server's defaults (§4.5.2), not earlier choices.
            chosen: dict[str, Any] = {}
            for name, value in (config_set.items() if config_set else ()):
                if self.reliable and name in UNRELIABLE_ONLY:
                    continue  # not negotiated over reliable transports (§4.5)
                limit: Limit = getattr(self.limits[mitigating], name)
                current = value.current_value
                if isinstance(limit.default, Decimal) != isinstance(current, Decimal):
                    raise InvalidValue(f"{set_name}/{_yang(name)}: wrong value type")
                assert current is not None
                if not limit.min_value <= current <= limit.max_value:
                    problems.append(f"{set_name}/{_yang(name)} {current} is outside "
                                    f"{limit.min_value}-{limit.max_value}")
                chosen[name] = current
            new_params[mitigating] = replace(self.limits[mitigating].defaults(), **chosen)
        if problems:
            raise UnacceptableConfig("; ".join(problems))  # 4.22, RFC 9132 §4.5.2
        created = sid != self.sid
        self.sid = sid
        self._params = new_params
        log.info("session config sid=%d installed (%s)", sid, "new" if created else "updated")
        return created

    def delete(self) -> None:
        """DELETE config (with or without sid): back to the defaults (§4.5.4)."""
        self.sid = None
        self._params = _default_sets(self.limits[True], self.limits[False])[1]


def _yang(name: str) -> str:
    return name.replace("_", "-")


# --- client side -------------------------------------------------------------------------------


class ClientSessionConfig:
    """What a DOTS client tracks: its sid counter, the values in force, when to refresh."""

    def __init__(self, preferred_mitigating: SessionParameters | None = None,
                 preferred_idle: SessionParameters | None = None, *, sid: int = 0) -> None:
        self.preferred = {True: preferred_mitigating or SessionParameters(),
                          False: preferred_idle or SessionParameters()}
        self.next_sid = sid
        self.current = {True: SessionParameters(), False: SessionParameters()}
        self.refresh_at: float | None = None

    def allocate_sid(self) -> int:
        sid = self.next_sid
        if sid > _UINT32_MAX:
            raise DotsUsageError("sid space exhausted; DELETE config and start again at 0")
        self.next_sid += 1
        return sid

    def proposal(self, offered: SignalConfig) -> SignalConfig:
        """The PUT body: our preferences clamped into the server's advertised bounds."""
        def clamp(mitigating: bool, offered_set: ConfigSet | None) -> ConfigSet | None:
            if offered_set is None:
                return None
            values = {}
            for name, value in offered_set.items():
                want: Number = getattr(self.preferred[mitigating], name)
                if value.min_value is not None:
                    want = max(want, value.min_value)
                if value.max_value is not None:
                    want = min(want, value.max_value)
                values[name] = ConfigValue(want)
            return ConfigSet(**values)  # type: ignore[arg-type]

        return SignalConfig(clamp(True, offered.mitigating_config),
                            clamp(False, offered.idle_config))

    def adopt(self, config: SignalConfig, max_age: int | None, now: float) -> None:
        """Take the server's current values and schedule the next refresh (§4.5.3)."""
        for mitigating, config_set in ((True, config.mitigating_config),
                                       (False, config.idle_config)):
            if config_set is None:
                continue
            chosen = {name: v.current_value for name, v in config_set.items()
                      if v.current_value is not None}
            self.current[mitigating] = replace(self.current[mitigating], **chosen)  # type: ignore[arg-type]
        age = DEFAULT_MAX_AGE if max_age is None else max_age
        self.refresh_at = None if age >= MAX_AGE_INFINITE else now + age

    def refresh_due(self, now: float, *, under_attack: bool) -> bool:
        """Whether to GET config/sid now; never during an attack (§4.5.3)."""
        return not under_attack and self.refresh_at is not None and now >= self.refresh_at

