"""Discovery against real servers this project did not write, in network namespaces.

Topology (one module-scoped lab, about a second to build):

    ns "srv": dnsmasq (DHCPv4 + DHCPv6 + DNS) on srv0 and srv1; the mDNS advertiser
    ns "cli": the engine (``dots-gateway discover`` run with ``ip netns exec``)

    srv0 10.46.1.1/24 fd00:46:1::1/64  <-veth->  cli0 10.46.1.2/24 fd00:46:1::2/64
    srv1 10.46.2.1/24 fd00:46:2::1/64  <-veth->  cli1 10.46.2.2/24 fd00:46:2::2/64

Link 1 carries the DOTS DHCP options (RFC 8973 141/142/147/148, and the seed's multi-list
format on code 224); link 2 carries only the access-network domain, the domain name and DNS
servers, so the engine there falls through to S-NAPTR / DNS-SD. The DNS zone example.net is
the seed's §6 example plus DNS-SD records under both namings; everything under ``.test``
answers NXDOMAIN.

dnsmasq quirks this relies on (found here, recorded in the module docstrings):
- ``--no-daemon`` writes no pid file; ``ip netns exec`` execs, so Popen's PID is dnsmasq's.
- DHCPINFORM and DHCPv6 Information-request are answered with ``dhcp-range=<net>,static``.
- Options unknown to dnsmasq (141, 147, 213, 57, 224) are given as hex octets; 142 as
  bracketed IPv6 addresses, 148 as plain IPv4 addresses.
- Local records have TTL 0 unless ``local-ttl`` is set (the procedure floors validity at
  ``min_validity``); here local-ttl=120.
- It refuses DHCPv4 option values over 255 octets ("dhcp-option too long") and keeps only
  one of two ``dhcp-option`` lines with the same code, so RFC 3396 splitting cannot be
  produced by it: that is covered by unit tests only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.discovery.dnsname import encode_name
from tests.lab.netns import Lab, cleanup_stale, require_root

pytestmark = [pytest.mark.root, pytest.mark.lab]

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def _hex(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


RI = _hex(encode_name("dots.example.net"))
DOMAIN = _hex(encode_name("example.net"))
SEED_LISTS = "08:0a:2e:01:14:0a:2e:01:15:04:0a:2e:01:16"  # [10.46.1.20, .21], [10.46.1.22]

DNSMASQ_CONF = f"""\
port=53
log-queries
log-dhcp
local-ttl=120
local=/example.net/
local=/test/
dhcp-range=10.46.1.0,static,255.255.255.0
dhcp-range=10.46.2.0,static,255.255.255.0
dhcp-range=fd00:46:1::,static,64
dhcp-range=fd00:46:2::,static,64
# link 1: the DOTS options
dhcp-option=tag:srv0,147,{RI}
dhcp-option=tag:srv0,148,10.46.1.10,10.46.1.11,127.0.0.1
dhcp-option=tag:srv0,224,{SEED_LISTS}
dhcp-option=tag:srv0,option6:141,{RI}
dhcp-option=tag:srv0,option6:142,[fd00:46:1::10],[ff02::1]
dhcp-option=tag:srv0,option:dns-server,10.46.1.1
dhcp-option=tag:srv0,option6:dns-server,[fd00:46:1::1]
# link 2: only where to look (RFC 5986 access domain, domain name, DNS servers)
dhcp-option=tag:srv1,213,{DOMAIN}
dhcp-option=tag:srv1,option:domain-name,example.net
dhcp-option=tag:srv1,option:dns-server,10.46.2.1
dhcp-option=tag:srv1,option6:57,{DOMAIN}
dhcp-option=tag:srv1,option6:dns-server,[fd00:46:2::1]
# the seed's §6 example zone
naptr-record=example.net,100,10,"","DOTS:signal.udp","",signal.example.net
naptr-record=example.net,200,10,"","DOTS:signal.tcp","",signal.example.net
naptr-record=example.net,300,10,"","DOTS:data.tcp","",data.example.net
naptr-record=signal.example.net,100,10,"S","DOTS:signal.udp","",_dots._signal._udp.example.net
naptr-record=signal.example.net,200,10,"S","DOTS:signal.tcp","",_dots._signal._tcp.example.net
naptr-record=data.example.net,100,10,"S","DOTS:data.tcp","",_dots._data._tcp.example.net
srv-host=_dots._signal._udp.example.net,a.example.net,5000,0,0
srv-host=_dots._signal._tcp.example.net,a.example.net,5001,0,0
srv-host=_dots._data._tcp.example.net,a.example.net,5002,0,0
host-record=a.example.net,10.46.0.100,2001:db8::1
# DNS-SD, RFC 8973 naming and the seed's
ptr-record=_dots-signal._udp.example.net,gw1._dots-signal._udp.example.net
srv-host=gw1._dots-signal._udp.example.net,gw1.example.net,4646,0,0
txt-record=gw1._dots-signal._udp.example.net,""
ptr-record=_dots._signal._tcp.example.net,old._dots._signal._tcp.example.net
srv-host=old._dots._signal._tcp.example.net,old.example.net,4647,0,0
txt-record=old._dots._signal._tcp.example.net,""
host-record=gw1.example.net,10.46.0.11,fd00:46::11
host-record=old.example.net,10.46.0.12
# manual configuration resolves this name
host-record=dots.example.net,10.46.0.10,fd00:46::10
# fallback.test has DNS-SD but no NAPTR
ptr-record=_dots-signal._tcp.fallback.test,fb._dots-signal._tcp.fallback.test
srv-host=fb._dots-signal._tcp.fallback.test,fb.fallback.test,4646,0,0
txt-record=fb._dots-signal._tcp.fallback.test,""
host-record=fb.fallback.test,10.46.0.13
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    reason = require_root()
    if reason:
        pytest.skip(reason)
    if shutil.which("dnsmasq") is None:
        pytest.fail("dnsmasq is missing: `make test` installs it (apt dnsmasq-base)")
    cleanup_stale()
    with Lab() as net:
        srv, cli = net.namespace("srv"), net.namespace("cli")
        for n in (1, 2):
            net.veth(srv, f"srv{n - 1}", cli, f"cli{n - 1}")
            net.address(srv, f"srv{n - 1}", f"10.46.{n}.1/24")
            net.address(srv, f"srv{n - 1}", f"fd00:46:{n}::1/64")
            net.address(cli, f"cli{n - 1}", f"10.46.{n}.2/24")
            net.address(cli, f"cli{n - 1}", f"fd00:46:{n}::2/64")
        for n in (0, 1):
            net.wait_link_local(srv, f"srv{n}")
            net.wait_link_local(cli, f"cli{n}")
        net.resolv_conf(cli, "10.46.2.1")  # a system-resolver fallback stays in the lab
        conf = net.dir / "dnsmasq.conf"
        conf.write_text(DNSMASQ_CONF)
        dnsmasq = net.popen(srv, [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", f"--conf-file={conf}",
            "--no-resolv", "--no-hosts", "--interface=srv0", "--interface=srv1",
            "--bind-interfaces", f"--pid-file={net.dir / 'dnsmasq.pid'}",
            f"--dhcp-leasefile={net.dir / 'leases'}",
        ], "dnsmasq.log")
        deadline = time.monotonic() + 5
        while "DHCPv6, static leases" not in net.log("dnsmasq.log"):
            if dnsmasq.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dnsmasq did not start:\n{net.log('dnsmasq.log')}")
            time.sleep(0.02)
        version = subprocess.run(["dnsmasq", "--version"], capture_output=True, text=True,
                                 timeout=5).stdout.split("\n")[0]
        yield {"net": net, "srv": srv, "cli": cli, "dnsmasq_version": version}


