"""The seed §5 procedure with a fake clock and a fake network: order, stop-at-first,
collect-all, validity expiry, retry waits per error type, trust allow-list."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace

import pytest

from gateway.discovery.candidates import (
    Family,
    IdentifierType,
    Mechanism,
    Slot,
    Transport,
)
from gateway.discovery.dhcp_options import DhcpInfo, DotsServer
from gateway.discovery.errors import DiscoveryUsageError
from gateway.discovery.lookups import (
    DhcpQuery,
    DnsQuery,
    FailureKind,
    LookupFailure,
    MdnsBrowse,
    MdnsService,
)
from gateway.discovery.procedure import (
    AnycastServer,
    CandidatesFound,
    Input,
    ManualServer,
    MechanismFinished,
    NothingFound,
    Procedure,
    ProcedureSettings,
    SlotState,
    ValidityExpired,
)
from tests.unit.discovery.test_discovery_snaptr import SEED_ZONE, answer

ip = ipaddress.ip_address
ETH4 = Slot("eth0", Family.V4)
ETH6 = Slot("eth0", Family.V6)
ALL = (Mechanism.MANUAL, Mechanism.DHCP, Mechanism.SNAPTR, Mechanism.DNSSD, Mechanism.MDNS,
       Mechanism.ANYCAST)


@dataclass
class World:
    """A fake network: DNS zone, DHCP replies and mDNS instances per slot; logs requests."""

    zone: dict = field(default_factory=dict)
    dhcp: dict = field(default_factory=dict)
    mdns: dict = field(default_factory=dict)
    ttl: int = 300
    log: list = field(default_factory=list)

    def answer(self, request):  # type: ignore[no-untyped-def]
        self.log.append(request)
        if isinstance(request, DhcpQuery):
            return self.dhcp.get(request.slot, LookupFailure(FailureKind.NO_REPLY, "silence"))
        if isinstance(request, MdnsBrowse):
            return self.mdns.get(request.slot, ())
        assert isinstance(request, DnsQuery)
        return answer(self.zone, request, self.ttl)

    def dns_names(self) -> list[tuple[str, str]]:
        return [(q.name, q.rdtype) for q in self.log if isinstance(q, DnsQuery)]


def drive(proc: Procedure, world: World, now: float) -> None:
    for _ in range(500):  # bounded: a plan never needs this many steps here
        item = proc.next_request()
        if item is None:
            return
        request_id, request = item
        proc.query_result(request_id, world.answer(request), now)
    raise AssertionError("procedure did not settle")


def events(proc: Procedure, *, progress: bool = False) -> list:  # type: ignore[type-arg]
    """The events so far; the per-mechanism progress ones only with ``progress``."""
    out = []
    while (event := proc.next_event()) is not None:
        if progress or not isinstance(event, MechanismFinished):
            out.append(event)
    return out


def settings(**kwargs) -> ProcedureSettings:  # type: ignore[no-untyped-def]
    return ProcedureSettings(**kwargs)


def start(world: World, slots=(ETH4,), now: float = 1000.0, **kwargs) -> Procedure:  # type: ignore[no-untyped-def]
    proc = Procedure(settings(**kwargs), list(slots), now)
    proc.start(now)
    drive(proc, world, now)
    return proc


def table(proc: Procedure) -> list[tuple[str, str, str, int, str]]:
    return [(c.mechanism.value, c.transport.value, str(c.address), c.port,
             c.reference_identifier) for c in proc.candidates()]


MANUAL = ManualServer("p", ip("192.0.2.10"), None, "dots.example.net", 4646,
                      Transport.SIGNAL_UDP)
DHCP_RI_ADDR = DhcpInfo(4, servers=(DotsServer((ip("10.0.0.10"),), "dots.example.net"),),
                        access_domain="example.net", dns_servers=(ip("10.0.0.53"),),
                        refresh=600)


def test_manual_first_and_nothing_else_is_asked() -> None:
    world = World(dhcp={ETH4: DHCP_RI_ADDR})
    proc = start(world, manual=(MANUAL,))
    assert table(proc) == [("manual", "signal.udp", "192.0.2.10", 4646, "dots.example.net")]
    assert world.log == []  # stop at the first mechanism with candidates (seed §5)
    assert proc.state(ETH4) is SlotState.RESOLVED
    assert proc.get_timer() is None  # configuration does not expire
    reasons = {o.mechanism: o.reason for o in proc.outcomes(ETH4)}
    assert reasons[Mechanism.DHCP].startswith("not tried")


def test_manual_host_is_resolved_and_is_the_reference_identifier() -> None:
    world = World(zone={("dots.example.net", "A"): ["192.0.2.20", "192.0.2.21"]})
    server = ManualServer("p", None, "dots.example.net", None, 4647, Transport.SIGNAL_TCP)
    proc = start(world, manual=(server,), dns_servers=(ip("10.9.9.9"),))
    assert table(proc) == [("manual", "signal.tcp", "192.0.2.20", 4647, "dots.example.net"),
                           ("manual", "signal.tcp", "192.0.2.21", 4647, "dots.example.net")]
    assert world.log[0].servers == (ip("10.9.9.9"),)


def test_dhcp_ri_with_address_is_never_resolved() -> None:
    world = World(dhcp={ETH4: DHCP_RI_ADDR})
    proc = start(world)
    assert table(proc) == [
        ("dhcp", "signal.udp", "10.0.0.10", 4646, "dots.example.net"),
        ("dhcp", "signal.tcp", "10.0.0.10", 4646, "dots.example.net"),
    ]
    assert world.dns_names() == []  # seed §9.2.3: MUST NOT be passed to a resolver
    assert proc.candidates()[0].expires_at == 1000.0 + 600  # DHCP validity


def test_dhcp_ri_only_is_resolved_with_the_dhcp_dns_servers() -> None:
    info = DhcpInfo(4, servers=(DotsServer((), "dots.example.net"),),
                    dns_servers=(ip("10.0.0.53"),))
    world = World(dhcp={ETH4: info}, zone={("dots.example.net", "A"): ["192.0.2.30"]}, ttl=120)
    proc = start(world)
    assert table(proc)[0] == ("dhcp", "signal.udp", "192.0.2.30", 4646, "dots.example.net")
    (query,) = [q for q in world.log if isinstance(q, DnsQuery)]
    assert query.servers == (ip("10.0.0.53"),) and query.interface == "eth0"
    assert proc.candidates()[0].expires_at == 1000.0 + 120


def test_dhcp_address_only_uses_the_address_as_identifier() -> None:
    info = DhcpInfo(6, servers=(DotsServer((ip("fd00::10"),), None),))
    proc = start(World(dhcp={ETH6: info}), slots=(ETH6,))
    first = proc.candidates()[0]
    assert first.reference_identifier == "fd00::10"
    assert first.identifier_type is IdentifierType.IP


def test_snaptr_with_the_dhcp_domain_when_dhcp_has_no_dots_options() -> None:
    info = DhcpInfo(6, access_domain="example.net", dns_servers=(ip("fd00::53"),),
                    refresh=86400)
    world = World(dhcp={ETH6: info}, zone=SEED_ZONE)
    proc = start(world, slots=(ETH6,))
    assert table(proc) == [
        ("s-naptr", "signal.udp", "2001:db8::1", 5000, "example.net"),
        ("s-naptr", "signal.tcp", "2001:db8::1", 5001, "example.net"),
        ("s-naptr", "data.tcp", "2001:db8::1", 5002, "example.net"),
    ]
    assert all(q.servers == (ip("fd00::53"),) for q in world.log if isinstance(q, DnsQuery))
    reasons = {o.mechanism: o.reason for o in proc.outcomes(ETH6)}
    assert reasons[Mechanism.MANUAL] == "no [[upstream]] configured"
    assert reasons[Mechanism.DHCP] == "the reply carried no DOTS options"


def test_higher_mechanism_fails_next_one_is_used() -> None:
    zone = {("_dots-signal._udp.example.org", "PTR"): ["gw._dots-signal._udp.example.org."],
            ("gw._dots-signal._udp.example.org", "SRV"): ["0 0 4646 gw.example.org."],
            ("gw.example.org", "A"): ["192.0.2.40"]}
    world = World(zone=zone)
    proc = start(world, default_domain="example.org")
    assert table(proc) == [("dns-sd", "signal.udp", "192.0.2.40", 4646, "gw.example.org")]
    reasons = {o.mechanism: o.reason for o in proc.outcomes(ETH4)}
    assert "no usable DHCP reply: no-reply" in reasons[Mechanism.DHCP]
    assert "example.org: nxdomain" in reasons[Mechanism.SNAPTR]


def test_collect_all_keeps_every_mechanism_in_order() -> None:
    mdns = (MdnsService("_dots-signal._udp.local.", "gw._dots-signal._udp.local.",
                        "gw.local.", 4646, (ip("10.0.0.7"),), 120),)
    world = World(dhcp={ETH4: DHCP_RI_ADDR}, mdns={ETH4: mdns},
                  zone={("example.net", "NAPTR"): [
                      '10 10 "A" "DOTS:signal.udp" "" dots.example.net.'],
                      ("dots.example.net", "A"): ["10.0.0.10"]})
    proc = start(world, collect_all=True, manual=(MANUAL,),
                 anycast=(AnycastServer(ip("192.0.2.46"), "dots.example.net", 4646),))
    assert [c.mechanism for c in proc.candidates()] == [
        Mechanism.MANUAL, Mechanism.DHCP, Mechanism.DHCP, Mechanism.SNAPTR, Mechanism.MDNS,
        Mechanism.ANYCAST, Mechanism.ANYCAST]


def test_disabled_mechanisms_are_skipped_but_order_stays() -> None:
    world = World(dhcp={ETH4: DHCP_RI_ADDR})
    proc = start(world, mechanisms=(Mechanism.ANYCAST, Mechanism.DHCP),
                 anycast=(AnycastServer(ip("192.0.2.46"), "dots.example.net", 4646),))
    assert [c.mechanism for c in proc.candidates()] == [Mechanism.DHCP, Mechanism.DHCP]
    assert [o.mechanism for o in proc.outcomes(ETH4)] == [Mechanism.DHCP, Mechanism.ANYCAST]


def test_anycast_one_candidate_set_per_interface_and_family() -> None:
    anycast = (AnycastServer(ip("192.0.2.46"), "dots.example.net", 4646),
               AnycastServer(ip("2001:db8::4646"), "dots.example.net", 4646))
    slots = (ETH4, ETH6, Slot("eth1", Family.V4))
    proc = start(World(), slots=slots, mechanisms=(Mechanism.ANYCAST,), anycast=anycast)
    assert [(c.interface, str(c.address), c.transport.value) for c in proc.candidates()] == [
        ("eth0", "192.0.2.46", "signal.udp"), ("eth0", "192.0.2.46", "signal.tcp"),
        ("eth0", "2001:db8::4646", "signal.udp"), ("eth0", "2001:db8::4646", "signal.tcp"),
        ("eth1", "192.0.2.46", "signal.udp"), ("eth1", "192.0.2.46", "signal.tcp")]


# --- validity and retry timers --------------------------------------------------------------


def test_validity_expiry_triggers_a_rerun() -> None:
    world = World(dhcp={ETH4: DHCP_RI_ADDR})
    proc = start(world)
    assert isinstance(events(proc)[0], CandidatesFound)
    assert proc.get_timer() == 1600.0
    proc.handle_timer(1599.0)  # early: nothing
    assert proc.next_request() is None and proc.state(ETH4) is SlotState.RESOLVED
    proc.handle_timer(1600.0)
    assert isinstance(events(proc)[0], ValidityExpired)
    assert proc.state(ETH4) is SlotState.RUNNING
    world.dhcp[ETH4] = replace(DHCP_RI_ADDR, refresh=900)
    drive(proc, world, 1600.0)
    assert proc.get_timer() == 2500.0 and len(world.log) == 2


def test_ttl_zero_is_floored_at_min_validity() -> None:
    # dnsmasq answers its local records with TTL 0 unless local-ttl is set.
    world = World(zone=SEED_ZONE, ttl=0)
    proc = start(world, slots=(ETH6,), mechanisms=(Mechanism.SNAPTR,),
                 domains=("example.net",), min_validity=60.0)
    assert proc.get_timer() == 1060.0


@pytest.mark.parametrize(
    ("kind", "wait"),
    [(FailureKind.NXDOMAIN, 300.0), (FailureKind.NODATA, 300.0), (FailureKind.SERVFAIL, 60.0),
     (FailureKind.TIMEOUT, 30.0), (FailureKind.REFUSED, 300.0)],
)
def test_retry_wait_depends_on_the_error(kind: FailureKind, wait: float) -> None:
    world = World(zone={("example.net", "NAPTR"): kind})
    proc = start(world, mechanisms=(Mechanism.SNAPTR,), domains=("example.net",))
    (event,) = events(proc)
    assert isinstance(event, NothingFound) and event.retry_at == 1000.0 + wait
    assert proc.get_timer() == 1000.0 + wait
    assert proc.retry_wait("s-naptr example.net eth0/ipv4") == (1000.0 + wait, kind)


def test_failed_lookup_is_not_retried_before_its_wait_even_on_demand() -> None:
    world = World(zone={("example.net", "NAPTR"): FailureKind.SERVFAIL})
    proc = start(world, mechanisms=(Mechanism.SNAPTR,), domains=("example.net",))
    assert len(world.log) == 1
    assert proc.rerun(1010.0) == [ETH4]
    drive(proc, world, 1010.0)
    assert len(world.log) == 1  # seed §6: MUST wait before retrying
    assert "not retried before +50 s (last failure: servfail)" in proc.outcomes(ETH4)[0].reason
    assert proc.get_timer() == 1060.0  # the original wait, not a new one
    proc.handle_timer(1060.0)
    drive(proc, world, 1060.0)
    assert len(world.log) == 2
    assert proc.get_timer() == 1060.0 + 120.0  # the same failure again: the wait doubles


def test_retry_wait_is_never_zero_and_follows_negative_ttl() -> None:
    waits = dict.fromkeys(FailureKind, 1.0)
    proc = Procedure(settings(mechanisms=(Mechanism.SNAPTR,), domains=("example.net",),
                              retry_waits=waits), [ETH4], 0.0)
    proc.start(0.0)
    request_id, _ = proc.next_request()
    proc.query_result(request_id, LookupFailure(FailureKind.NXDOMAIN, "", negative_ttl=900), 0.0)
    assert proc.get_timer() == 900.0  # RFC 2308 negative TTL beats the configured floor
    with pytest.raises(DiscoveryUsageError):
        ProcedureSettings(retry_waits=dict.fromkeys(FailureKind, 0.0))


def test_recovery_clears_the_wait() -> None:
    world = World(zone={("example.net", "NAPTR"): FailureKind.TIMEOUT})
    proc = start(world, slots=(ETH6,), mechanisms=(Mechanism.SNAPTR,), domains=("example.net",))
    world.zone = SEED_ZONE
    proc.handle_timer(1030.0)
    drive(proc, world, 1030.0)
    assert proc.state(ETH6) is SlotState.RESOLVED and len(proc.candidates()) == 3
    assert proc.retry_wait("s-naptr example.net eth0/ipv6") is None


def test_dhcp_no_reply_waits_and_other_domains_are_tried_at_once() -> None:
    zone = {("bad.example", "NAPTR"): FailureKind.NXDOMAIN,
            ("good.example", "NAPTR"): ['10 10 "A" "DOTS:signal.udp" "" s.good.example.'],
            ("s.good.example", "A"): ["192.0.2.50"]}
    world = World(zone=zone)
    proc = start(world, domains=("bad.example", "good.example"))
    assert table(proc) == [("s-naptr", "signal.udp", "192.0.2.50", 4646, "good.example")]
    assert proc.retry_wait("dhcp eth0/ipv4") == (1060.0, FailureKind.NO_REPLY)


# --- security -------------------------------------------------------------------------------


def test_rogue_dhcp_name_is_rejected_by_the_allow_list() -> None:
    rogue = DhcpInfo(4, servers=(DotsServer((ip("10.6.6.6"),), "dots.evil.example"),))
    proc = start(World(dhcp={ETH4: rogue}), trusted_domains=("*.example.net",))
    assert proc.candidates() == []
    assert "not in trusted_domains" in proc.outcomes(ETH4)[1].reason
    good = DhcpInfo(4, servers=(DotsServer((ip("10.0.0.1"),), "Dots.Example.NET."),))
    proc = start(World(dhcp={ETH4: good}), trusted_domains=("*.example.net",))
    assert len(proc.candidates()) == 2
    # Addresses alone cannot be checked against the list.
    bare = DhcpInfo(4, servers=(DotsServer((ip("10.0.0.1"),), None),))
    assert start(World(dhcp={ETH4: bare}), trusted_domains=("example.net",)).candidates() == []


def test_rogue_mdns_target_is_rejected() -> None:
    mdns = (MdnsService("_dots-signal._udp.local.", "x._dots-signal._udp.local.", "evil.local.",
                        4646, (ip("10.0.0.66"),), 120),)
    proc = start(World(mdns={ETH4: mdns}), trusted_domains=("dots.example.net",))
    assert proc.candidates() == []
    assert "evil.local not in trusted_domains" in proc.outcomes(ETH4)[4].reason


def test_snaptr_domain_outside_the_allow_list_is_not_looked_up() -> None:
    world = World(zone=SEED_ZONE)
    proc = start(world, slots=(ETH6,), mechanisms=(Mechanism.SNAPTR,),
                 domains=("example.net",), trusted_domains=("example.com",))
    assert proc.candidates() == [] and world.log == []


def test_every_candidate_has_a_reference_identifier() -> None:
    world = World(dhcp={ETH6: DhcpInfo(6, access_domain="example.net")}, zone=SEED_ZONE)
    proc = start(world, slots=(ETH6,), collect_all=True, manual=(MANUAL,))
    assert proc.candidates() and all(c.reference_identifier for c in proc.candidates())


# --- the state machine ----------------------------------------------------------------------


def test_refused_transition_leaves_the_state_unchanged() -> None:
    proc = Procedure(settings(), [ETH4], 0.0)
    record = proc._records[ETH4]  # noqa: SLF001 - the table is the thing under test
    with pytest.raises(DiscoveryUsageError, match="found is not allowed in state idle"):
        proc._fire(record, Input.FOUND)  # noqa: SLF001
    assert proc.state(ETH4) is SlotState.IDLE


def test_rerun_while_running_is_ignored_and_unknown_ids_are_refused() -> None:
    proc = Procedure(settings(mechanisms=(Mechanism.DHCP,)), [ETH4, ETH6], 0.0)
    proc.start(0.0)
    assert proc.busy and proc.rerun(1.0) == []
    first = proc.next_request()
    second = proc.next_request()
    assert first is not None and second is not None and proc.next_request() is None
    with pytest.raises(DiscoveryUsageError):
        proc.query_result(999, LookupFailure(FailureKind.NO_REPLY), 1.0)
    proc.query_result(second[0], LookupFailure(FailureKind.NO_REPLY), 1.0)
    assert proc.state(ETH6) is SlotState.EXHAUSTED and proc.state(ETH4) is SlotState.RUNNING
    with pytest.raises(DiscoveryUsageError):
        Procedure(settings(), [ETH4, ETH4], 0.0)


def test_each_mechanism_run_is_reported_as_it_finishes() -> None:
    """Progress events (``dots-gateway discover`` prints them): one per mechanism that ran,
    before the slot's result; mechanisms not tried send none."""
    world = World(dhcp={ETH4: DHCP_RI_ADDR})
    proc = start(world, mechanisms=(Mechanism.MANUAL, Mechanism.DHCP, Mechanism.SNAPTR))
    got = events(proc, progress=True)
    assert [type(e).__name__ for e in got] == ["MechanismFinished", "MechanismFinished",
                                               "CandidatesFound"]
    assert [(e.outcome.mechanism, e.outcome.found) for e in got[:2]] == [
        (Mechanism.MANUAL, 0), (Mechanism.DHCP, 2)]  # signal channel over UDP and TCP
    assert proc.running() == []
