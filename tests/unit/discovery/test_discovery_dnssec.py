"""DNSSEC for discovery answers (seed §11): the validation plan against zones signed here,
trust anchors, the dnspython adapter against a loopback responder (local validation and the
AD bit), the procedure's off / prefer / require policy, its counters and log line, the
``discover`` output, the configuration keys and the daemon's metrics."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import pytest

from gateway.config import ConfigError, parse_config
from gateway.discovery.candidates import DnssecStatus, Family, Mechanism, Slot
from gateway.discovery.dhcp_options import DhcpInfo
from gateway.discovery.dnssec import (
    KeyCache,
    KeyQuery,
    TrustAnchorError,
    TrustAnchors,
    Verdict,
    answer_chain,
    validate,
)
from gateway.discovery.lookups import (
    DnsAnswer,
    DnsQuery,
    DnssecMode,
    DnssecValidator,
    FailureKind,
    LookupFailure,
    Plan,
)
from gateway.discovery.procedure import Procedure, ProcedureSettings
from gateway.discovery.resolver import DnsResolver, load_trust_anchors
from gateway.discovery.settings import Overrides, procedure_settings
from tests.support.dnssec_zones import SignedZone, lookup, make_zone
from tests.unit.discovery.test_discovery_procedure import ETH6, World, drive
from tests.unit.discovery.test_discovery_snaptr import SEED_ZONE

RECORDS = """\
@ NAPTR 100 10 "S" "DOTS:signal.udp" "" _dots._signal._udp
_dots._signal._udp SRV 0 0 4646 a
a A 192.0.2.10
a AAAA 2001:db8::10
alias CNAME a
child NS ns.child
"""


@pytest.fixture(scope="module")
def zones() -> list[SignedZone]:
    child = make_zone("child.signed.test.", "b AAAA 2001:db8::20\n")
    parent = make_zone("signed.test.",
                       RECORDS + f"child DS {child.ds().to_text()}\n")
    unsigned = make_zone("plain.test.", "a AAAA 2001:db8::30\n", signed=False)
    return [parent, child, unsigned]


def verdict(zones: list[SignedZone], name: str, rdtype: str, anchors: TrustAnchors,
            cache: KeyCache | None = None, now: float | None = None,
            asked: list[KeyQuery] | None = None) -> Verdict:
    chain = lookup(zones, name, rdtype)
    plan = Plan(validate(chain, anchors, KeyCache() if cache is None else cache,
                         now or time.time()))
    while (request := plan.next_request()) is not None:
        if asked is not None:
            asked.append(request)
        plan.query_result(lookup(zones, request.name, request.rdtype))
    assert plan.result is not None
    return plan.result


def anchors_for(*zones: SignedZone, kind: str = "DS") -> TrustAnchors:
    return TrustAnchors.from_text("".join(z.anchor_text(kind) for z in zones))


# --- the validation plan ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["DS", "DNSKEY"])
def test_signed_answers_chain_to_the_anchor(zones: list[SignedZone], kind: str) -> None:
    anchors = anchors_for(zones[0], kind=kind)
    for name, rdtype in (("signed.test", "NAPTR"), ("_dots._signal._udp.signed.test", "SRV"),
                         ("a.signed.test", "AAAA"), ("alias.signed.test", "AAAA")):
        assert verdict(zones, name, rdtype, anchors) == Verdict(DnssecStatus.SECURE), name


def test_a_zone_below_the_anchor_is_reached_through_its_signed_ds(
        zones: list[SignedZone]) -> None:
    asked: list[KeyQuery] = []
    result = verdict(zones, "b.child.signed.test", "AAAA", anchors_for(zones[0]), asked=asked)
    assert result.status is DnssecStatus.SECURE
    assert [(str(q.name), dns.rdatatype.to_text(q.rdtype)) for q in asked] == [
        ("child.signed.test.", "DNSKEY"), ("child.signed.test.", "DS"),
        ("signed.test.", "DNSKEY")]


def test_validated_keys_are_cached(zones: list[SignedZone]) -> None:
    cache, asked = KeyCache(), []  # type: ignore[var-annotated]
    anchors = anchors_for(zones[0])
    verdict(zones, "a.signed.test", "AAAA", anchors, cache, asked=asked)
    verdict(zones, "signed.test", "NAPTR", anchors, cache, asked=asked)
    assert len(asked) == 1 and len(cache) == 1


def test_tampered_records_are_bogus() -> None:
    zone = make_zone("signed.test.", RECORDS)
    zone.tamper("a.signed.test.", "AAAA", "2001:db8::666")
    result = verdict([zone], "a.signed.test", "AAAA", anchors_for(zone))
    assert result.status is DnssecStatus.BOGUS and "verify failure" in result.detail


def test_stripped_signatures_and_unanchored_names_are_insecure(
        zones: list[SignedZone]) -> None:
    zone = make_zone("signed.test.", RECORDS)
    zone.strip("a.signed.test.", "AAAA")
    result = verdict([zone], "a.signed.test", "AAAA", anchors_for(zone))
    assert result == Verdict(DnssecStatus.INSECURE, "AAAA a.signed.test: no RRSIG")
    result = verdict(zones, "a.plain.test", "AAAA", anchors_for(zones[0]))
    assert result == Verdict(DnssecStatus.INSECURE,
                             "AAAA a.plain.test: no trust anchor covers it")


def test_expired_signatures_and_foreign_keys_are_bogus(zones: list[SignedZone]) -> None:
    late = verdict(zones, "a.signed.test", "AAAA", anchors_for(zones[0]),
                   now=time.time() + 10 * 86400)
    assert late.status is DnssecStatus.BOGUS and "expired" in late.detail
    other = make_zone("signed.test.", "")
    wrong = verdict(zones, "a.signed.test", "AAAA", anchors_for(other))
    assert wrong == Verdict(DnssecStatus.BOGUS,
                            "DNSKEY signed.test.: no key matches the trust anchor")


def test_a_cname_chain_is_only_as_good_as_its_weakest_link() -> None:
    zone = make_zone("signed.test.", RECORDS)
    zone.strip("alias.signed.test.", "CNAME")
    result = verdict([zone], "alias.signed.test", "AAAA", anchors_for(zone))
    assert result.status is DnssecStatus.INSECURE and "CNAME alias.signed.test" in result.detail


def test_key_lookups_that_fail_make_the_answer_bogus(zones: list[SignedZone]) -> None:
    chain = lookup(zones, "a.signed.test", "AAAA")
    plan = Plan(validate(chain, anchors_for(zones[0]), KeyCache(), time.time()))
    assert plan.next_request() is not None
    plan.query_result(LookupFailure(FailureKind.TIMEOUT, "no answer"))
    assert plan.result == Verdict(DnssecStatus.BOGUS, "DNSKEY signed.test: timeout: no answer")


def test_combine_keeps_the_worst() -> None:
    s, u, i, b = (DnssecStatus.SECURE, DnssecStatus.UNCHECKED, DnssecStatus.INSECURE,
                  DnssecStatus.BOGUS)
    assert DnssecStatus.combine([s, s]) is s and DnssecStatus.combine([]) is s
    assert DnssecStatus.combine([s, u]) is u and DnssecStatus.combine([i, s]) is i
    assert DnssecStatus.combine([i, b, s]) is b


# --- trust anchors ---------------------------------------------------------------------------


def test_trust_anchor_file(tmp_path: Path, zones: list[SignedZone]) -> None:
    path = tmp_path / "anchors"
    path.write_text("; comment\n" + zones[0].anchor_text("DS") + zones[1].anchor_text("DNSKEY"))
    anchors = load_trust_anchors(path)
    assert set(anchors.zones) == {zones[0].origin, zones[1].origin}
    assert anchors.closest(dns.name.from_text("x.b.child.signed.test")) == zones[1].origin
    assert anchors.closest(dns.name.from_text("example.net")) is None


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "no DS or DNSKEY record"),
    ("signed.test. IN A 192.0.2.1\n", "A is not a trust anchor"),
    ("signed.test. IN DS 1 2 3\n", "anchors"),
])
def test_unusable_trust_anchors_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "anchors"
    path.write_text(text)
    with pytest.raises(TrustAnchorError) as info:
        load_trust_anchors(path)
    assert str(info.value).startswith(f"discovery.dnssec_trust_anchors: {path}: ")
    assert fragment in str(info.value)
    with pytest.raises(TrustAnchorError, match="dnssec_trust_anchors: .*missing: cannot read"):
        load_trust_anchors(tmp_path / "missing")


# --- the dnspython adapter against a loopback responder --------------------------------------


class Authoritative(asyncio.DatagramProtocol):
    """Answers from the signed zones, with RRSIGs when asked with DO; sets AD for names
    under ``ad_for`` (a validating resolver's answer, as the AD-bit mode sees it)."""

    def __init__(self, zones: list[SignedZone], ad_for: str = "") -> None:
        self.zones = zones
        self.ad_for = ad_for
        self.queries: list[tuple[str, str, bool]] = []

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        query = dns.message.from_wire(data)
        question = query.question[0]
        do = bool(query.ednsflags & dns.flags.DO)
        self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype),
                             do))
        response = dns.message.make_response(query)
        for signed in lookup(self.zones, question.name, question.rdtype):
            response.answer.append(signed.rrset)
            if do and signed.rrsigs is not None:
                response.answer.append(signed.rrsigs)
        if self.ad_for and question.name.is_subdomain(dns.name.from_text(self.ad_for)):
            response.flags |= dns.flags.AD
        self.transport.sendto(response.to_wire(), addr)


