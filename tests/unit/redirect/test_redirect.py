"""Redirect policy (server side) and the rules for following a redirect (client side)."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from gateway.dots.errors import InvalidValue
from gateway.dots.model import RedirectedSignal
from redirect.follow import LOOP_WINDOW, RedirectFollower, Verdict
from redirect.policy import (
    UNTIL_FURTHER_NOTICE,
    AnycastMode,
    Reason,
    RedirectPolicy,
    Target,
    parse_target,
)

OWN = parse_target("dots-a.example.net", ["192.0.2.10", "2001:db8::10"])
POOL = tuple(parse_target(f"dots-{c}.example.net") for c in "bcdef")


def test_anycast_sessions_go_to_the_own_unicast_identity() -> None:
    policy = RedirectPolicy(own=OWN, ttl=600)
    decision = policy.decide(on_anycast=True, cuid="x", session_count=1, draining=False)
    assert decision is not None and decision.target == OWN and decision.ttl == 600
    assert decision.reason is Reason.ANYCAST
    assert decision.target.signal() == RedirectedSignal(
        "dots-a.example.net", (ipaddress.ip_address("192.0.2.10"),
                               ipaddress.ip_address("2001:db8::10")))
    assert policy.decide(on_anycast=False, cuid="x", session_count=1, draining=False) is None


def test_keep_mode_and_no_target_serve_on_anycast() -> None:
    assert RedirectPolicy(mode=AnycastMode.KEEP, own=OWN).decide(
        on_anycast=True, cuid="x", session_count=1, draining=False) is None
    assert RedirectPolicy().decide(on_anycast=True, cuid="x", session_count=1,
                                   draining=False) is None


def test_pool_hashing_is_stable_and_spreads_evenly() -> None:
    policy = RedirectPolicy(pool=POOL)
    picks = Counter()
    for i in range(5000):
        cuid = f"client-{i}"
        first = policy.decide(on_anycast=True, cuid=cuid, session_count=1, draining=False)
        again = policy.decide(on_anycast=True, cuid=cuid, session_count=1, draining=False)
        assert first is not None and again is not None and first.target == again.target
        picks[first.target.name] += 1
    assert len(picks) == 5 and min(picks.values()) > 800  # ~1000 each
    # Removing one node moves only its own clients.
    smaller = RedirectPolicy(pool=POOL[:-1])
    moved = sum(1 for i in range(2000)
                if (policy.decide(on_anycast=True, cuid=f"client-{i}", session_count=1,
                                  draining=False).target.name  # type: ignore[union-attr]
                    != POOL[-1].name)
                and smaller.decide(on_anycast=True, cuid=f"client-{i}", session_count=1,
                                   draining=False).target  # type: ignore[union-attr]
                != policy.decide(on_anycast=True, cuid=f"client-{i}", session_count=1,
                                 draining=False).target)  # type: ignore[union-attr]
    assert moved == 0


def test_static_assignment_wins() -> None:
    special = parse_target("dots-z.example.net")
    policy = RedirectPolicy(pool=POOL, static={"vip": special})
    decision = policy.decide(on_anycast=True, cuid="vip", session_count=1, draining=False)
    assert decision is not None and decision.target == special


def test_capacity_sends_new_sessions_to_the_least_loaded_peer() -> None:
    policy = RedirectPolicy(own=POOL[0], pool=POOL, capacity=10)
    assert policy.decide(on_anycast=False, cuid="c", session_count=10, draining=False) is None
    decision = policy.decide(on_anycast=False, cuid="c", session_count=11, draining=False,
                             load={"dots-c.example.net": 5, "dots-d.example.net": 1,
                                   "dots-e.example.net": 9, "dots-f.example.net": 3})
    assert decision is not None and decision.reason is Reason.CAPACITY
    assert decision.target.name == "dots-d.example.net"


def test_drain_redirects_everyone_elsewhere_for_the_normal_ttl() -> None:
    policy = RedirectPolicy(own=POOL[0], pool=POOL, mode=AnycastMode.KEEP)
    decision = policy.decide(on_anycast=False, cuid="c", session_count=1, draining=True)
    # Not Max-Age 0: the client would come straight back to the draining node.
    assert decision is not None and decision.reason is Reason.DRAIN and decision.ttl == 3600
    assert decision.target != POOL[0]
    assert RedirectPolicy(own=OWN).decide(on_anycast=True, cuid="c", session_count=1,
                                          draining=True) is None  # nowhere else to go


def test_target_names_must_be_domain_names() -> None:
    with pytest.raises(InvalidValue):
        Target("not a name")


def test_follow_then_return_when_the_ttl_expires_except_under_attack() -> None:
    follower = RedirectFollower()
    follower.contacted("dots.example.net", 0.0)
    decision = follower.on_redirect(RedirectedSignal("alt.example", (
        ipaddress.ip_address("2001:db8::1"),)), max_age=100, now=10.0)
    assert decision.verdict is Verdict.FOLLOW and decision.addresses == ("2001:db8::1",)
    assert not follower.should_return(109.0, under_attack=False)
    assert not follower.should_return(111.0, under_attack=True)
    assert follower.should_return(111.0, under_attack=False)


def test_redirect_to_a_recent_server_is_a_loop() -> None:
    follower = RedirectFollower()
    follower.contacted("alt.example", 0.0)
    looped = follower.on_redirect(RedirectedSignal("alt.example"), max_age=100, now=60.0)
    assert looped.verdict is Verdict.IGNORE_LOOP
    follower.contacted("2001:db8::7", 100.0)
    looped = follower.on_redirect(RedirectedSignal("other.example", (
        ipaddress.ip_address("2001:db8::7"),)), max_age=100, now=150.0)
    assert looped.verdict is Verdict.IGNORE_LOOP
    later = follower.on_redirect(RedirectedSignal("alt.example"), max_age=None,
                                 now=LOOP_WINDOW + 1)
    assert later.verdict is Verdict.FOLLOW and later.until == LOOP_WINDOW + 1 + 60


def test_infinite_ttl_never_expires() -> None:
    follower = RedirectFollower()
    follower.on_redirect(RedirectedSignal("alt.example"), max_age=UNTIL_FURTHER_NOTICE, now=0.0)
    assert not follower.should_return(1e12, under_attack=False)


def test_static_assignment_by_source_prefix_longest_match_after_cuid() -> None:
    near, far, pinned = (parse_target(f"dots-{n}.example.net") for n in ("near", "far", "pin"))
    policy = RedirectPolicy(own=OWN, pool=POOL, static={"vip": pinned}, static_prefixes=(
        (ipaddress.ip_network("198.51.100.0/24"), far),
        (ipaddress.ip_network("198.51.100.128/25"), near),
        (ipaddress.ip_network("2001:db8:100::/48"), near)))

    def target(cuid: str, peer: str | None) -> str:
        decision = policy.decide(on_anycast=True, cuid=cuid, session_count=1, draining=False,
                                 peer=peer)
        assert decision is not None and decision.reason is Reason.ANYCAST
        return decision.target.name

    assert target("c", "198.51.100.200") == "dots-near.example.net"  # the longer prefix
    assert target("c", "198.51.100.7") == "dots-far.example.net"
    assert target("c", "2001:db8:100::5") == "dots-near.example.net"
    assert target("c", "fe80::1%eth0") in {t.name for t in (*POOL, OWN)}  # no match: pool
    assert target("c", None) == target("c", "203.0.113.1")  # no address known: pool
    assert target("vip", "198.51.100.200") == "dots-pin.example.net"  # cuid first
