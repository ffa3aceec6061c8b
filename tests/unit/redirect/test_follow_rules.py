"""The pure following rules (``redirect.follow``) beyond those in test_redirect.py: the TTL
deadline the client arms, postponing a return, forgetting a server, and what a decision
names. Fake time only."""

from __future__ import annotations

import ipaddress

from gateway.dots.model import RedirectedSignal
from redirect.follow import DEFAULT_TTL, LOOP_WINDOW, RedirectFollower, Verdict
from redirect.policy import UNTIL_FURTHER_NOTICE

ALT = RedirectedSignal("alt.example", (ipaddress.ip_address("192.0.2.7"),))


def test_decision_names_the_server_by_name_and_addresses() -> None:
    decision = RedirectFollower().on_redirect(ALT, max_age=30, now=0.0)
    assert decision.names == ("alt.example", "192.0.2.7")
    assert decision.ttl == 30 and decision.until == 30.0


def test_missing_max_age_is_coap_default() -> None:
    decision = RedirectFollower().on_redirect(ALT, max_age=None, now=5.0)
    assert decision.ttl == DEFAULT_TTL == 60 and decision.until == 65.0


def test_return_deadline_is_the_ttl_and_none_during_an_attack() -> None:
    follower = RedirectFollower()
    assert follower.return_due_at(under_attack=False) is None  # no redirect in force
    follower.on_redirect(ALT, max_age=100, now=10.0)
    assert follower.return_due_at(under_attack=False) == 110.0
    assert follower.return_due_at(under_attack=True) is None
    follower.on_redirect(RedirectedSignal("other.example"), max_age=UNTIL_FURTHER_NOTICE,
                         now=20.0)
    assert follower.return_due_at(under_attack=False) is None


def test_max_age_0_is_due_at_once() -> None:
    follower = RedirectFollower()
    follower.on_redirect(ALT, max_age=0, now=10.0)
    assert follower.return_due_at(under_attack=False) == 10.0
    assert follower.should_return(10.0, under_attack=False)
    assert follower.current is None


def test_postpone_moves_the_deadline_and_keeps_the_target() -> None:
    follower = RedirectFollower()
    follower.on_redirect(ALT, max_age=10, now=0.0)
    follower.postpone(70.0)
    assert follower.current is not None and follower.current.server == "alt.example"
    assert not follower.should_return(69.0, under_attack=False)
    assert follower.should_return(70.0, under_attack=False)
    follower.postpone(100.0)  # nothing in force: nothing to postpone
    assert follower.current is None


def test_a_loop_leaves_the_redirect_in_force_unchanged() -> None:
    follower = RedirectFollower()
    first = follower.on_redirect(ALT, max_age=100, now=0.0)
    follower.contacted("back.example", 1.0)
    looped = follower.on_redirect(RedirectedSignal("back.example"), max_age=5, now=2.0)
    assert looped.verdict is Verdict.IGNORE_LOOP and follower.current == first


def test_forgotten_servers_are_no_loop() -> None:
    follower = RedirectFollower()
    follower.contacted("alt.example", 0.0)
    follower.contacted("192.0.2.7", 0.0)
    assert follower.recent("alt.example", LOOP_WINDOW - 1)
    assert not follower.recent("alt.example", LOOP_WINDOW)
    follower.forget(["alt.example", "192.0.2.7", "never-seen.example"])
    assert follower.on_redirect(ALT, max_age=10, now=1.0).verdict is Verdict.FOLLOW


def test_history_is_bounded() -> None:
    follower = RedirectFollower()
    for i in range(1000):
        follower.contacted(f"n{i}.example", i / 1000)
    assert not follower.recent("n0.example", 1.0)  # dropped though within the window
    assert follower.recent("n999.example", 1.0)
    assert len(follower._contacted) == 64