def discover(lab: dict[str, Any], *args: str, config: str | None = None,
             expect: int = 0) -> tuple[list[dict[str, Any]], str]:
    """``dots-gateway discover --json`` inside the client namespace."""
    argv = [PY, "-m", "gateway.cli", "discover", "--json", "--timeout", "15", *args]
    if config is not None:
        path = lab["net"].dir / f"cfg{abs(hash(config))}.toml"
        path.write_text(config)
        argv += ["--config", str(path)]
    result = lab["net"].run(lab["cli"], *argv, timeout=30, check=False)
    assert result.returncode == expect, (result.stdout, result.stderr,
                                         lab["net"].log("dnsmasq.log")[-3000:])
    return json.loads(result.stdout or "[]"), result.stderr


def rows(candidates: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(c["mechanism"], c["interface"], c["family"], c["transport"], c["address"],
             c["port"], c["reference_identifier"]) for c in candidates]


def test_dhcpv4_dots_options(lab: dict[str, Any]) -> None:
    found, _ = discover(lab, "--interface", "cli0", "--family", "4", "--mechanism", "dhcp")
    # RI and ADDRESS: connect to 148's addresses (127.0.0.1 dropped, RFC 8973 §5.2.3), the
    # name is the reference identifier only.
    assert rows(found) == [
        ("dhcp", "cli0", 4, t, a, 4646, "dots.example.net")
        for a in ("10.46.1.10", "10.46.1.11") for t in ("signal.udp", "signal.tcp")
    ]
    assert 3500 < found[0]["expires_in"] <= 3600  # discovery.dhcp.refresh (no lease in INFORM)
    log = lab["net"].log("dnsmasq.log")
    assert "DHCPINFORM(srv0) 10.46.1.2" in log
    assert "requested options: 6:dns-server, 15:domain-name, 147, 148, 213" in log


