"""Turns validated configuration into the pure core's objects (limits, policies, server core,
client rules, the redirect policy).

The config module knows TOML and key paths; the core knows RFC 9132. This is the only
place that knows both.
"""

from __future__ import annotations

from collections.abc import Sequence

from certs.devpki import DevPki
from gateway.config import Bounds, RedirectTargetSettings, SessionConfig, Settings
from gateway.dots.authz import ANY_NAME, EVERYWHERE, Authorizer, ClientRule
from gateway.dots.conflict import ConflictDecision, ConflictResolver, fixed_policy
from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import MitigationPolicy
from gateway.dots.server import DotsServerCore
from gateway.dots.session_config import ConfigLimits, Limit
from redirect.policy import AnycastMode, RedirectPolicy, Target


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
        max_requests_per_client=m.max_requests_per_client,
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


def dev_client_rules(pki: DevPki | None) -> list[ClientRule]:
    """With the dev PKI, a first try works: its identities may protect anything (issue 5)."""
    if pki is None:
        return []
    return [
        ClientRule("dev-client", cuid=pki.client_cuid, prefixes=EVERYWHERE, fqdns=(ANY_NAME,)),
        ClientRule("dev-psk", psk_identity=pki.psk_identity, prefixes=EVERYWHERE,
                   fqdns=(ANY_NAME,)),
    ]


def redirect_policy(settings: Settings) -> RedirectPolicy:
    r = settings.redirect

    def target(t: RedirectTargetSettings) -> Target:
        return Target(t.name, t.addresses)

    return RedirectPolicy(
        mode=AnycastMode(str(r.mode)),
        own=Target(r.name, r.addresses) if r.name else None,
        pool=tuple(target(t) for t in r.pool),
        static={t.cuid: target(t) for t in r.static if t.cuid},
        static_prefixes=tuple((prefix, target(t)) for t in r.static for prefix in t.prefixes),
        ttl=r.ttl,
        capacity=r.capacity,
    )