async def ask(zones: list[SignedZone], names: list[tuple[str, str]], **resolver_options):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    responder = Authoritative(zones, resolver_options.pop("ad_for", ""))
    transport, _ = await loop.create_datagram_endpoint(lambda: responder,
                                                       local_addr=("127.0.0.1", 0))
    resolver = DnsResolver(timeout=1.0, port=transport.get_extra_info("sockname")[1],
                           **resolver_options)
    server = (ipaddress.ip_address("127.0.0.1"),)
    try:
        results = [await resolver.query(DnsQuery(n, t, server)) for n, t in names]
    finally:
        transport.close()
    return results, responder


def test_resolver_validates_in_process(zones: list[SignedZone]) -> None:
    tampered = make_zone("tampered.test.", "a AAAA 2001:db8::40\n")
    tampered.tamper("a.tampered.test.", "AAAA", "2001:db8::666")
    results, responder = asyncio.run(ask(
        [*zones, tampered],
        [("signed.test", "NAPTR"), ("a.signed.test", "AAAA"), ("a.tampered.test", "AAAA"),
         ("a.plain.test", "AAAA")],
        validator=DnssecValidator.LOCAL, anchors=anchors_for(zones[0], tampered)))
    statuses = [(r.dnssec, r.dnssec_detail.split(":")[0]) for r in results]
    assert statuses == [(DnssecStatus.SECURE, ""), (DnssecStatus.SECURE, ""),
                        (DnssecStatus.BOGUS, "AAAA a.tampered.test"),
                        (DnssecStatus.INSECURE, "AAAA a.plain.test")]
    assert all(do for _, _, do in responder.queries)
    # One DNSKEY lookup per anchored zone: the key set is cached.
    assert [q[:2] for q in responder.queries].count(("signed.test.", "DNSKEY")) == 1