def test_dhcpv6_dots_options(lab: dict[str, Any]) -> None:
    found, _ = discover(lab, "--interface", "cli0", "--family", "6", "--mechanism", "dhcp")
    assert rows(found) == [("dhcp", "cli0", 6, t, "fd00:46:1::10", 4646, "dots.example.net")
                           for t in ("signal.udp", "signal.tcp")]  # ff02::1 dropped
    assert 86000 < found[0]["expires_in"] <= 86400  # dnsmasq's information-refresh-time 1d
    log = lab["net"].log("dnsmasq.log")
    assert "DHCPINFORMATION-REQUEST(srv0)" in log
    assert "requested options: 141, 142, 57, 23:dns-server" in log


def test_dhcpv4_seed_multi_list_format(lab: dict[str, Any]) -> None:
    config = "[discovery.dhcp]\nv4_seed_address_option = 224\n"
    found, _ = discover(lab, "--interface", "cli0", "--family", "4", "--mechanism", "dhcp",
                        config=config)
    addresses = [c["address"] for c in found if c["transport"] == "signal.udp"]
    assert addresses == ["10.46.1.10", "10.46.1.11", "10.46.1.20", "10.46.1.21", "10.46.1.22"]


def test_snaptr_with_the_domain_dhcp_gave(lab: dict[str, Any]) -> None:
    # Link 2's DHCP has no DOTS options: the next mechanism, S-NAPTR, runs on the RFC 5986
    # domain from the same reply, against the DNS server from the same reply.
    found, err = discover(lab, "--interface", "cli1", "--family", "6",
                          "--mechanism", "dhcp", "--mechanism", "s-naptr")
    assert rows(found) == [  # the seed's §6 table
        ("s-naptr", "cli1", 6, "signal.udp", "2001:db8::1", 5000, "example.net"),
        ("s-naptr", "cli1", 6, "signal.tcp", "2001:db8::1", 5001, "example.net"),
        ("s-naptr", "cli1", 6, "data.tcp", "2001:db8::1", 5002, "example.net"),
    ]
    assert "dhcp     nothing - the reply carried no DOTS options" in err
    assert 100 < found[0]["expires_in"] <= 120  # dnsmasq local-ttl
    found4, _ = discover(lab, "--interface", "cli1", "--family", "4",
                         "--mechanism", "dhcp", "--mechanism", "s-naptr")
    assert [(c["address"], c["port"]) for c in found4] == [("10.46.0.100", 5000),
                                                          ("10.46.0.100", 5001),
                                                          ("10.46.0.100", 5002)]


