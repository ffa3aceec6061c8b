"""The data channel of a running server (RFC 8783 over HTTPS, aiohttp, real TLS with the dev
PKI), through our client library: mutual TLS, the client's domain, HTTP-level refusals, and
a restart in the middle that keeps everything acknowledged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.client.connect import NetworkError
from gateway.client.data import DataChannelClient, client_ssl_context
from gateway.config import Settings, parse_config
from gateway.daemon import RunningServer, start_server
from tests.interop.peers import free_port
from tests.support import rfc8783 as rfc

ROOT = "/restconf/data/ietf-dots-data-channel:dots-data"


def _cuid(pki: Path) -> str:
    return cuid_from_certificate((pki / "client.pem").read_bytes())


def settings_for(tmp_path: Path, pki: Path, data_port: int) -> Settings:
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    return parse_config(
        f'[general]\nstate_dir = "{tmp_path}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_port()}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[[clients]]\nname = "site-a"\ncuid = "{cuid}"\n'
        f'prefixes = ["2001:db8::/32", "198.51.100.0/24"]\n'
        f'[data_channel]\nport = {data_port}\nmax_body = 4096\n')


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Path, Settings]]:
    pki = tmp_path / "pki"
    init_dev_pki(pki)
    settings = settings_for(tmp_path, pki, free_port())
    running = await start_server(settings)
    try:
        yield running, pki, settings
    finally:
        await running.stop()


def client_of(running: RunningServer, pki: Path) -> DataChannelClient:
    assert running.data is not None
    url = running.data.urls[0]
    return DataChannelClient(url, pki / "client.pem", pki / "client.key", pki / "ca.pem",
                             server_name="localhost", timeout=10)


async def test_serving_line_lists_the_https_url(daemon: Any) -> None:
    running, _, settings = daemon
    port = settings.data_channel.port
    assert f"https://127.0.0.1:{port}" in running.addresses


async def test_register_alias_acl_and_restart_in_the_middle(daemon: Any) -> None:
    running, pki, settings = daemon
    async with client_of(running, pki) as client:
        assert (await client.register()).status == 201
        alias = rfc.ALIAS["ietf-dots-data-channel:aliases"]["alias"]
        assert (await client.create("aliases", alias)).status == 201
        acl = rfc.ACL_IPV6_UDP["ietf-dots-data-channel:acls"]["acl"]
        assert (await client.create("acls", acl)).status == 201
        again = await client.create("acls", acl)
        assert again.status == 409 and "data-exists" in again.error
    await running.stop()
    running = await start_server(settings)  # (the fixture's second stop of the first is a no-op)
    try:
        async with client_of(running, pki) as client:
            aliases = (await client.read("aliases")).entries("aliases")
            assert [a["name"] for a in aliases] == ["https1"]
            acls = (await client.read("acls", "test-acl-ipv6-udp")).entries("acls")
            assert acls[0]["aces"] == acl[0]["aces"]
            assert running.data is not None
            assert running.data.store.lookup(client.cuid, "test-acl-ipv6-udp") is not None
            assert (await client.unregister()).status == 204
            assert (await client.read("aliases")).status == 404
    finally:
        await running.stop()


async def test_outside_the_domain_is_403_and_bad_json_is_400(daemon: Any) -> None:
    running, pki, _ = daemon
    async with client_of(running, pki) as client:
        assert (await client.register()).status == 201
        outside = await client.create("aliases",
                                      [{"name": "x", "target-prefix": ["192.0.2.0/24"]}])
        assert outside.status == 403
        assert outside.document["ietf-restconf:errors"]["error"][0]["error-tag"] == "access-denied"
        unknown = await client.create(
            "aliases", [{"name": "x", "target-prefix": ["2001:db8::/48"], "shape": "round"}])
        assert unknown.status == 400
        assert unknown.document["ietf-restconf:errors"]["error"][0]["error-path"].endswith(
            "/alias=x/shape")
        caps = await client.capabilities()
        assert caps.status == 200 and "ietf-dots-data-channel:capabilities" in caps.document


async def test_http_level_refusals(daemon: Any) -> None:
    running, pki, _ = daemon
    assert running.data is not None
    url = running.data.urls[0]
    context = client_ssl_context(pki / "client.pem", pki / "client.key", pki / "ca.pem")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        big = b"{" + b" " * 5000 + b"}"
        async with session.post(url + ROOT, data=big, server_hostname="localhost",
                                headers={"Content-Type": "application/yang-data+json"}) as r:
            assert r.status == 413
            body = await r.json(content_type=None)
            assert body["ietf-restconf:errors"]["error"][0]["error-tag"] == "too-big"
        async with session.post(url + ROOT, data=b"<xml/>", server_hostname="localhost",
                                headers={"Content-Type": "application/yang-data+xml"}) as r:
            assert r.status == 415
        async with session.get(url + "/.well-known/host-meta", server_hostname="localhost") as r:
            assert r.status == 200 and "restconf" in await r.text()


async def test_a_client_without_a_trusted_certificate_is_refused(daemon: Any,
                                                                tmp_path: Path) -> None:
    running, _, _ = daemon
    rogue = tmp_path / "rogue"
    init_dev_pki(rogue)
    assert running.data is not None
    # The rogue client trusts our server's CA, but its own certificate is from another CA.
    client = DataChannelClient(running.data.urls[0], rogue / "client.pem", rogue / "client.key",
                               tmp_path / "pki" / "ca.pem", server_name="localhost", timeout=5)
    async with client:
        with pytest.raises(NetworkError):
            await client.capabilities()


async def test_a_mitigation_may_name_an_alias_created_over_the_data_channel(
        daemon: Any) -> None:
    """Before the data channel, every alias-name was refused 4.00 (RFC 9132 §4.4.1.3:
    the alias must be one the client created); now the client's own aliases pass."""
    import cbor2

    from tests.integration.test_bad_input import connect

    running, pki, _ = daemon
    async with client_of(running, pki) as client:
        assert (await client.register()).status == 201
        alias = rfc.ALIAS["ietf-dots-data-channel:aliases"]["alias"]
        assert (await client.create("aliases", alias)).status == 201
        cuid = client.cuid
    peer = await connect(running, pki)
    try:
        base = f".well-known/dots/mitigate/cuid={cuid}"
        known = cbor2.dumps({1: {2: [{13: ["https1"], 14: 600}]}})
        assert (await peer.ask(3, f"{base}/mid=1", known)).code == 0x41  # 2.01
        unknown = cbor2.dumps({1: {2: [{13: ["not-mine"], 14: 600}]}})
        refused = await peer.ask(3, f"{base}/mid=2", unknown)
        assert refused.code == 0x80  # 4.00
        assert b"not-mine is unknown" in refused.payload
    finally:
        peer.conn.close()


