"""``dots-gateway discover`` / ``dhcp-option`` in-process with a fake network, the asyncio
engine's error boundary, and the purity of the sans-I/O modules."""

from __future__ import annotations

import ast
import asyncio
import ipaddress
import json
import pathlib
from pathlib import Path

import pytest

from gateway import cli
from gateway.discovery import dhcp_options as o
from gateway.discovery.candidates import Family, Mechanism, Slot
from gateway.discovery.dhcp_options import DhcpInfo, DotsServer
from gateway.discovery.engine import DiscoveryEngine, IoSettings
from gateway.discovery.interfaces import IFF_UP, InterfaceInfo, slots_for
from gateway.discovery.lookups import DhcpQuery, DnsQuery, FailureKind, LookupFailure, MdnsBrowse
from gateway.discovery.procedure import Procedure, ProcedureSettings
from tests.unit.discovery.test_discovery_procedure import World
from tests.unit.discovery.test_discovery_snaptr import SEED_ZONE

IFACES = {
    "eth0": InterfaceInfo("eth0", 2, bytes(6), IFF_UP, (ipaddress.IPv4Address("10.0.0.2"),),
                          (ipaddress.IPv6Address("fe80::2"),)),
    "lo": InterfaceInfo("lo", 1, bytes(6), IFF_UP | 0x8, (ipaddress.IPv4Address("127.0.0.1"),),
                        ()),
    "down0": InterfaceInfo("down0", 3, bytes(6), 0, (), ()),
}


class FakeIO:
    def __init__(self, world: World) -> None:
        self.world = world
        self.closed = False

    async def dhcp(self, query: DhcpQuery):  # type: ignore[no-untyped-def]
        return self.world.answer(query)

    async def dns(self, query: DnsQuery):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return self.world.answer(query)

    async def mdns(self, query: MdnsBrowse):  # type: ignore[no-untyped-def]
        raise RuntimeError("zeroconf blew up")  # the engine must turn this into a failure

    async def close(self) -> None:
        self.closed = True


def discover(argv: list[str], world: World) -> tuple[int, FakeIO]:
    made: list[FakeIO] = []

    def factory(_interfaces, _settings):  # type: ignore[no-untyped-def]
        made.append(FakeIO(world))
        return made[0]

    args = cli.build_parser().parse_args(["discover", *argv])
    code = args.func(args, io_factory=factory, interfaces=IFACES)
    return code, made[0] if made else FakeIO(world)


def test_discover_json_lists_candidates_with_the_required_keys(
        capsys: pytest.CaptureFixture[str]) -> None:
    world = World(dhcp={Slot("eth0", Family.V6): DhcpInfo(6, access_domain="example.net")},
                  zone=SEED_ZONE)
    code, io = discover(["--family", "6", "--json"], world)
    out = capsys.readouterr()
    assert code == 0 and io.closed
    rows = json.loads(out.out)
    assert [(r["mechanism"], r["transport"], r["port"]) for r in rows] == [
        ("s-naptr", "signal.udp", 5000), ("s-naptr", "signal.tcp", 5001),
        ("s-naptr", "data.tcp", 5002)]
    for row in rows:
        assert {"mechanism", "interface", "family", "transport", "address", "port",
                "reference_identifier", "expires_at"} <= set(row)
        assert row["interface"] == "eth0" and row["family"] == 6
    assert "dhcp     nothing - the reply carried no DOTS options" in out.err


def test_discover_table_explains_every_mechanism(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[discovery]\n[discovery.anycast]\nipv4 = ["192.0.2.46"]\n'
                      'reference_identifier = "dots.example.net"\n')
    code, _ = discover(["--config", str(config), "--interface", "eth0", "--family", "4",
                        "--domain", "example.org"], World())
    out = capsys.readouterr().out
    assert code == 0
    assert "manual   nothing - no [[upstream]] configured" in out
    assert "dhcp     nothing - no usable DHCP reply: no-reply: silence" in out
    assert "s-naptr  nothing - example.org: nxdomain" in out
    assert "mdns     nothing - malformed: RuntimeError: zeroconf blew up" in out
    assert "anycast  2 candidate(s)" in out
    assert "192.0.2.46" in out and "dots.example.net" in out


def test_discover_nothing_found_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = discover(["--mechanism", "dhcp", "--interface", "eth0"], World())
    assert code == 1 and "no candidates" in capsys.readouterr().out
    code, _ = discover(["--interface", "nope0"], World())
    assert code == 1 and "nope0: no such interface" in capsys.readouterr().err


