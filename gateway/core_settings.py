"""Turns validated configuration into the pure core's objects (limits, policies, server core).

The config module knows TOML and key paths; the core knows RFC 9132. This is the only
place that knows both.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import Bounds, SessionConfig, Settings
from gateway.dots.authz import Authorizer, ClientRule
from gateway.dots.conflict import ConflictDecision, ConflictResolver, fixed_policy
from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import MitigationPolicy
from gateway.dots.server import DotsServerCore
from gateway.dots.session_config import ConfigLimits, Limit


def _limit(bounds: Bounds) -> Limit:  # type: ignore[type-arg]
    return Limit(bounds.min, bounds.max, bounds.default)


def config_limits(session: SessionConfig) -> ConfigLimits:
    return ConfigLimits(
        heartbeat_interval=_limit(session.heartbeat_interval),
        missing_hb_allowed=_limit(session.missing_hb_allowed),
        probing_rate=_limit(session.probing_rate),
        max_retransmit=_limit(session.max_retransmit),
        ack_timeout=_limit(session.ack_timeout),
        ack_random_factor=_limit(session.ack_random_factor),
    )


def mitigation_policy(settings: Settings) -> MitigationPolicy:
    m = settings.mitigation
    return MitigationPolicy(
        active_but_terminating=m.active_but_terminating,
        active_but_terminating_max=m.active_but_terminating_max,
        allow_indefinite_lifetime=m.allow_indefinite_lifetime,
        max_lifetime=m.max_lifetime,
    )


def conflict_resolver(settings: Settings) -> ConflictResolver:
    return fixed_policy(ConflictDecision(str(settings.mitigation.conflict_policy)))


def client_rules(settings: Settings) -> list[ClientRule]:
    return [ClientRule(c.name, cuid=c.cuid, psk_identity=c.psk_identity,
                       cert_subject=c.cert_subject, prefixes=tuple(c.prefixes),
                       fqdns=tuple(c.fqdns), allow_any_cuid=c.allow_any_cuid)
            for c in settings.clients]


def build_server_core(settings: Settings, wall_offset: float = 0.0,
                      extra_rules: Sequence[ClientRule] = ()) -> DotsServerCore:
    """The DOTS server core as the configuration describes it (plus e.g. dev-PKI clients)."""
    store = MitigationStore(mitigation_policy(settings), conflict_resolver(settings), wall_offset)
    return DotsServerCore(
        store,
        mitigating_limits=config_limits(settings.session.mitigating),
        idle_limits=config_limits(settings.session.idle),
        config_max_age=settings.session.max_age,
        authorizer=Authorizer([*client_rules(settings), *extra_rules]),
    )