def test_resolver_off_asks_without_do_and_leaves_answers_unchecked(
        zones: list[SignedZone]) -> None:
    results, responder = asyncio.run(ask(zones, [("a.signed.test", "AAAA")]))
    assert results[0].dnssec is DnssecStatus.UNCHECKED
    assert responder.queries == [("a.signed.test.", "AAAA", False)]


def test_resolver_ad_bit_mode(zones: list[SignedZone]) -> None:
    results, _ = asyncio.run(ask(zones, [("a.signed.test", "AAAA"), ("a.plain.test", "AAAA")],
                                 validator=DnssecValidator.RESOLVER, ad_for="signed.test"))
    assert [r.dnssec for r in results] == [DnssecStatus.SECURE, DnssecStatus.INSECURE]
    assert "AD bit" in results[1].dnssec_detail


def test_local_validation_without_anchors_is_refused() -> None:
    with pytest.raises(TrustAnchorError, match="discovery.dnssec_trust_anchors"):
        DnsResolver(validator=DnssecValidator.LOCAL)


def test_answer_chain_leaves_unrelated_records_out(zones: list[SignedZone]) -> None:
    message = dns.message.make_response(dns.message.make_query("alias.signed.test", "AAAA"))
    for signed in [*lookup(zones, "alias.signed.test", "AAAA"),
                   *lookup(zones, "b.child.signed.test", "AAAA")]:
        message.answer.append(signed.rrset)
    chain = answer_chain(message, dns.name.from_text("alias.signed.test"), dns.rdatatype.AAAA)
    assert [str(s.rrset.name) for s in chain] == ["alias.signed.test.", "a.signed.test."]
    assert all(s.rrsigs is None for s in chain)


# --- the procedure's policy ------------------------------------------------------------------


