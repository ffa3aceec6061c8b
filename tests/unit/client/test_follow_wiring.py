"""Following redirects in the client's signal channel (RFC 9132 §4.6), without sockets.

Servers here are scripted objects and sessions fake ``ClientSession``s that hand each
request to their server; time is a fake clock that the tests move. What runs for real is
``SignalChannel``/``DotsClient``: deciding, Happy Eyeballs over the candidates, moving,
resending, carrying mitigations over, re-registering observations, returning after the TTL.

``client_factory`` builds the client under test; parametrize it over another
``SignalChannel`` subclass to hold that one to the same rules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from gateway.client.channel import SignalChannel
from gateway.client.connect import Endpoint, NetworkError, ServerSpec, Transport
from gateway.client.role import DotsClient, make_scope
from gateway.coap.message import CoapMessage
from gateway.dots.codec import decode_message, encode_message
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code, Method, Status
from gateway.dots.model import MitigationScope, RedirectedSignal
from gateway.transport.tls_context import ClientCredentials
from redirect.follow import LOOP_WINDOW, MAX_REDIRECTS
from redirect.policy import UNTIL_FURTHER_NOTICE

PORT = 4646
OBSERVE_OPTION = 6


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeServer:
    """A DOTS server at one address, named ``name`` in its certificate. It redirects every
    request while ``redirect`` is set; otherwise it keeps mitigations by mid."""

    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address
        self.up = True
        self.redirect: tuple[str, tuple[str, ...], int | None] | None = None
        self.store: dict[int, bytes] = {}  # mid -> request body
        #: (method, last path segment) of the requests but session configuration ones.
        self.log: list[tuple[str, str]] = []
        self.observers: dict[bytes, FakeSession] = {}
        self.sequence = 1

    def redirect_to(self, server: FakeServer | str, max_age: int | None = 600,
                    records: bool = True) -> None:
        if isinstance(server, str):
            self.redirect = (server, (), max_age)
        else:
            self.redirect = (server.name, (server.address,) if records else (), max_age)

    def redirect_reply(self, request: CoapMessage) -> CoapMessage:
        assert self.redirect is not None
        name, records, max_age = self.redirect
        body = encode_message(RedirectedSignal(
            name, tuple(ipaddress.ip_address(a) for a in records)))
        return request.response(int(Code.SERVICE_UNAVAILABLE), payload=body,
                                content_format=CONTENT_FORMAT_DOTS_CBOR, max_age=max_age)

    def handle(self, session: FakeSession, request: CoapMessage) -> CoapMessage:
        path = request.uri_path
        if "config" not in path:
            self.log.append((Method(request.code).name, path[-1]))
        if self.redirect is not None:
            return self.redirect_reply(request)
        if "config" in path:
            return request.response(int(Code.NOT_FOUND))  # no negotiation: the defaults
        if path[-1] == "hb":
            return request.response(int(Code.CHANGED))
        mid = next((int(p[4:]) for p in path if p.startswith("mid=")), None)
        if request.code == Method.PUT and mid is not None:
            created = mid not in self.store
            self.store[mid] = request.payload
            return request.response(int(Code.CREATED if created else Code.CHANGED))
        if request.code == Method.DELETE and mid is not None:
            self.store.pop(mid, None)
            return request.response(int(Code.DELETED))
        if request.code == Method.GET:
            mids = [m for m in self.store if mid is None or m == mid]
            if not mids:
                return request.response(int(Code.NOT_FOUND))
            observe = None
            if request.observe == 0:
                self.observers[request.token] = session
                observe = self.sequence
            return request.response(int(Code.CONTENT), payload=self._body(mids),
                                    content_format=CONTENT_FORMAT_DOTS_CBOR, observe=observe)
        return request.response(int(Code.BAD_REQUEST))

    def _body(self, mids: list[int]) -> bytes:
        scopes = []
        for mid in mids:
            body = decode_message(self.store[mid])
            assert isinstance(body, MitigationScope)
            scopes.append(dataclasses.replace(
                body.scope[0], mid=mid, status=Status.ATTACK_MITIGATION_IN_PROGRESS))
        return encode_message(MitigationScope(tuple(scopes)))

    def notify_redirect(self) -> None:
        """Tell every observer to go elsewhere, inside a notification (no Observe: the
        observation ends, as the server role's drain does)."""
        for token, session in list(self.observers.items()):
            anchor = CoapMessage(None, int(Method.GET), 0, token)
            session.push(token, self.redirect_reply(anchor))
        self.observers.clear()

    def notify(self) -> None:
        self.sequence += 1
        for token, session in self.observers.items():
            anchor = CoapMessage(None, int(Method.GET), 0, token)
            session.push(token, anchor.response(
                int(Code.CONTENT), payload=self._body(sorted(self.store)),
                content_format=CONTENT_FORMAT_DOTS_CBOR, observe=self.sequence))


class FakeSession:
    """What ``SignalChannel`` uses of a ``ClientSession``; answers come one loop turn later."""

    resumed = False
    ticket = None

    def __init__(self, owner: SignalChannel, endpoint: Endpoint, server: FakeServer) -> None:
        self.owner, self.endpoint, self.server = owner, endpoint, server
        self.closed = False
        self.close_reason = ""
        self._callbacks: dict[bytes, Callable[[CoapMessage | None, str], None]] = {}
        self._tokens = 0

    @property
    def reliable(self) -> bool:
        return self.endpoint.transport is Transport.TCP

    def send_request(self, message: CoapMessage, callback: Any, *, confirmable: bool,
                     lifetime: float | None) -> bytes:
        if self.closed:
            raise ConnectionError("closed")
        token = message.token
        if not token:
            self._tokens += 1
            token = self._tokens.to_bytes(2, "big")
        message = dataclasses.replace(message, token=token)
        self._callbacks[token] = callback
        if not self.server.up:
            return token
        response = self.server.handle(self, message)
        asyncio.get_running_loop().call_soon(self.push, token, response)
        return token

    def push(self, token: bytes, response: CoapMessage) -> None:
        callback = self._callbacks.get(token)
        if callback is None or self.closed:
            return
        if response.code >> 5 != 2 or response.observe is None:
            del self._callbacks[token]
        callback(response, "")

    def forget(self, token: bytes) -> None:
        self._callbacks.pop(token, None)

    def set_parameters(self, _parameters: Any) -> None:
        pass

    def close(self, reason: str = "closed locally") -> None:
        if self.closed:
            return
        self.closed, self.close_reason = True, reason
        callbacks, self._callbacks = self._callbacks, {}
        for callback in callbacks.values():
            callback(None, "closed")
        self.owner.session_closed(self, reason)  # type: ignore[arg-type]


class Net:
    def __init__(self) -> None:
        self.servers: dict[str, FakeServer] = {}

    def add(self, name: str, address: str) -> FakeServer:
        server = FakeServer(name, address)
        self.servers[address] = server
        return server


def on_fake_net(cls: type[SignalChannel]) -> type[SignalChannel]:
    """``cls`` with its (D)TLS attempts replaced by fake sessions on ``net``; a certificate
    matches when the name checked is the server's name or address (RFC 9132 §7.1)."""

    class Faked(cls):  # type: ignore[valid-type, misc]
        net: Net

        async def _attempt(self, endpoint: Endpoint, resume: bytes | None = None) -> Any:
            self.stats.attempts.append(endpoint.uri)
            await asyncio.sleep(0)
            server = self.net.servers.get(endpoint.address)
            if server is None or not server.up:
                raise NetworkError(f"{endpoint}: unreachable")
            if endpoint.server_name not in (server.name, server.address):
                raise NetworkError(f"{endpoint}: certificate does not match "
                                   f"{endpoint.server_name}")
            return FakeSession(self, endpoint, server)

    return Faked


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> ClientCredentials:
    pki = tmp_path_factory.mktemp("pki")
    init_dev_pki(pki)
    return ClientCredentials(pki / "client.pem", pki / "client.key", pki / "ca.pem")


@pytest.fixture
def net() -> Net:
    return Net()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def _ready() -> None:
    pass


@pytest.fixture(params=["dots-client", "gateway-upstream"])
async def client_factory(request: pytest.FixtureRequest, credentials: ClientCredentials,
                         net: Net, clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    """Builds the client under test on the fake network: ``make(*servers, **options)``.
    The gateway's upstream side always negotiates and reconnects (options ignored)."""
    made: list[Any] = []

    def make(*servers: FakeServer, **options: Any) -> Any:
        specs = [ServerSpec(s.address, PORT) for s in servers]
        if request.param == "gateway-upstream":
            from gateway.relay.upstream import UpstreamClient

            client = on_fake_net(UpstreamClient)(
                credentials, specs, state_dir=None, on_ready=_ready,
                is_mitigating=lambda: False, request_timeout=5.0, clock=clock)
            client.attempt_delay = 0.01
        else:
            options = {"negotiate": False, "attempt_delay": 0.01, "request_timeout": 5.0,
                       "clock": clock, **options}
            client = on_fake_net(DotsClient)(credentials, specs, **options)
        client.net = net
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def settle(client: Any, turns: int = 50) -> None:
    """Let due timers fire and spawned work (moves, returns) run to its end."""
    for turn in range(turns):
        await asyncio.sleep(0)
        if turn > 3 and all(t.done() for t in client._tasks) and not client._move_lock.locked():
            return
    await asyncio.wait_for(asyncio.gather(*client._tasks, return_exceptions=True), 2)


SCOPE = make_scope(target_prefix=["192.0.2.0/28"], lifetime=3600)


async def test_redirect_moves_to_the_alternate_server_and_resends_the_request(
        client_factory: Callable[..., Any], net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "2001:db8::2")
    client = client_factory(a)
    await client.connect()
    created = await client.mitigate(SCOPE)
    a.redirect_to(b, max_age=900)
    reply = await client.get(created.mid)
    assert reply.code is Code.CONTENT and reply.mid == created.mid
    assert reply.endpoint.address == "2001:db8::2" and reply.endpoint.port == PORT
    assert reply.endpoint.server_name == "dots-b.example"  # certificate checked as DNS-ID
    assert f"cuid={client.cuid}" in reply.request.path
    # GET first, then the request B did not know with its own mid, then the resent GET.
    assert b.log == [("GET", f"cuid={client.cuid}"), ("PUT", f"mid={created.mid}"),
                     ("GET", f"mid={created.mid}")]
    assert list(b.store) == [created.mid]
    assert client.alternate is not None and client.alternate.host == "dots-b.example"
    stats = client.stats
    assert (stats.redirects, stats.redirects_followed, stats.redirect_loops) == (1, 1, 0)
    assert client.follower.current is not None and client.follower.current.ttl == 900
    await client.close()


async def test_mitigations_the_new_server_knows_are_not_sent_again(
        client_factory: Callable[..., Any], net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    created = await client.mitigate(SCOPE)
    b.store[created.mid] = a.store[created.mid]  # the servers share their state
    a.redirect_to(b)
    assert (await client.heartbeat()).code is Code.CHANGED
    assert b.log == [("GET", f"cuid={client.cuid}"), ("PUT", "hb")]
    await client.close()


async def test_without_alt_server_record_the_name_is_resolved(
        client_factory: Callable[..., Any], net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("localhost", "::1")
    client = client_factory(a)
    a.redirect_to(b, records=False)
    reply = await client.heartbeat()
    assert reply.code is Code.CHANGED and reply.endpoint.address == "::1"
    assert list(client.stats.attempts)[-1] == f"coaps://[::1]:{PORT}"  # UDP/IPv6 first
    await client.close()


async def test_a_certificate_not_matching_alt_server_is_refused(
        client_factory: Callable[..., Any], net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    a.redirect = ("impostor.example", ("192.0.2.2",), 600)  # B's address, another name
    reply = await client.heartbeat()
    assert reply.code is Code.SERVICE_UNAVAILABLE and reply.redirect is not None
    assert client.stats.redirects_failed == 1 and client.stats.redirects_followed == 0
    assert client.endpoint.address == "192.0.2.1" and client.alternate is None
    assert b.log == []
    await client.close()


async def test_a_loop_is_ignored_and_other_provisioned_servers_are_tried(
        client_factory: Callable[..., Any], net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    c = net.add("dots-c.example", "192.0.2.3")
    client = client_factory(a, c)
    a.redirect_to(b)
    b.redirect_to(a)
    with caplog.at_level(logging.WARNING, "gateway.client.channel"):
        reply = await client.heartbeat()
    assert reply.code is Code.CHANGED and reply.endpoint.address == "192.0.2.3"
    assert client.stats.redirect_loops == 1 and client.stats.redirects_followed == 1
    assert client.alternate is None  # on a provisioned server again
    assert any("redirect loop" in r.getMessage() and "dots-a.example" in r.getMessage()
               for r in caplog.records)
    await client.close()


async def test_a_loop_with_no_other_server_returns_the_5_03(
        client_factory: Callable[..., Any], net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    a.redirect_to(b)
    b.redirect_to(a)
    reply = await client.heartbeat()
    assert reply.code is Code.SERVICE_UNAVAILABLE
    assert reply.redirect is not None and reply.redirect.alt_server == "dots-a.example"
    assert client.stats.redirect_loops == 1
    await client.close()


async def test_a_server_contacted_more_than_5_minutes_ago_is_no_loop(
        client_factory: Callable[..., Any], net: Net, clock: FakeClock) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    await client.connect()
    a.redirect_to(b, max_age=UNTIL_FURTHER_NOTICE)
    await client.heartbeat()
    clock.now += LOOP_WINDOW + 1
    b.redirect_to(a, max_age=UNTIL_FURTHER_NOTICE)
    a.redirect = None
    reply = await client.heartbeat()
    assert reply.code is Code.CHANGED and reply.endpoint.address == "192.0.2.1"
    assert client.stats.redirects_followed == 2 and client.stats.redirect_loops == 0
    await client.close()


async def test_redirect_chains_are_bounded(client_factory: Callable[..., Any],
                                           net: Net) -> None:
    servers = [net.add(f"dots-{i}.example", f"192.0.2.{i + 1}") for i in range(6)]
    for here, there in zip(servers, servers[1:], strict=False):
        here.redirect_to(there)
    client = client_factory(servers[0])
    reply = await client.heartbeat()
    assert reply.code is Code.SERVICE_UNAVAILABLE
    assert client.stats.redirects_followed == MAX_REDIRECTS
    assert client.stats.redirects_failed == 1
    assert servers[MAX_REDIRECTS + 1].log == []
    await client.close()


async def test_ttl_expiry_returns_to_the_provisioned_server(
        client_factory: Callable[..., Any], net: Net, clock: FakeClock) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    a.redirect_to(b, max_age=100)
    await client.heartbeat()
    a.redirect = None
    assert client._return_due_at() == clock.now + 100
    clock.now += 99
    client._on_timer()
    await settle(client)
    assert client.endpoint.address == "192.0.2.2"
    clock.now += 2
    client._on_timer()
    await settle(client)
    assert client.endpoint.address == "192.0.2.1" and client.alternate is None
    assert client.stats.redirect_returns == 1
    assert (await client.heartbeat()).endpoint.address == "192.0.2.1"
    await client.close()


async def test_no_return_while_under_attack(client_factory: Callable[..., Any], net: Net,
                                            clock: FakeClock) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    a.redirect_to(b, max_age=100)
    await client.heartbeat()
    a.redirect = None
    client.set_under_attack(True)
    clock.now += 1000
    assert client._return_due_at() is None
    client._on_timer()
    await settle(client)
    assert client.endpoint.address == "192.0.2.2"
    client.set_under_attack(False)  # the attack is over: the TTL applies at once
    client._on_timer()
    await settle(client)
    assert client.endpoint.address == "192.0.2.1" and client.stats.redirect_returns == 1
    await client.close()


async def test_max_age_0_redirects_this_request_only(
        client_factory: Callable[..., Any], net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    await client.connect()
    a.redirect_to(b, max_age=0)
    reply = await client.mitigate(SCOPE)
    assert reply.code is Code.CREATED and reply.endpoint.address == "192.0.2.2"
    a.redirect = None
    await settle(client)
    assert client.endpoint.address == "192.0.2.1" and client.stats.redirect_returns == 1
    # Back on A, the GET comes first and A learns the request made at B.
    assert a.log[-2:] == [("GET", f"cuid={client.cuid}"), ("PUT", f"mid={reply.mid}")]
    await client.close()


async def test_max_age_0_under_attack_stays(client_factory: Callable[..., Any],
                                            net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    client.set_under_attack(True)
    a.redirect_to(b, max_age=0)
    await client.heartbeat()
    await settle(client)
    assert client.endpoint.address == "192.0.2.2" and client.stats.redirect_returns == 0
    await client.close()


async def test_concurrent_requests_move_once(client_factory: Callable[..., Any],
                                             net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    await client.connect()
    a.redirect_to(b)
    replies = await asyncio.gather(*(client.heartbeat() for _ in range(4)))
    assert {r.endpoint.address for r in replies} == {"192.0.2.2"}
    assert client.stats.redirects_followed == 1 and client.stats.sessions == 2
    await client.close()


async def test_redirect_in_a_notification_moves_and_registers_again(
        client_factory: Callable[..., Any], net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a, reconnect=False)  # as dots-client runs
    created = await client.mitigate(SCOPE)
    observation = await client.observe(created.mid)
    assert observation.first.code is Code.CONTENT
    a.redirect_to(b, max_age=600)
    a.notify_redirect()
    note = await observation.next(timeout=2)  # B's answer to the registration
    assert note.code is Code.CONTENT and note.endpoint.address == "192.0.2.2"
    assert not observation.ended and b.observers
    assert [m for m, _ in b.log] == ["GET", "PUT", "GET"]  # list, carry over, observe
    b.notify()
    assert (await observation.next(timeout=2)).observe == b.sequence
    assert client.stats.redirects == 1 and client.stats.redirects_followed == 1
    await observation.cancel()
    await client.close()


async def test_redirect_in_a_notification_not_followed_ends_the_observation(
        client_factory: Callable[..., Any], net: Net) -> None:
    a = net.add("dots-a.example", "192.0.2.1")
    client = client_factory(a)
    created = await client.mitigate(SCOPE)
    observation = await client.observe(created.mid)
    a.redirect = ("gone.example", ("192.0.2.99",), 600)  # nothing answers there
    a.notify_redirect()
    note = await observation.next(timeout=3)
    assert note.code is Code.SERVICE_UNAVAILABLE and note.redirect is not None
    assert observation.ended and client.stats.redirects_failed == 1
    await client.close()


async def test_heartbeat_answered_with_a_redirect_moves(
        client_factory: Callable[..., Any], net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a)
    await client.connect()
    a.redirect_to(b)
    client._send_heartbeat(client.clock())  # the periodic one, not a request of a caller
    await asyncio.sleep(0)
    await settle(client)
    assert client.endpoint.address == "192.0.2.2" and client.stats.redirects_followed == 1
    await client.close()


async def test_lost_session_reconnects_to_the_alternate_server_until_the_ttl(
        client_factory: Callable[..., Any], net: Net, clock: FakeClock) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    client = client_factory(a, reconnect=False)
    a.redirect_to(b, max_age=100)
    await client.heartbeat()
    a.redirect = None
    client.session.close("lost")
    assert (await client.heartbeat()).endpoint.address == "192.0.2.2"
    client.session.close("lost")
    clock.now += 101
    assert (await client.heartbeat()).endpoint.address == "192.0.2.1"
    assert client.alternate is None and client.stats.redirect_returns == 1
    await client.close()


async def test_unreachable_alternate_keeps_the_previous_redirect(
        client_factory: Callable[..., Any], net: Net) -> None:
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    c = net.add("dots-c.example", "192.0.2.3")
    client = client_factory(a)
    a.redirect_to(b, max_age=UNTIL_FURTHER_NOTICE)
    await client.heartbeat()
    before = client.follower.current
    c.up = False
    b.redirect_to(c)
    reply = await client.heartbeat()
    assert reply.code is Code.SERVICE_UNAVAILABLE and reply.endpoint.address == "192.0.2.2"
    assert client.follower.current == before and client.stats.redirects_failed == 1
    await client.close()


def test_server_spec_addresses_replace_resolution() -> None:
    from gateway.client.connect import alternate_server, resolve

    spec = alternate_server("dots-b.example", ["192.0.2.2", "2001:db8::2"], 5000,
                            (Transport.UDP,))
    assert spec.reference_identifier == "dots-b.example"
    got = asyncio.run(resolve(spec))
    assert [e.uri for e in got] == ["coaps://[2001:db8::2]:5000", "coaps://192.0.2.2:5000"]
    assert {e.server_name for e in got} == {"dots-b.example"}


async def test_observation_refused_during_a_move_goes_on_after_the_next_one(
        client_factory: Callable[..., Any], net: Net) -> None:
    """B answers the registration made while moving there with a redirect (not followed
    from inside the move); the observation waits and is registered at C, where the loop
    rule sends the client next."""
    a, b = net.add("dots-a.example", "192.0.2.1"), net.add("dots-b.example", "192.0.2.2")
    c = net.add("dots-c.example", "192.0.2.3")
    client = client_factory(a, c)
    created = await client.mitigate(SCOPE)
    observation = await client.observe(created.mid)
    a.redirect_to(b)
    b.redirect_to(a)
    assert (await client.heartbeat()).endpoint.address == "192.0.2.3"
    note = await observation.next(timeout=2)
    assert note.code is Code.CONTENT and note.endpoint.address == "192.0.2.3"
    assert not observation.ended and c.observers and not client._orphans
    await client.close()
