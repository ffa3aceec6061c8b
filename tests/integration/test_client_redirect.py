"""Following redirects (RFC 9132 §4.6) against real servers on loopback, DTLS and TLS.

A small fleet of in-process ``dots-gateway`` servers shares one port on 127.0.0.1, .2 and
.3 (a redirect names no port) and one dev CA whose server certificate carries the names
dots-{a,b,c}.example.net, so that the client checks the alternate server's certificate
against alt-server. A node redirects while it believes its sessions arrive on anycast
(``Node.redirecting``), to the target in its ``[redirect]`` section.

``client_factory`` builds the client under test; the gateway's upstream side is meant to
be added to its parameters and pass the same tests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.client.role import DotsClient, make_scope
from gateway.coap.message import CoapMessage
from gateway.config import parse_config
from gateway.daemon import RunningServer, start_server
from gateway.dots.codes import Code, Method, Status
from gateway.transport.tls_context import ClientCredentials
from redirect.policy import RedirectPolicy, parse_target

ADDRESSES = {"a": "127.0.0.1", "b": "127.0.0.2", "c": "127.0.0.3"}
DOTS_CLIENT = Path(sys.executable).parent / "dots-client"


def name_of(node: str) -> str:
    return f"dots-{node}.example.net"


def free_port_on(addresses: list[str]) -> int:
    """A port free for UDP and TCP on every one of ``addresses``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        sockets = []
        try:
            for address in addresses:
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    sockets.append(s)
                    s.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port")


@dataclass
class Node:
    name: str
    address: str
    port: int
    running: RunningServer
    #: (method, path) of every request the node answered itself (not redirected).
    answered: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"{self.address}:{self.port}"  # both transports, Happy Eyeballs

    def redirecting(self, on: bool) -> None:
        # Loopback cannot be an anycast address; classify the node's sessions instead.
        self.running.role.is_anycast = lambda _local: on

    def mitigate_requests(self) -> list[tuple[str, str]]:
        return [(m, p[-1]) for m, p in self.answered if "mitigate" in p]


class Fleet:
    def __init__(self, directory: Path, pki: Path) -> None:
        self.directory, self.pki = directory, pki
        self.port = free_port_on(list(ADDRESSES.values()))
        self.cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
        self.nodes: list[Node] = []

    async def start(self, node: str, *, redirect_to: str | None = None, ttl: int = 900,
                    pool: str | None = None) -> Node:
        redirect = ""
        if redirect_to is not None:
            redirect = (f'[redirect]\nname = "{name_of(redirect_to)}"\n'
                        f'addresses = ["{ADDRESSES[redirect_to]}"]\nttl = {ttl}\n')
        elif pool is not None:  # a drain sends sessions to the pool, not to the node itself
            redirect = (f'[redirect]\nname = "{name_of(node)}"\n'
                        f'addresses = ["{ADDRESSES[node]}"]\nttl = {ttl}\n'
                        f'[[redirect.pool]]\nname = "{name_of(pool)}"\n'
                        f'addresses = ["{ADDRESSES[pool]}"]\n')
        pki = self.pki
        settings = parse_config(
            f'[general]\nstate_dir = "{self.directory / node}"\n[logging]\nlevel = "warning"\n'
            f'[server]\naddresses = ["{ADDRESSES[node]}"]\nport = {self.port}\n'
            f'transports = ["udp", "tcp"]\n'
            f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
            f'[[clients]]\nname = "site"\ncuid = "{self.cuid}"\nprefixes = ["10.0.0.0/8"]\n'
            + redirect)
        running = await start_server(settings)
        result = Node(name_of(node), ADDRESSES[node], self.port, running)
        answer = running.role._answer

        def spy(session: Any, msg: CoapMessage, key: Any, now: float) -> None:
            result.answered.append((Method(msg.code).name, tuple(msg.uri_path)))
            answer(session, msg, key, now)

        running.role._answer = spy  # type: ignore[method-assign]
        self.nodes.append(result)
        return result

    async def stop(self) -> None:
        for node in self.nodes:
            await node.running.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory, hostnames=("localhost", *map(name_of, ADDRESSES)),
                 addresses=(*ADDRESSES.values(), "::1"))
    return directory


