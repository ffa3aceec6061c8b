"""S-NAPTR and DNS-SD lookup plans against an in-memory zone (no DNS server)."""

from __future__ import annotations

import ipaddress

import dns.rdataset

from gateway.discovery import dnssd, snaptr
from gateway.discovery.candidates import Family, Transport
from gateway.discovery.lookups import (
    DnsAnswer,
    DnsQuery,
    FailureKind,
    LookupFailure,
    MdnsService,
    Plan,
)

# The seed's §6 example zone.
SEED_ZONE: dict[tuple[str, str], list[str] | FailureKind] = {
    ("example.net", "NAPTR"): [
        '100 10 "" "DOTS:signal.udp" "" signal.example.net.',
        '200 10 "" "DOTS:signal.tcp" "" signal.example.net.',
        '300 10 "" "DOTS:data.tcp" "" data.example.net.',
    ],
    ("signal.example.net", "NAPTR"): [
        '100 10 "S" "DOTS:signal.udp" "" _dots._signal._udp.example.net.',
        '200 10 "S" "DOTS:signal.tcp" "" _dots._signal._tcp.example.net.',
    ],
    ("data.example.net", "NAPTR"): ['100 10 "S" "DOTS:data.tcp" "" _dots._data._tcp.example.net.'],
    ("_dots._signal._udp.example.net", "SRV"): ["0 0 5000 a.example.net."],
    ("_dots._signal._tcp.example.net", "SRV"): ["0 0 5001 a.example.net."],
    ("_dots._data._tcp.example.net", "SRV"): ["0 0 5002 a.example.net."],
    ("a.example.net", "AAAA"): ["2001:db8::1"],
}


def answer(zone: dict[tuple[str, str], list[str] | FailureKind], query: DnsQuery,
           ttl: int = 300) -> DnsAnswer | LookupFailure:
    entry = zone.get((query.name.rstrip(".").lower(), query.rdtype))
    if entry is None:
        return LookupFailure(FailureKind.NXDOMAIN, "no such name")
    if isinstance(entry, FailureKind):
        return LookupFailure(entry)
    return DnsAnswer(dns.rdataset.from_text("IN", query.rdtype, ttl, *entry))


def run(plan_gen, zone, ttl: int = 300):  # type: ignore[no-untyped-def]
    plan = Plan(plan_gen)
    queries = []
    while not plan.done:
        query = plan.next_request()
        assert query is not None
        queries.append((query.name, query.rdtype))
        plan.query_result(answer(zone, query, ttl))
    return plan.result, queries


def test_the_seeds_table() -> None:
    result, queries = run(snaptr.resolve("example.net", Family.V6), SEED_ZONE)
    table = [(r.order, r.transport.protocol, str(r.address), r.port, r.transport.value)
             for r in result.rows]
    # Seed §6: | Order | Protocol | IP address | Port | Tag |
    assert table == [
        (1, "UDP", "2001:db8::1", 5000, "signal.udp"),
        (2, "TCP", "2001:db8::1", 5001, "signal.tcp"),
        (3, "TCP", "2001:db8::1", 5002, "data.tcp"),
    ]
    assert result.failure is None
    # signal.example.net and a.example.net are asked once each (cache within the run).
    assert queries.count(("signal.example.net", "NAPTR")) == 1
    assert queries.count(("a.example.net", "AAAA")) == 1


def test_order_follows_naptr_order_not_zone_order() -> None:
    zone = dict(SEED_ZONE)
    zone[("example.net", "NAPTR")] = [
        '300 10 "" "DOTS:signal.udp" "" signal.example.net.',
        '100 10 "" "DOTS:data.tcp" "" data.example.net.',
    ]
    result, _ = run(snaptr.resolve("example.net", Family.V6), zone)
    assert [r.transport for r in result.rows] == [Transport.DATA_TCP, Transport.SIGNAL_UDP]


def test_no_dots_naptr_is_a_failure_for_the_domain() -> None:
    zone = {("example.net", "NAPTR"): ['10 10 "S" "SIP+D2U" "" _sip._udp.example.net.']}
    result, _ = run(snaptr.resolve("example.net", Family.V6), zone)
    assert result.rows == () and result.failure.kind is FailureKind.NODATA
    result, _ = run(snaptr.resolve("missing.example", Family.V6), zone)
    assert result.failure.kind is FailureKind.NXDOMAIN
    zone = {("example.net", "NAPTR"): FailureKind.SERVFAIL}
    result, _ = run(snaptr.resolve("example.net", Family.V4), zone)
    assert result.failure.kind is FailureKind.SERVFAIL


def test_wrong_family_gives_a_failure_with_notes() -> None:
    result, _ = run(snaptr.resolve("example.net", Family.V4), SEED_ZONE)
    assert result.rows == () and "no A addresses" in str(result.failure)
    assert any("a.example.net" in note for note in result.notes)


def test_a_flag_uses_default_ports() -> None:
    zone = {
        ("example.org", "NAPTR"): ['10 10 "A" "DOTS:signal.udp:signal.tcp" "" dots.example.org.',
                                   '20 10 "A" "DOTS:data.tcp" "" data.example.org.'],
        ("dots.example.org", "A"): ["192.0.2.10"],
        ("data.example.org", "A"): ["192.0.2.11"],
    }
    result, _ = run(snaptr.resolve("example.org", Family.V4), zone)
    assert [(r.transport.value, str(r.address), r.port) for r in result.rows] == [
        ("signal.udp", "192.0.2.10", 4646), ("signal.tcp", "192.0.2.10", 4646),
        ("data.tcp", "192.0.2.11", 443)]