def test_discover_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _ = discover(["--dns-server", "dns.example"], World())
    assert code == 2 and "--dns-server" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[discovery]\nfamilies = [5]\n")
    code, _ = discover(["--config", str(bad)], World())
    assert code == 2 and "discovery.families[0]" in capsys.readouterr().err


def test_slots_for_skips_loopback_down_and_missing_families() -> None:
    slots, skipped = slots_for(IFACES, (), (4, 6))
    assert slots == [Slot("eth0", Family.V4), Slot("eth0", Family.V6)]
    slots, skipped = slots_for(IFACES, ("down0", "lo"), (6,))
    assert slots == [] and skipped == ["down0: interface is down",
                                       "lo/ipv6: no IPv6 link-local address"]


def test_dhcp_option_prints_figure_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dhcp-option", "--name", "dots.example.com", "--address", "192.0.2.1",
                     "--address", "2001:db8::1"]) == 0
    out = capsys.readouterr().out
    assert "dhcp-option=option6:141,04:64:6f:74:73:07:65:78:61:6d:70:6c:65:03:63:6f:6d:00" in out
    assert "dhcp-option=148,192.0.2.1" in out and "dhcp-option=option6:142,[2001:db8::1]" in out
    assert '"space": "dhcp4"' in out


def test_dhcp_option_json_and_rfc3396_note(capsys: pytest.CaptureFixture[str]) -> None:
    addresses = [f"--address=192.0.2.{i}" for i in range(1, 71)]
    assert cli.main(["dhcp-option", "--json", *addresses, "--seed-list", "192.0.2.1,192.0.2.2",
                     "--seed-code", "224"]) == 0
    items = json.loads(capsys.readouterr().out)
    long = next(i for i in items if i["code"] == 148)
    assert long["length"] == 280 and "RFC 3396" in long["note"]
    wire = bytes.fromhex(long["wire_hex"])
    assert o.join_v4_options(o.parse_v4_options(wire))[148] == bytes.fromhex(long["value_hex"])
    seed = next(i for i in items if i["code"] == 224)
    assert seed["value_hex"] == "08c0000201c0000202"


def test_dhcp_option_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dhcp-option"]) == 2
    assert cli.main(["dhcp-option", "--address", "x"]) == 2
    assert cli.main(["dhcp-option", "--seed-list", "192.0.2.1"]) == 2
    assert cli.main(["dhcp-option", "--name", "bad name"]) == 2
    capsys.readouterr()


def test_engine_run_once_respects_its_deadline() -> None:
    class Stuck(FakeIO):
        async def dhcp(self, query: DhcpQuery):  # type: ignore[no-untyped-def]
            await asyncio.sleep(60)

    async def go() -> list:  # type: ignore[type-arg]
        loop = asyncio.get_running_loop()
        proc = Procedure(ProcedureSettings(mechanisms=(Mechanism.DHCP,)),
                         [Slot("eth0", Family.V4)], loop.time())
        engine = DiscoveryEngine(proc, Stuck(World()), clock=loop.time)
        return await engine.run_once(loop.time() + 0.05)

    assert asyncio.run(go()) == []


def test_engine_keeps_candidates_fresh_and_reruns_on_demand() -> None:
    info = DhcpInfo(4, servers=(DotsServer((ipaddress.IPv4Address("10.0.0.10"),), "d.example"),),
                    refresh=1)

    async def go() -> int:
        loop = asyncio.get_running_loop()
        world = World(dhcp={Slot("eth0", Family.V4): info})
        settings = ProcedureSettings(mechanisms=(Mechanism.DHCP,), min_validity=0.05)
        proc = Procedure(settings, [Slot("eth0", Family.V4)], loop.time())
        engine = DiscoveryEngine(proc, FakeIO(world), clock=loop.time)
        task = asyncio.ensure_future(engine.run_forever())
        await asyncio.sleep(0.02)
        engine.rerun()
        await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return len(world.log)

    assert asyncio.run(go()) == 2
    assert IoSettings().dhcp_attempts == 2


PURE = ("candidates.py", "dnsname.py", "errors.py", "dhcp_options.py", "dhcp_packets.py",
        "lookups.py", "snaptr.py", "dnssd.py", "retry.py", "mechanisms.py", "procedure.py",
        "dnssec.py",
        "settings.py")