class MarkedWorld(World):
    """The fake network of the procedure tests, with a DNSSEC status per answered name."""

    def __init__(self, statuses: dict[str, DnssecStatus], **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.statuses = statuses

    def answer(self, request):  # type: ignore[no-untyped-def]
        result = super().answer(request)
        if isinstance(result, DnsAnswer):
            status = self.statuses.get(request.name, DnssecStatus.SECURE)
            return DnsAnswer(result.rdataset, status,
                             "" if status is DnssecStatus.SECURE else "no RRSIG")
        return result


def run_procedure(mode: DnssecMode, statuses: dict[str, DnssecStatus]) -> Procedure:
    world = MarkedWorld(statuses, zone=SEED_ZONE,
                        dhcp={ETH6: DhcpInfo(6, access_domain="example.net")})
    proc = Procedure(ProcedureSettings(dnssec=mode, mechanisms=(
        Mechanism.DHCP, Mechanism.SNAPTR, Mechanism.ANYCAST)), [ETH6], 1000.0)
    proc.start(1000.0)
    drive(proc, world, 1000.0)
    return proc


def test_require_uses_only_validated_answers() -> None:
    proc = run_procedure(DnssecMode.REQUIRE, {})
    found = proc.candidates()
    assert len(found) == 3 and all(c.validated and c.dnssec is DnssecStatus.SECURE
                                   for c in found)
    assert proc.dnssec_stats.rejected == {} and proc.dnssec_stats.unvalidated_used == {}


def test_require_refuses_an_unvalidated_answer(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "gateway.discovery.procedure"):
        proc = run_procedure(DnssecMode.REQUIRE,
                             {"a.example.net": DnssecStatus.BOGUS})
    assert proc.candidates() == []
    assert proc.dnssec_stats.rejected == {"bogus": 1}  # the AAAA answer is asked once a run
    snaptr_outcome = proc.outcomes(ETH6)[1]
    assert snaptr_outcome.mechanism is Mechanism.SNAPTR and snaptr_outcome.found == 0
    assert "unvalidated: not validated by DNSSEC: AAAA a.example.net: bogus" in \
        snaptr_outcome.reason
    assert "refused AAAA a.example.net: bogus (no RRSIG)" in caplog.text
    # The refused answer left the domain without rows: it waits before it is retried.
    assert proc.retry_wait("s-naptr example.net eth0/ipv6") is not None
    assert ProcedureSettings().retry_waits[FailureKind.UNVALIDATED] == 300.0


def test_prefer_uses_unvalidated_answers_marked_logged_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "gateway.discovery.procedure"):
        proc = run_procedure(DnssecMode.PREFER,
                             {"a.example.net": DnssecStatus.INSECURE})
    found = proc.candidates()
    assert len(found) == 3 and all(c.dnssec is DnssecStatus.INSECURE and not c.validated
                                   for c in found)
    assert proc.dnssec_stats.unvalidated_used == {("s-naptr", "insecure"): 3}
    assert proc.dnssec_stats.rejected == {}
    assert ("eth0/ipv6: DNSSEC: using 3 candidate(s) built from answers DNSSEC did not "
            "validate (discovery.dnssec = prefer): AAAA a.example.net: insecure (no RRSIG)"
            ) in caplog.text


def test_off_marks_dns_candidates_unchecked_and_counts_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    world = World(zone=SEED_ZONE, dhcp={ETH6: DhcpInfo(6, access_domain="example.net")})
    proc = Procedure(ProcedureSettings(), [ETH6], 1000.0)
    proc.start(1000.0)
    drive(proc, world, 1000.0)
    assert {c.dnssec for c in proc.candidates()} == {DnssecStatus.UNCHECKED}
    assert proc.dnssec_stats.unvalidated_used == {} and "DNSSEC" not in caplog.text


def test_candidates_without_dns_data_have_no_dnssec_status() -> None:
    proc = run_procedure(DnssecMode.REQUIRE, {"example.net": DnssecStatus.INSECURE})
    # S-NAPTR refused; DHCP gave no DOTS option; nothing else in this world.
    assert proc.candidates() == []
    from gateway.discovery.candidates import Candidate, Transport

    c = Candidate(Mechanism.DHCP, "eth0", Family.V6, Transport.SIGNAL_UDP,
                  ipaddress.ip_address("2001:db8::1"), 4646, "dots.example.net")
    assert c.to_json()["validated"] is False and c.to_json()["dnssec"] is None


# --- configuration, the CLI and the daemon's metrics -----------------------------------------