@pytest.fixture
async def fleet(tmp_path: Path, pki: Path) -> AsyncIterator[Fleet]:
    servers = Fleet(tmp_path, pki)
    yield servers
    await servers.stop()


@pytest.fixture(params=["dots-client", "gateway-upstream"])
def client_factory(request: pytest.FixtureRequest, pki: Path,
                   tmp_path: Path) -> Callable[..., DotsClient]:
    """``make(servers, **options)``: the client under test, with the dev client
    certificate, provisioned with ``servers``, as an async context manager. The gateway's
    upstream side negotiates and reconnects always; it ignores those options."""

    def make(servers: list[str], **options: Any) -> DotsClient:
        credentials = ClientCredentials(pki / "client.pem", pki / "client.key", pki / "ca.pem")
        if request.param == "gateway-upstream":
            from gateway.client.connect import parse_server
            from gateway.relay.upstream import UpstreamClient

            async def ready() -> None:
                pass

            client: DotsClient = UpstreamClient(
                credentials, [parse_server(s) for s in servers], state_dir=tmp_path / "client",
                on_ready=ready, is_mitigating=lambda: False, handshake_timeout=3.0,
                request_timeout=5.0)
            client.attempt_delay = 0.05
            return client
        options = {"state_dir": tmp_path / "client", "handshake_timeout": 3.0,
                   "request_timeout": 5.0, "attempt_delay": 0.05, **options}
        return DotsClient(credentials, servers, **options)

    return make


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.05)


async def test_redirected_client_continues_its_mitigations_at_the_alternate_server(
        fleet: Fleet, client_factory: Callable[..., DotsClient]) -> None:
    a = await fleet.start("a", redirect_to="b", ttl=900)
    b = await fleet.start("b")
    async with client_factory([a.uri]) as client:
        created = await client.mitigate(make_scope(target_prefix=["10.1.0.0/24"],
                                                   lifetime=600))
        assert created.code is Code.CREATED and created.endpoint.address == a.address
        a.redirecting(True)
        got = await client.get(created.mid)
        assert got.code is Code.CONTENT, got
        assert got.endpoint.address == b.address and got.endpoint.server_name == b.name
        assert got.scopes[0].mid == created.mid
        assert got.scopes[0].status is Status.ATTACK_MITIGATION_IN_PROGRESS
        assert f"cuid={client.cuid}" in got.request.path
        # At B: the configuration negotiated again, then GET first, the request B lacked
        # sent again with its mid, and the redirected GET.
        assert b.answered[0][1][-1] == "config"
        assert b.mitigate_requests() == [("GET", f"cuid={client.cuid}"),
                                         ("PUT", f"mid={created.mid}"),
                                         ("GET", f"mid={created.mid}")]
        assert client.sid is not None  # negotiated with B
        assert a.running.role.redirects == {"anycast": 1}
        stats = client.stats
        assert (stats.redirects, stats.redirects_followed, stats.redirect_loops) == (1, 1, 0)
        # It stays there: the next request goes to B directly.
        assert (await client.heartbeat()).endpoint.address == b.address
        assert a.running.role.redirects == {"anycast": 1}


async def test_redirect_loop_is_detected_and_the_client_stays_on_a_provisioned_server(
        fleet: Fleet, client_factory: Callable[..., DotsClient],
        caplog: pytest.LogCaptureFixture) -> None:
    a = await fleet.start("a", redirect_to="b")
    b = await fleet.start("b", redirect_to="a")
    c = await fleet.start("c")
    async with client_factory([a.uri, c.uri]) as client:
        created = await client.mitigate(make_scope(target_prefix=["10.2.0.0/24"]))
        assert created.endpoint.address == a.address
        a.redirecting(True)
        b.redirecting(True)
        got = await client.get(created.mid)
        assert got.code is Code.CONTENT and got.endpoint.address == c.address
        assert client.stats.redirect_loops == 1 and client.stats.redirects_followed == 1
        assert client.alternate is None  # on a provisioned server
        assert c.mitigate_requests()[-2:] == [("PUT", f"mid={created.mid}"),
                                              ("GET", f"mid={created.mid}")]
        assert any("redirect loop" in r.getMessage() for r in caplog.records
                   if r.levelname == "WARNING")
        assert (await client.heartbeat()).endpoint.address == c.address