def test_dnssd_unicast_both_namings(lab: dict[str, Any]) -> None:
    found, _ = discover(lab, "--interface", "cli1", "--family", "4",
                        "--mechanism", "dhcp", "--mechanism", "dns-sd")
    assert rows(found) == [
        ("dns-sd", "cli1", 4, "signal.udp", "10.46.0.11", 4646, "gw1.example.net"),
        ("dns-sd", "cli1", 4, "signal.tcp", "10.46.0.12", 4647, "old.example.net"),
    ]


def test_higher_mechanism_fails_and_the_next_is_used(lab: dict[str, Any]) -> None:
    # fallback.test has no NAPTR (dnsmasq answers NODATA: names exist below it): S-NAPTR
    # fails for the domain (seed §6), DNS-SD finds the instance.
    found, err = discover(lab, "--interface", "cli1", "--family", "4", "--domain",
                          "fallback.test", "--mechanism", "s-naptr", "--mechanism", "dns-sd")
    assert rows(found) == [("dns-sd", "cli1", 4, "signal.tcp", "10.46.0.13", 4646,
                            "fb.fallback.test")]
    assert "s-naptr  nothing - fallback.test: nodata: NAPTR fallback.test" in err


def test_manual_configuration_resolves_names(lab: dict[str, Any]) -> None:
    config = textwrap.dedent("""\
        [[upstream]]
        name = "by-name"
        host = "dots.example.net"
        transport = "tcp"
        [[upstream]]
        name = "by-address"
        address = "192.0.2.99"
        reference_identifier = "dots.example.net"
        [discovery]
        dns_servers = ["10.46.1.1"]
        """)
    found, _ = discover(lab, "--interface", "cli0", "--family", "4", config=config)
    assert rows(found) == [
        ("manual", "cli0", 4, "signal.tcp", "10.46.0.10", 4646, "dots.example.net"),
        ("manual", "cli0", 4, "signal.udp", "192.0.2.99", 4646, "dots.example.net"),
    ]


def test_anycast_when_everything_else_fails(lab: dict[str, Any]) -> None:
    config = textwrap.dedent("""\
        [discovery]
        mechanisms = ["manual", "dhcp", "s-naptr", "dns-sd", "anycast"]
        [discovery.anycast]
        ipv4 = ["192.0.2.46"]
        ipv6 = ["2001:db8::4646"]
        reference_identifier = "dots.example.net"
        """)
    found, err = discover(lab, "--interface", "cli1", "--domain", "nothing.test", config=config)
    assert rows(found) == [
        ("anycast", "cli1", 4, "signal.udp", "192.0.2.46", 4646, "dots.example.net"),
        ("anycast", "cli1", 4, "signal.tcp", "192.0.2.46", 4646, "dots.example.net"),
        ("anycast", "cli1", 6, "signal.udp", "2001:db8::4646", 4646, "dots.example.net"),
        ("anycast", "cli1", 6, "signal.tcp", "2001:db8::4646", 4646, "dots.example.net"),
    ]
    assert "nothing.test: nxdomain" in err


def test_trusted_domains_reject_the_dhcp_answer(lab: dict[str, Any]) -> None:
    config = '[discovery]\ntrusted_domains = ["*.example.com"]\nmechanisms = ["dhcp"]\n'
    found, err = discover(lab, "--interface", "cli0", "--family", "6", config=config,
                          expect=1)
    assert found == [] and "dots.example.net is not in trusted_domains" in err