FORBIDDEN = {"asyncio", "socket", "time", "selectors", "subprocess", "threading", "os",
             "datetime", "zeroconf", "ifaddr", "random", "dns.resolver", "dns.asyncresolver",
             "dns.query", "gateway.discovery.engine", "gateway.discovery.resolver",
             "gateway.discovery.mdns", "gateway.discovery.dhcp_client",
             "gateway.discovery.interfaces"}
DISCOVERY = pathlib.Path(__file__).resolve().parents[3] / "gateway" / "discovery"


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_io(name: str) -> None:
    tree = ast.parse((DISCOVERY / name).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    bad = {m for m in imported if m in FORBIDDEN or m.split(".")[0] in FORBIDDEN}
    assert not bad, f"{name} imports {sorted(bad)}"


def test_failure_kinds_have_config_keys() -> None:
    from gateway.config import DISCOVERY_RETRY_DEFAULTS

    assert {k.value.replace("-", "_") for k in FailureKind} <= set(DISCOVERY_RETRY_DEFAULTS)
    assert LookupFailure(FailureKind.TIMEOUT).detail == ""


# --- progress and the deadline (issue 20 item 11) ----------------------------------------------

DHCP_FINDS = World(dhcp={Slot("eth0", Family.V4): DhcpInfo(4, servers=(DotsServer(
    (ipaddress.IPv4Address("10.0.0.10"),), "d.example"),), access_domain="example.net")},
    zone=SEED_ZONE)


class DnsNeverAnswers(FakeIO):
    async def dns(self, query: DnsQuery):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3600)  # cancelled at the --timeout deadline


def discover_stuck(argv: list[str]) -> int:
    def factory(_interfaces, _settings):  # type: ignore[no-untyped-def]
        return DnsNeverAnswers(DHCP_FINDS)

    args = cli.build_parser().parse_args(["discover", *argv])
    return int(args.func(args, io_factory=factory, interfaces=IFACES))


def test_discover_shows_each_mechanism_on_stderr_as_it_finishes(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = discover(["--interface", "eth0", "--family", "6", "--collect-all", "--json",
                        "--mechanism", "dhcp", "--mechanism", "s-naptr"],
                       World(dhcp={Slot("eth0", Family.V6): DhcpInfo(
                           6, access_domain="example.net")}, zone=SEED_ZONE))
    err = capsys.readouterr().err.splitlines()
    assert code == 0
    progress = [line for line in err if line.startswith("discover: ")]
    assert len(progress) == 2, err
    assert progress[0].startswith("discover: eth0/ipv6 dhcp: nothing - the reply carried no")
    assert progress[1].startswith("discover: eth0/ipv6 s-naptr: 3 candidate(s) (")
    assert progress[1].endswith(" s)")


def test_discover_keeps_what_finished_when_the_timeout_passes(
        capsys: pytest.CaptureFixture[str]) -> None:
    """DHCP found a server, then S-NAPTR waits on a DNS server that never answers: the
    old code printed "no candidates" and exited 1, losing the DHCP answer."""
    code = discover_stuck(["--interface", "eth0", "--family", "4", "--collect-all",
                           "--mechanism", "dhcp", "--mechanism", "s-naptr",
                           "--mechanism", "dns-sd", "--timeout", "0.5"])
    out, err = capsys.readouterr()
    assert code == 3, out + err
    assert "discover: eth0/ipv4 dhcp: 2 candidate(s)" in err  # signal channel, UDP and TCP
    assert "  dhcp     2 candidate(s)" in out
    assert "  s-naptr  cut short - no answer within --timeout 0.5 s" in out
    assert "  dns-sd   cut short - not tried: cut short" in out
    assert "cut short: --timeout 0.5 s passed with lookups pending on eth0/ipv4" in out
    assert "10.0.0.10" in out and "d.example" in out


def test_discover_json_keeps_what_finished_when_the_timeout_passes(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = discover_stuck(["--interface", "eth0", "--family", "4", "--collect-all", "--json",
                           "--mechanism", "dhcp", "--mechanism", "s-naptr", "--timeout", "0.5"])
    out, err = capsys.readouterr()
    assert code == 3
    assert {(r["mechanism"], r["address"]) for r in json.loads(out)} == {("dhcp", "10.0.0.10")}
    assert "cut short" in err