def test_config_keys(tmp_path: Path) -> None:
    s = parse_config('[discovery]\ndnssec = "require"\ndnssec_trust_anchors = "anchors.txt"\n',
                     "x.toml", base_dir=tmp_path)
    assert s.discovery.dnssec.value == "require"
    assert s.discovery.dnssec_trust_anchors == tmp_path / "anchors.txt"
    assert procedure_settings(s).dnssec is DnssecMode.REQUIRE
    assert procedure_settings(s, Overrides(dnssec="prefer")).dnssec is DnssecMode.PREFER
    s = parse_config('[discovery]\ndnssec = "prefer"\ndnssec_validator = "resolver"\n', "x")
    assert s.discovery.dnssec_validator.value == "resolver"
    assert parse_config("", "x").discovery.dnssec.value == "off"


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ('dnssec = "on"', "discovery.dnssec", "must be one of 'off', 'prefer', 'require'"),
    ('dnssec = "require"', "discovery.dnssec_trust_anchors", 'required with dnssec = "require"'),
    ('dnssec = "prefer"\ndnssec_validator = "ad"', "discovery.dnssec_validator",
     "must be one of 'local', 'resolver'"),
    ("dnssec_trust_anchors = 5", "discovery.dnssec_trust_anchors", "string"),
])
def test_config_errors_name_the_key(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[discovery]\n" + text, "test.toml")
    errors = info.value.errors
    assert len(errors) == 1 and errors[0].key == key and fragment in errors[0].message, \
        [str(e) for e in errors]


def test_discover_json_marks_candidates_and_summarises(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    from tests.unit.discovery.test_discovery_cli import discover

    config = tmp_path / "c.toml"
    config.write_text('[discovery]\ndnssec_validator = "resolver"\n')
    world = MarkedWorld({"a.example.net": DnssecStatus.INSECURE}, zone=SEED_ZONE,
                        dhcp={Slot("eth0", Family.V6): DhcpInfo(6, access_domain="example.net")})
    code, _ = discover(["--family", "6", "--json", "--dnssec", "prefer",
                        "--config", str(config)], world)
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert code == 0 and {(r["validated"], r["dnssec"]) for r in rows} == {(False, "insecure")}
    assert ("dnssec prefer: 3 candidate(s) used from answers DNSSEC did not validate "
            "(s-naptr insecure: 3); 0 answer(s) refused") in out.err
    code, _ = discover(["--family", "6", "--json", "--dnssec", "require",
                        "--mechanism", "s-naptr", "--domain", "example.net",
                        "--config", str(config)], world)
    out = capsys.readouterr()
    assert code == 1 and json.loads(out.out) == []
    assert "dnssec require: 0 candidate(s) used" in out.err and "1 answer(s) refused" in out.err


def test_discover_without_anchors_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway import cli

    args = cli.build_parser().parse_args(["discover", "--dnssec", "require", "--interface",
                                          "eth0"])
    from tests.unit.discovery.test_discovery_cli import IFACES

    assert args.func(args, interfaces=IFACES) == 2
    assert "discovery.dnssec_trust_anchors" in capsys.readouterr().err


def test_daemon_metrics_and_status_section() -> None:
    from gateway.ops.control import ControlProviders
    from gateway.ops.metrics import Registry
    from gateway.relay.startup import UpstreamDiscovery

    holder = UpstreamDiscovery.__new__(UpstreamDiscovery)
    holder.procedure = run_procedure(DnssecMode.PREFER, {"a.example.net": DnssecStatus.BOGUS})
    registry, control = Registry(), ControlProviders()
    holder.register_operations(registry, control)
    text = registry.render()
    assert ('dots_gateway_discovery_unvalidated_total{mechanism="s-naptr",status="bogus"} 3'
            in text)
    assert "# TYPE dots_gateway_discovery_dnssec_refused_total counter" in text
    section = control.status_sections["discovery"]()
    assert section["dnssec"] == "prefer" and section["unvalidated_used"] == 3
    assert [c["validated"] for c in section["candidates"]] == [False] * 3  # type: ignore[union-attr]


def test_check_config_and_run_report_unusable_trust_anchors(tmp_path: Path,
                                                           zones: list[SignedZone]) -> None:
    from gateway.credentials import file_problems

    anchors = tmp_path / "anchors"
    text = '[discovery]\ndnssec = "require"\ndnssec_trust_anchors = "anchors"\n'
    settings = parse_config(text, "x.toml", base_dir=tmp_path)
    problems = [p for p in file_problems(settings) if p.key.startswith("discovery")]
    assert [(p.key, p.message.split(":")[0]) for p in problems] == [
        ("discovery.dnssec_trust_anchors", str(anchors))]
    assert "cannot read" in problems[0].message
    anchors.write_text(zones[0].anchor_text())
    assert [p for p in file_problems(settings) if p.key.startswith("discovery")] == []