def test_naptr_loop_is_bounded() -> None:
    zone = {("loop.example", "NAPTR"): ['10 10 "" "DOTS:signal.udp" "" loop.example.']}
    result, queries = run(snaptr.resolve("loop.example", Family.V4), zone)
    assert result.rows == () and len(queries) <= snaptr.MAX_QUERIES


def test_deep_chain_hits_the_depth_limit() -> None:
    zone = {(f"d{i}.example", "NAPTR"): [f'10 10 "" "DOTS:signal.udp" "" d{i + 1}.example.']
            for i in range(10)}
    result, queries = run(snaptr.resolve("d0.example", Family.V4), zone)
    assert result.rows == () and len(queries) == snaptr.MAX_DEPTH + 1
    assert "non-terminal hops" in str(result.failure)


def test_srv_target_dot_and_ttl_minimum() -> None:
    zone = {
        ("example.com", "NAPTR"): ['10 10 "S" "DOTS:signal.udp" "" _dots-signal._udp.example.com.'],
        ("_dots-signal._udp.example.com", "SRV"): ["0 0 0 .", "10 0 4646 b.example.com."],
        ("b.example.com", "AAAA"): ["2001:db8::b"],
    }
    result, _ = run(snaptr.resolve("example.com", Family.V6), zone, ttl=30)
    assert [(str(r.address), r.port, r.ttl) for r in result.rows] == [("2001:db8::b", 4646, 30)]


def test_parse_services() -> None:
    assert snaptr.parse_services(b"DOTS:signal.udp") == ("dots", frozenset({Transport.SIGNAL_UDP}))
    assert snaptr.parse_services(b"dots:SIGNAL.TCP:x.y") == ("dots",
                                                             frozenset({Transport.SIGNAL_TCP}))
    assert snaptr.parse_services(b"") == ("", frozenset())
    assert snaptr.parse_services(b"\xff") is None


DNSSD_ZONE: dict[tuple[str, str], list[str] | FailureKind] = {
    ("_dots-signal._udp.example.net", "PTR"): ["gw1._dots-signal._udp.example.net."],
    ("gw1._dots-signal._udp.example.net", "SRV"): ["0 0 4646 gw1.example.net."],
    ("gw1._dots-signal._udp.example.net", "TXT"): ['""'],
    ("_dots._signal._tcp.example.net", "PTR"): ["old._dots._signal._tcp.example.net."],
    ("old._dots._signal._tcp.example.net", "SRV"): ["0 0 4647 old.example.net."],
    ("old._dots._signal._tcp.example.net", "TXT"): ['"k=v"'],
    ("gw1.example.net", "A"): ["10.0.0.10"],
    ("old.example.net", "A"): ["10.0.0.11"],
}


def test_dnssd_both_namings() -> None:
    result, queries = run(dnssd.browse("example.net", Family.V4), DNSSD_ZONE)
    rows = [(r.service, r.transport.value, str(r.address), r.port, r.target) for r in result.rows]
    assert rows == [
        ("_dots-signal._udp", "signal.udp", "10.0.0.10", 4646, "gw1.example.net"),
        ("_dots._signal._tcp", "signal.tcp", "10.0.0.11", 4647, "old.example.net"),
    ]
    assert [q for q in queries if q[1] == "PTR"] == [
        (f"{name}.example.net", "PTR") for name, _, _ in dnssd.SERVICES]
    assert any("keys ignored" in n for n in result.notes)


def test_dnssd_nothing() -> None:
    result, _ = run(dnssd.browse("example.org", Family.V4), {})
    assert result.rows == () and result.failure.kind is FailureKind.NXDOMAIN
    zone = {(f"{name}.example.org", "PTR"): FailureKind.TIMEOUT for name, _, _ in dnssd.SERVICES}
    result, _ = run(dnssd.browse("example.org", Family.V4), zone)
    assert result.failure.kind is FailureKind.TIMEOUT


def test_dnssd_instance_flood_is_bounded() -> None:
    zone = {("_dots-signal._udp.example.net", "PTR"): [
        f"i{i}._dots-signal._udp.example.net." for i in range(100)]}
    result, queries = run(dnssd.browse("example.net", Family.V4), zone)
    assert len(queries) <= dnssd.MAX_QUERIES and result.rows == ()


def test_mdns_rows() -> None:
    v4, v6 = ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("fe80::5")
    services = (
        MdnsService("_dots._data._tcp.local.", "d._dots._data._tcp.local.", "gw.local.", 443,
                    (v4,), 120),
        MdnsService("_dots-signal._udp.local.", "gw._dots-signal._udp.local.", "gw.local.",
                    4646, (v4, v6), 120),
        MdnsService("_other._udp.local.", "x._other._udp.local.", "x.local.", 1, (v4,), 120),
    )
    rows = dnssd.mdns_rows(services, Family.V4)
    assert [(r.transport.value, r.target) for r in rows] == [("signal.udp", "gw.local"),
                                                             ("data.tcp", "gw.local")]
    assert [str(r.address) for r in dnssd.mdns_rows(services, Family.V6)] == ["fe80::5"]
    assert dnssd.transport_of("_dots._signal._udp.local.") is Transport.SIGNAL_UDP
    assert dnssd.transport_of("_http._tcp.local.") is None