async def test_a_certificate_revoked_in_a_new_crl_is_refused(tmp_path: Path) -> None:
    """The CRL watch (and a reload) reaches the data channel: new connections of a revoked
    client are refused."""
    from types import SimpleNamespace

    from tests.integration.test_reload import write_crl

    pki = tmp_path / "pki"
    init_dev_pki(pki)
    crl = tmp_path / "clients.crl"
    holder = SimpleNamespace(pki=pki, crl=crl)
    write_crl(holder, None)  # type: ignore[arg-type]
    settings = settings_for(tmp_path, pki, free_port())
    text = (f'[general]\nstate_dir = "{tmp_path}"\n[logging]\nlevel = "warning"\n'
            f'[server]\naddresses = ["127.0.0.1"]\nport = {free_port()}\n'
            f'transports = ["udp"]\n[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\n'
            f'key = "{pki}/server.key"\ncrl = "{crl}"\n'
            f'[[clients]]\nname = "site-a"\ncuid = "{_cuid(pki)}"\nprefixes = ["10.0.0.0/8"]\n'
            f'[data_channel]\nport = {settings.data_channel.port}\n')
    running = await start_server(parse_config(text))
    try:
        async with client_of(running, pki) as client:
            assert (await client.capabilities()).status == 200
        write_crl(holder, pki / "client.pem")  # type: ignore[arg-type]
        assert running.reloader is not None
        running.reloader.check_crl()
        async with client_of(running, pki) as client:
            with pytest.raises(NetworkError):
                await client.capabilities()
    finally:
        await running.stop()


async def test_a_write_that_cannot_be_saved_is_503_and_changes_nothing(daemon: Any) -> None:
    import sqlite3

    running, pki, _ = daemon
    assert running.data is not None
    store = running.data.store
    async with client_of(running, pki) as client:
        assert (await client.register()).status == 201
        writable = store._db
        # The file turns read-only under the daemon (as after an I/O error).
        store._db = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True,
                                    isolation_level=None)
        try:
            alias = rfc.ALIAS["ietf-dots-data-channel:aliases"]["alias"]
            answer = await client.create("aliases", alias)
            assert answer.status == 503 and "could not be saved" in answer.error
            assert (await client.read("aliases")).entries("aliases") == []
        finally:
            store._db.close()
            store._db = writable
        assert (await client.create("aliases", alias)).status == 201  # writes resume
    assert store.save_failures == 1


async def test_a_taken_data_port_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    import socket

    from gateway.transport.udp import PortInUse

    pki = tmp_path / "pki"
    init_dev_pki(pki)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = settings_for(tmp_path, pki, taken.getsockname()[1])
        with pytest.raises(PortInUse, match="data_channel.port"):
            await start_server(settings)
    running = await start_server(settings)  # nothing was left open (files, sockets)
    await running.stop()
