"""Gateway mode for the data channel: a gateway terminates the client's HTTPS, checks the
request itself (cuid, domain, nodes), relays it to a real upstream dots-gateway server with
its own certificate (inserting the cdid as a server-domain gateway), and says so clearly
when there is no upstream or it cannot be reached."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.client.data import DataChannelClient
from gateway.config import parse_config
from gateway.daemon import RunningServer, start_server
from tests.interop.peers import free_port
from tests.support import rfc8783 as rfc


def _cuid(pki: Path) -> str:
    return cuid_from_certificate((pki / "client.pem").read_bytes())


def _tls(pki: Path) -> str:
    return f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    provider, site = tmp_path / "provider-pki", tmp_path / "site-pki"
    init_dev_pki(provider)  # the upstream server, and the gateway's own client certificate
    init_dev_pki(site)  # the gateway's server certificate, and the DOTS client's
    up_signal, up_data, gw_data = free_port(), free_port(), free_port()
    upstream_settings = parse_config(
        f'[general]\nstate_dir = "{tmp_path / "upstream"}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {up_signal}\ntransports = ["udp"]\n'
        + _tls(provider) +
        f'[[clients]]\nname = "gateway"\ncuid = "{_cuid(provider)}"\nallow_any_cuid = true\n'
        f'prefixes = ["2001:db8::/32", "198.51.100.0/24"]\n'
        f'[trusted_gateways]\nidentities = ["{_cuid(provider)}"]\n'
        f'[data_channel]\naddresses = ["127.0.0.1"]\nport = {up_data}\n')
    gateway_text = (
        f'[general]\nstate_dir = "{tmp_path / "gateway"}"\nmode = "gateway"\n'
        f'[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_port()}\ntransports = ["udp"]\n'
        + _tls(site) +
        f'[[clients]]\nname = "site"\ncuid = "{_cuid(site)}"\nprefixes = ["2001:db8:6401::/48"]\n'
        f'[[upstream]]\nname = "provider"\naddress = "127.0.0.1"\nport = {up_signal}\n'
        f'reference_identifier = "localhost"\ntransport = "udp"\n'
        f'[gateway]\ndomain = "server"\ncert = "{provider}/client.pem"\n'
        f'key = "{provider}/client.key"\nca = "{provider}/ca.pem"\n'
        f'[data_channel]\naddresses = ["127.0.0.1"]\nport = {gw_data}\n')
    upstream = await start_server(upstream_settings)
    gateway: RunningServer | None = None
    try:
        gateway = await start_server(parse_config(
            gateway_text + f'upstream = "https://127.0.0.1:{up_data}"\n'
            'upstream_server_name = "localhost"\n'))
        yield {"upstream": upstream, "gateway": gateway, "site": site, "tmp": tmp_path,
               "gateway_text": gateway_text}
    finally:
        if gateway is not None:
            await gateway.stop()
        await upstream.stop()


def client(running: RunningServer, pki: Path) -> DataChannelClient:
    assert running.data is not None
    return DataChannelClient(running.data.urls[0], pki / "client.pem", pki / "client.key",
                             pki / "ca.pem", server_name="localhost", timeout=10)


async def test_requests_are_checked_then_relayed_with_the_cdid(pair: dict[str, Any]) -> None:
    upstream, gateway, site = pair["upstream"], pair["gateway"], pair["site"]
    async with client(gateway, site) as c:
        assert (await c.register()).status == 201
        assert (await c.create("aliases",
                               rfc.ALIAS["ietf-dots-data-channel:aliases"]["alias"])).status == 201
        # Outside the client's domain at the gateway (the upstream would accept it for the
        # gateway's own rule): refused by the gateway, never relayed.
        outside = await c.create("aliases", [{"name": "far", "target-prefix": ["2001:db8:1::/48"]}])
        assert outside.status == 403
        listed = await c.read("aliases")
        assert [a["name"] for a in listed.entries("aliases")] == ["https1"]
        again = await c.register()
        assert again.status == 409  # the upstream's answer, passed back unchanged
    held = upstream.data.store.clients()[_cuid(site)]
    assert held.cdid == _cuid(site)  # RFC 9132 §4.4.1.2: the hash of the client's credential
    assert list(held.aliases) == ["https1"]
    assert gateway.data.store.clients() == {}  # the gateway keeps nothing of its own


async def test_no_reachable_upstream_is_an_explicit_error(pair: dict[str, Any]) -> None:
    gateway, site = pair["gateway"], pair["site"]
    await pair["upstream"].data.stop()  # the upstream's data channel goes away
    async with client(gateway, site) as c:
        answer = await c.capabilities()
        assert answer.status == 502 and "cannot be reached" in answer.error
    assert gateway.data is not None
    gateway.data.upstream.servers = lambda: []  # as with nothing configured or discovered
    async with client(gateway, site) as c:
        answer = await c.register()
        assert answer.status == 503 and "no upstream data-channel server" in answer.error



async def test_a_mitigation_through_the_gateway_names_an_alias(pair: dict[str, Any]) -> None:
    """The acceptance session through a gateway: the alias is created over the relayed data
    channel, then a mitigation request naming it is relayed and the upstream accepts it."""
    import cbor2

    from tests.integration.test_bad_input import connect

    gateway, site, upstream = pair["gateway"], pair["site"], pair["upstream"]
    async with client(gateway, site) as c:
        assert (await c.register()).status == 201
        alias = rfc.ALIAS["ietf-dots-data-channel:aliases"]["alias"]
        assert (await c.create("aliases", alias)).status == 201
        cuid = c.cuid
    peer = await connect(gateway, site)
    try:
        base = f".well-known/dots/mitigate/cuid={cuid}"
        body = cbor2.dumps({1: {2: [{13: ["https1"], 14: 600}]}})
        answer = await peer.ask(3, f"{base}/mid=7", body)
        assert answer.code == 0x41, answer.payload  # 2.01 from the upstream, relayed
        unknown = cbor2.dumps({1: {2: [{13: ["not-mine"], 14: 600}]}})
        refused = await peer.ask(3, f"{base}/mid=8", unknown)
        assert refused.code == 0x80, refused.payload  # the upstream's 4.00, relayed
    finally:
        peer.conn.close()
    records = [r for r in upstream.role.core.store.records() if r.cuid == cuid]
    assert [r.mid for r in records] == [7]


async def test_the_upstream_can_come_from_discovery(pair: dict[str, Any]) -> None:
    """No [data_channel] upstream: the first data.tcp candidate of the discovery engine
    (the signal-channel candidates are not data-channel servers)."""
    import ipaddress
    from types import SimpleNamespace

    from gateway.config import parse_config
    from gateway.discovery.candidates import Candidate, Family, Mechanism, Transport
    from gateway.relay.data_upstream import build_data_upstream

    gateway, site, upstream = pair["gateway"], pair["site"], pair["upstream"]
    port = int(upstream.data.urls[0].rpartition(":")[2])
    loopback = ipaddress.ip_address("127.0.0.1")
    candidates = [
        Candidate(Mechanism.SNAPTR, "lo", Family.V4, Transport.SIGNAL_UDP, loopback, 4646,
                  "localhost"),
        Candidate(Mechanism.SNAPTR, "lo", Family.V4, Transport.DATA_TCP, loopback, port,
                  "localhost"),
    ]
    discovery = SimpleNamespace(procedure=SimpleNamespace(candidates=lambda: candidates))
    settings = parse_config(pair["gateway_text"])  # no [data_channel] upstream
    relay = build_data_upstream(settings, discovery)  # type: ignore[arg-type]
    assert [s.url for s in relay.servers()] == [f"https://127.0.0.1:{port}"]
    old, gateway.data.upstream = gateway.data.upstream, relay
    try:
        async with client(gateway, site) as c:
            assert (await c.register()).status == 201
        assert _cuid(site) in upstream.data.store.clients()
    finally:
        gateway.data.upstream = old
        await relay.aclose()