async def test_ttl_expiry_returns_to_the_provisioned_server(
        fleet: Fleet, client_factory: Callable[..., DotsClient]) -> None:
    a = await fleet.start("a", redirect_to="b", ttl=2)
    b = await fleet.start("b")
    async with client_factory([a.uri], negotiate=False) as client:
        a.redirecting(True)
        started = time.monotonic()  # before the redirect, so before its TTL starts
        moved = await client.heartbeat()
        assert moved.code is Code.CHANGED and moved.endpoint.address == b.address
        a.redirecting(False)
        await wait_until(lambda: client.stats.redirect_returns == 1 and client.connected,
                         6, "the return to the provisioned server")
        assert time.monotonic() - started >= 2.0
        assert client.endpoint is not None and client.endpoint.address == a.address
        assert (await client.heartbeat()).endpoint.address == a.address


async def test_redirect_in_a_notification_during_an_attack(
        fleet: Fleet, client_factory: Callable[..., DotsClient]) -> None:
    """A drain redirects observers inside a notification, for this request only (Max-Age
    0); under attack the client keeps the alternate server (RFC 9132 §4.6)."""
    a = await fleet.start("a", pool="b")
    b = await fleet.start("b")
    async with client_factory([a.uri], negotiate=False, reconnect=False) as client:
        created = await client.mitigate(make_scope(target_prefix=["10.3.0.0/24"]))
        observation = await client.observe(created.mid)
        assert observation.first is not None and observation.first.code is Code.CONTENT
        client.set_under_attack(True)
        a.running.role.start_drain()
        note = await observation.next(timeout=5)  # B's answer to the registration there
        assert note.code is Code.CONTENT and note.endpoint.address == b.address
        assert note.scopes[0].mid == created.mid and not observation.ended
        assert b.mitigate_requests()[:2] == [("GET", f"cuid={client.cuid}"),
                                             ("PUT", f"mid={created.mid}")]
        assert client.endpoint is not None and client.endpoint.address == b.address
        assert client.stats.redirect_returns == 0


async def test_alternate_server_certificate_must_match_alt_server(
        fleet: Fleet, client_factory: Callable[..., DotsClient]) -> None:
    a = await fleet.start("a", redirect_to="b")
    b = await fleet.start("b")
    # B's address under a name its certificate does not carry.
    a.running.role.redirect = RedirectPolicy(own=parse_target("impostor.example.net",
                                                              [b.address]))
    async with client_factory([a.uri], negotiate=False) as client:
        a.redirecting(True)
        reply = await client.heartbeat()
        assert reply.code is Code.SERVICE_UNAVAILABLE and reply.redirect is not None
        assert client.stats.redirects_failed == 1 and b.answered == []
        assert client.endpoint is not None and client.endpoint.address == a.address


async def test_dots_client_follows_a_redirect(fleet: Fleet, pki: Path, tmp_path: Path) -> None:
    a = await fleet.start("a", redirect_to="b", ttl=900)
    b = await fleet.start("b")
    a.redirecting(True)
    state = tmp_path / "state"
    shutil.copytree(pki, state / "pki")
    proc = await asyncio.create_subprocess_exec(
        str(DOTS_CLIENT), "--server", f"coaps://{a.uri}", "--state-dir", str(state),
        "--timeout", "5", "mitigate", "--target-prefix", "10.4.0.0/24",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    doc = json.loads(out)
    assert doc["response"]["code"] == "2.01"
    assert doc["request"]["uri"].startswith(f"coaps://{b.address}:{b.port}/")
    assert doc["request"]["uri"].endswith(f"/mid={doc['mid']}")
    assert "redirected PUT" in err.decode() and b.name in err.decode()
    assert b.mitigate_requests() == [("PUT", f"mid={doc['mid']}")]