def test_discover_json_default_procedure(lab: dict[str, Any]) -> None:
    """The acceptance run: every mechanism enabled, both links, both families."""
    found, err = discover(lab, "--interface", "cli0", "--interface", "cli1")
    assert rows(found) == [
        ("dhcp", "cli0", 4, "signal.udp", "10.46.1.10", 4646, "dots.example.net"),
        ("dhcp", "cli0", 4, "signal.tcp", "10.46.1.10", 4646, "dots.example.net"),
        ("dhcp", "cli0", 4, "signal.udp", "10.46.1.11", 4646, "dots.example.net"),
        ("dhcp", "cli0", 4, "signal.tcp", "10.46.1.11", 4646, "dots.example.net"),
        ("dhcp", "cli0", 6, "signal.udp", "fd00:46:1::10", 4646, "dots.example.net"),
        ("dhcp", "cli0", 6, "signal.tcp", "fd00:46:1::10", 4646, "dots.example.net"),
        ("s-naptr", "cli1", 4, "signal.udp", "10.46.0.100", 5000, "example.net"),
        ("s-naptr", "cli1", 4, "signal.tcp", "10.46.0.100", 5001, "example.net"),
        ("s-naptr", "cli1", 4, "data.tcp", "10.46.0.100", 5002, "example.net"),
        ("s-naptr", "cli1", 6, "signal.udp", "2001:db8::1", 5000, "example.net"),
        ("s-naptr", "cli1", 6, "signal.tcp", "2001:db8::1", 5001, "example.net"),
        ("s-naptr", "cli1", 6, "data.tcp", "2001:db8::1", 5002, "example.net"),
    ]
    for c in found:
        assert isinstance(c["expires_at"], float) and c["expires_at"] > time.time()
    assert "cli1/ipv4:" in err and "dhcp     nothing - the reply carried no DOTS options" in err


ADVERTISER = textwrap.dedent("""\
    import asyncio, sys
    from gateway.discovery.candidates import Transport
    from gateway.discovery.interfaces import list_interfaces
    from gateway.discovery.mdns import MdnsAdvertiser

    async def main():
        info = list_interfaces()["srv0"]
        adv = MdnsAdvertiser(info, "edge-gw", "edge-gw",
                             {Transport.SIGNAL_UDP: 4646, Transport.SIGNAL_TCP: 4646})
        await adv.start()
        print("announced", flush=True)
        try:
            await asyncio.sleep(float(sys.argv[1]))
        finally:
            await adv.close()

    asyncio.run(main())
    """)

BROWSER = textwrap.dedent("""\
    import asyncio, json, sys
    from gateway.discovery.interfaces import list_interfaces
    from gateway.discovery.mdns import MdnsBrowser

    async def main():
        browser = MdnsBrowser(list_interfaces()["cli0"])
        await browser.start()
        print("listening", flush=True)
        sys.stdin.readline()  # the test starts the advertiser, then says go
        found = await browser.browse(float(sys.argv[1]))
        await browser.close()
        print(json.dumps([[s.service_type, s.server, s.port, [str(a) for a in s.addresses]]
                          for s in found]), flush=True)

    asyncio.run(main())
    """)


def test_mdns_advertiser_and_browser_between_namespaces(lab: dict[str, Any]) -> None:
    net = lab["net"]
    browser = subprocess.Popen(
        ["ip", "netns", "exec", lab["cli"], PY, "-c", BROWSER, "5"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        start_new_session=True)
    advertiser = None
    try:
        assert browser.stdout is not None and browser.stdin is not None
        assert browser.stdout.readline().strip() == "listening"
        # The browser listens first: what it learns comes from the advertiser's
        # unsolicited announcements (seed §8.2), cached by zeroconf.
        advertiser = net.popen(lab["srv"], [PY, "-c", ADVERTISER, "20"], "advertiser.log",
                               stdout=subprocess.PIPE)
        assert advertiser.stdout is not None
        line = advertiser.stdout.readline().decode().strip()
        assert line == "announced", net.log("advertiser.log")
        browser.stdin.write("go\n")
        browser.stdin.flush()
        out, err = browser.communicate(timeout=20)
        services = sorted(json.loads(out.strip().splitlines()[-1]))
        # Both namings: RFC 8973's and the seed's two-label service names (seed §8.2).
        assert [s[:3] for s in services] == [
            ["_dots-signal._tcp.local.", "edge-gw.local.", 4646],
            ["_dots-signal._udp.local.", "edge-gw.local.", 4646],
            ["_dots._signal._tcp.local.", "edge-gw.local.", 4646],
            ["_dots._signal._udp.local.", "edge-gw.local.", 4646],
        ]
        assert "10.46.1.1" in services[0][3]
        # The engine's own mDNS mechanism sees the same instance (a query this time).
        found, _ = discover(lab, "--interface", "cli0", "--family", "4", "--mechanism", "mdns")
        assert rows(found) == [
            ("mdns", "cli0", 4, "signal.udp", "10.46.1.1", 4646, "edge-gw.local"),
            ("mdns", "cli0", 4, "signal.tcp", "10.46.1.1", 4646, "edge-gw.local"),
        ]
    finally:
        if browser.poll() is None:
            browser.kill()
            browser.wait(5)
        if advertiser is not None:
            net.stop(advertiser)


# --- DNSSEC (seed §11): signed zones served by nsd -------------------------------------------
#
#     ns "auth": nsd, authoritative for good.example and tampered.example (signed here with
#                dnspython, ED25519; in tampered.example the A record was changed after
#                signing) and plain.example (unsigned)
#     ns "vcli": ``dots-gateway discover`` with the DS records of the two signed zones
#
#     auth0 10.47.1.1/24  <-veth->  vcli0 10.47.1.2/24
#
# nsd quirks: ``-d`` keeps it in the foreground (Popen's PID is nsd's); ``username: ""`` and
# ``chroot: ""`` keep it from dropping to the nsd user, ``database: ""`` from writing nsd.db.

SIGNED_RECORDS = """\
@ NAPTR 100 10 "S" "DOTS:signal.udp" "" _dots._signal._udp
@ NAPTR 200 10 "S" "DOTS:signal.tcp" "" _dots._signal._tcp
_dots._signal._udp SRV 0 0 5000 dots
_dots._signal._tcp SRV 0 0 5001 dots
dots A 10.47.0.10
_dots-signal._udp PTR gw1._dots-signal._udp
gw1._dots-signal._udp SRV 0 0 4646 gw1
gw1._dots-signal._udp TXT ""
gw1 A 10.47.0.11
"""

NSD_CONF = """\
server:
    ip-address: 10.47.1.1
    port: 53
    username: ""
    chroot: ""
    database: ""
    zonesdir: "{dir}"
    zonelistfile: "{dir}/zone.list"
    xfrdfile: "{dir}/xfrd.state"
    pidfile: "{dir}/nsd.pid"
    logfile: "{dir}/nsd.log"
    server-count: 1
    verbosity: 2
remote-control:
    control-enable: no
"""


@pytest.fixture(scope="module")
def signed_lab() -> Iterator[dict[str, Any]]:
    from tests.support.dnssec_zones import make_zone

    reason = require_root()
    if reason:
        pytest.skip(reason)
    if shutil.which("nsd") is None:
        pytest.fail("nsd is missing: `make test` installs it (apt nsd)")
    cleanup_stale()
    with Lab() as net:
        auth, cli = net.namespace("auth"), net.namespace("vcli")
        net.veth(auth, "auth0", cli, "vcli0")
        net.address(auth, "auth0", "10.47.1.1/24")
        net.address(cli, "vcli0", "10.47.1.2/24")
        net.resolv_conf(cli, "10.47.1.1")
        good = make_zone("good.example.", SIGNED_RECORDS)
        tampered = make_zone("tampered.example.", SIGNED_RECORDS)
        tampered.tamper("dots.tampered.example.", "A", "10.47.0.66")
        plain = make_zone("plain.example.", SIGNED_RECORDS, signed=False)
        conf = NSD_CONF.format(dir=net.dir)
        for zone in (good, tampered, plain):
            name = zone.origin.to_text(omit_final_dot=True)
            (net.dir / f"{name}.zone").write_text(zone.zone.to_text(relativize=False))
            conf += f"zone:\n    name: {name}\n    zonefile: \"{name}.zone\"\n"
        (net.dir / "nsd.conf").write_text(conf)
        anchors = net.dir / "anchors"
        anchors.write_text(good.anchor_text("DS") + tampered.anchor_text("DS"))
        nsd = net.popen(auth, ["nsd", "-d", "-c", str(net.dir / "nsd.conf")], "nsd.out")
        deadline = time.monotonic() + 10
        while True:  # serving once it answers the SOA of a zone
            probe = net.run(cli, PY, "-c", "import dns.resolver as r; x = r.Resolver("
                            "configure=False); x.nameservers = ['10.47.1.1']; x.lifetime = 0.5;"
                            " x.resolve('good.example', 'SOA')", check=False)
            if probe.returncode == 0:
                break
            if nsd.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nsd did not start:\n{net.log('nsd.out')}\n{net.log('nsd.log')}")
            time.sleep(0.1)
        yield {"net": net, "cli": cli, "anchors": anchors}


def discover_signed(lab: dict[str, Any], domain: str, mode: str,
                    expect: int = 0) -> tuple[list[dict[str, Any]], str]:
    config = (f'[discovery]\ndnssec = "{mode}"\n'
              f'dnssec_trust_anchors = "{lab["anchors"]}"\n')
    path = lab["net"].dir / f"dnssec-{mode}.toml"
    path.write_text(config)
    argv = [PY, "-m", "gateway.cli", "discover", "--json", "--timeout", "15", "--config",
            str(path), "--interface", "vcli0", "--family", "4", "--dns-server", "10.47.1.1",
            "--domain", domain, "--mechanism", "s-naptr", "--mechanism", "dns-sd",
            "--collect-all"]
    result = lab["net"].run(lab["cli"], *argv, timeout=30, check=False)
    assert result.returncode == expect, (result.stdout, result.stderr,
                                         lab["net"].log("nsd.log")[-3000:])
    return json.loads(result.stdout or "[]"), result.stderr


def test_dnssec_require_finds_the_signed_candidates_validated(
        signed_lab: dict[str, Any]) -> None:
    found, err = discover_signed(signed_lab, "good.example", "require")
    assert [(c["mechanism"], c["address"], c["port"], c["reference_identifier"],
             c["validated"], c["dnssec"]) for c in found] == [
        ("s-naptr", "10.47.0.10", 5000, "good.example", True, "secure"),
        ("s-naptr", "10.47.0.10", 5001, "good.example", True, "secure"),
        ("dns-sd", "10.47.0.11", 4646, "gw1.good.example", True, "secure"),
    ]
    assert "dnssec require: 0 candidate(s) used" in err and "0 answer(s) refused" in err


def test_dnssec_require_refuses_a_tampered_answer(signed_lab: dict[str, Any]) -> None:
    found, err = discover_signed(signed_lab, "tampered.example", "require", expect=0)
    # The DNS-SD instance's records are intact; the S-NAPTR target's A record is not.
    assert [(c["mechanism"], c["address"], c["validated"]) for c in found] == [
        ("dns-sd", "10.47.0.11", True)]
    assert "A dots.tampered.example: bogus" in err and "verify failure" in err
    assert "refused" in err and "answer(s) refused" in err and "0 answer(s) refused" not in err


def test_dnssec_prefer_uses_tampered_and_unsigned_answers_marked(
        signed_lab: dict[str, Any]) -> None:
    found, err = discover_signed(signed_lab, "tampered.example", "prefer")
    assert [(c["mechanism"], c["address"], c["validated"], c["dnssec"]) for c in found] == [
        ("s-naptr", "10.47.0.66", False, "bogus"), ("s-naptr", "10.47.0.66", False, "bogus"),
        ("dns-sd", "10.47.0.11", True, "secure")]
    assert "DNSSEC: using 2 candidate(s) built from answers DNSSEC did not validate" in err
    assert "dnssec prefer: 2 candidate(s) used" in err and "(s-naptr bogus: 2)" in err
    found, err = discover_signed(signed_lab, "plain.example", "prefer")
    assert {(c["validated"], c["dnssec"]) for c in found} == {(False, "insecure")}
    assert len(found) == 3 and "no trust anchor covers it" in err
    found, err = discover_signed(signed_lab, "plain.example", "require", expect=1)
    assert found == [] and "insecure" in err
