"""The DotsClient library against the real ``dots-gateway server`` process on loopback.

One server per module (plus dedicated ones where a test stops the server, changes its
transports or reads its log): DTLS with certificates, DTLS with PSK and TLS, over IPv4 and
IPv6; session configuration, the mitigation life cycle with Observe, lifetime expiry,
conflicts and cuid collisions, heartbeats in both directions, Happy Eyeballs, NON
retransmission, mid persistence, and loss detection with resumption.

The server helpers here are also used by ``test_dots_client_cli.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.client.connect import Transport
from gateway.client.role import DotsClient, make_scope, new_cuid
from gateway.client.state import STATE_FILE
from gateway.coap.message import CoapMessage
from gateway.dots.codes import AttackStatus, Code, ConflictCause, Status
from gateway.dots.model import SignalConfig
from gateway.dots.session_config import SessionParameters
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind
from tests.support.daemon import serving

ROOT = Path(__file__).resolve().parents[2]
#: Heartbeats every second, loss after two missed ones: fast enough for tests.
FAST = SessionParameters(heartbeat_interval=1, missing_hb_allowed=2)
PEER_SILENT = "heartbeat server: await-response -> peer-silent"

# --- the server under test -------------------------------------------------------------------


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 and ::1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
            port = int(probe.getsockname()[1])
        sockets = []
        try:
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(family, kind)
                    sockets.append(s)
                    s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port")


def read_psk(pki: Path) -> tuple[str, str]:
    data = json.loads((pki / "psk.json").read_text())
    return data["identity"], data["key"]


def cert_credentials(pki: Path) -> ClientCredentials:
    return ClientCredentials(pki / "client.pem", pki / "client.key", pki / "ca.pem")


def psk_credentials(pki: Path) -> ClientCredentials:
    identity, key = read_psk(pki)
    return ClientCredentials(psk_identity=identity.encode(), psk_key=key.encode())


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    pki: Path
    log: Path

    def uri(self, scheme: str = "coaps", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


def write_server_config(directory: Path, pki: Path, port: int, *,
                        transports: tuple[str, ...] = ("udp", "tcp"), max_age: int = 3600,
                        level: str = "info") -> Path:
    """A terminal-mode server on 127.0.0.1 and ::1 that lets clients negotiate heartbeats
    down to 1 s, knows the dev certificate client and the dev PSK client (which may use any
    cuid, like a gateway, so that it can collide with the certificate client's)."""
    identity, key = read_psk(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    prefixes = '["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]'
    limits = ("heartbeat_interval = { min = 1, max = 240, default = 30 }\n"
              "missing_hb_allowed = { min = 1, max = 20, default = 15 }\n")
    config = directory / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{directory / "state"}"\n'
        f'[logging]\nlevel = "{level}"\n'
        f'[server]\naddresses = ["127.0.0.1", "::1"]\nport = {port}\n'
        f'transports = {json.dumps(list(transports))}\n'
        f'[tls]\nca = "{pki / "ca.pem"}"\ncert = "{pki / "server.pem"}"\n'
        f'key = "{pki / "server.key"}"\n'
        f'[session]\nmax_age = {max_age}\n[session.idle]\n{limits}'
        f'[session.mitigating]\n{limits}'
        f'[[psk]]\nidentity = "{identity}"\nkey = "{key}"\n'
        f'[[clients]]\nname = "dev-cert"\ncuid = "{cuid}"\nprefixes = {prefixes}\n'
        f'fqdns = ["example.com"]\n'
        f'[[clients]]\nname = "dev-psk"\npsk_identity = "{identity}"\nprefixes = {prefixes}\n'
        f'allow_any_cuid = true\n')
    return config


@contextlib.contextmanager
def running_server(directory: Path, pki: Path, **options: Any) -> Iterator[Server]:
    """``dots-gateway server`` as a subprocess; ready once it prints its addresses."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = write_server_config(directory, pki, port, **options)
    log = directory / "server.log"
    log.write_text("")
    with serving("server", config, log) as proc:
        yield Server(proc, port, pki, log)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


@pytest.fixture(scope="module")
def server(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("server"), pki) as running:
        yield running


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One state directory per credential for the module: mids stay monotonic per cuid
    across tests, as they would for one real client."""
    return {"cert": tmp_path_factory.mktemp("cert-state"),
            "psk": tmp_path_factory.mktemp("psk-state")}


def credentials(kind: str, pki: Path) -> ClientCredentials:
    return cert_credentials(pki) if kind == "cert" else psk_credentials(pki)


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.05)


# --- the mitigation life cycle over every transport ------------------------------------------


LIFECYCLE = [
    ("coaps", "cert", "127.0.0.1", "192.0.2.0/28"),
    ("coaps", "cert", "::1", "2001:db8:1::/48"),
    ("coaps", "psk", "127.0.0.1", "192.0.2.16/28"),
    ("coaps", "psk", "::1", "2001:db8:2::/48"),
    ("coaps+tcp", "cert", "127.0.0.1", "192.0.2.32/28"),
    ("coaps+tcp", "cert", "::1", "2001:db8:3::/48"),
    ("coaps+tcp", "psk", "::1", "2001:db8:4::/48"),
]


@pytest.mark.parametrize(("scheme", "kind", "host", "prefix"), LIFECYCLE,
                         ids=[f"{s}-{k}-{'v6' if ':' in h else 'v4'}" for s, k, h, _ in LIFECYCLE])
async def test_mitigation_life_cycle(server: Server, states: dict[str, Path], scheme: str,
                                     kind: str, host: str, prefix: str) -> None:
    async with DotsClient(credentials(kind, server.pki), server.uri(scheme, host),
                          state_dir=states[kind], request_timeout=10) as client:
        assert client.endpoint is not None and client.endpoint.address == host
        assert client.endpoint.transport is (Transport.UDP if scheme == "coaps"
                                             else Transport.TCP)
        assert client.sid is not None  # negotiated on connect

        # Session configuration: GET the limits, PUT a new sid (2.01), GET it (values adopted).
        limits, put, negotiated = await client.negotiate_config()
        assert (limits.code, put.code, negotiated.code) == (Code.CONTENT, Code.CREATED,
                                                            Code.CONTENT)
        assert isinstance(limits.message, SignalConfig) and limits.response.max_age == 3600
        idle = limits.message.idle_config
        assert idle is not None and idle.heartbeat_interval is not None
        assert idle.heartbeat_interval.min_value == 1
        assert put.request.path[-1] == f"sid={client.sid}" and put.confirmable

        created = await client.mitigate(make_scope(target_prefix=[prefix], lifetime=600))
        assert created.code is Code.CREATED, created
        assert created.scopes[0].mid == created.mid and created.scopes[0].lifetime == 600
        assert created.request.path[-2:] == (f"cuid={client.cuid}", f"mid={created.mid}")

        got = await client.get(created.mid)
        assert got.code is Code.CONTENT
        assert got.scopes[0].status is Status.ATTACK_MITIGATION_IN_PROGRESS
        assert [str(p) for p in got.scopes[0].target_prefix] == [prefix]

        observation = await client.observe(created.mid)
        assert observation.first is not None and observation.first.code is Code.CONTENT
        assert not observation.ended

        efficacy = await client.efficacy_update(created.mid, got.scopes[0],
                                                AttackStatus.UNDER_ATTACK)
        assert efficacy.code is Code.CHANGED, efficacy
        assert efficacy.request.if_match == (b"",)

        withdrawn = await client.withdraw(created.mid)
        assert withdrawn.code is Code.DELETED

        note = await observation.next(timeout=8)  # the server paces notifications (3 s)
        assert note.code is Code.CONTENT and note.observe is not None
        assert note.scopes[0].status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION

        after = await client.get(created.mid)  # active-but-terminating (§4.4.4)
        assert after.scopes[0].status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION
        assert 0 < (after.scopes[0].lifetime or 0) <= 120
        await observation.cancel()
        assert observation.ended


async def test_lifetime_expiry_ends_the_request(server: Server, states: dict[str, Path]) -> None:
    async with DotsClient(cert_credentials(server.pki), server.uri(), state_dir=states["cert"],
                          negotiate=False) as client:
        created = await client.mitigate(make_scope(target_prefix=["198.51.100.0/28"],
                                                   lifetime=2))
        assert created.code is Code.CREATED and created.scopes[0].lifetime == 2
        observation = await client.observe(created.mid)
        note = await observation.next(timeout=6)
        assert note.scopes[0].status is Status.ATTACK_MITIGATION_TERMINATED
        assert note.scopes[0].lifetime == 0
        assert observation.ended  # that was the last notification for this mid
        gone = await client.get(created.mid)
        assert gone.code is Code.NOT_FOUND and "mid" in gone.diagnostic


async def test_server_ends_observation_of_a_removed_request_visibly(
        server: Server, states: dict[str, Path]) -> None:
    async with DotsClient(cert_credentials(server.pki), server.uri(), state_dir=states["cert"],
                          negotiate=False) as client:
        created = await client.mitigate(make_scope(target_prefix=["198.51.100.16/28"],
                                                   lifetime=1))
        observation = await client.observe(created.mid)
        note = await observation.next(timeout=6)
        assert note.observe is None or note.code is Code.NOT_FOUND


# --- conflicts -------------------------------------------------------------------------------


async def test_lower_mid_overlapping_a_higher_one_is_a_conflict(
        server: Server, states: dict[str, Path]) -> None:
    async with DotsClient(cert_credentials(server.pki), server.uri("coaps", "::1"),
                          state_dir=states["cert"], negotiate=False) as client:
        high = await client.mitigate(make_scope(target_prefix=["203.0.113.0/26"]), mid=500)
        assert high.code is Code.CREATED
        low = await client.mitigate(make_scope(target_prefix=["203.0.113.0/28"]), mid=400)
        assert low.code is Code.CONFLICT
        conflict = low.conflict
        assert conflict is not None
        assert conflict.conflict_cause is ConflictCause.OVERLAPPING_TARGETS
        assert conflict.conflict_scope is not None and conflict.conflict_scope.mid == 500
        assert [str(p) for p in conflict.conflict_scope.target_prefix] == ["203.0.113.0/28"]
        still = await client.get(500)
        assert still.scopes[0].status is Status.ATTACK_MITIGATION_IN_PROGRESS
        assert (await client.withdraw(500)).code is Code.DELETED


async def test_cuid_collision_takes_a_new_cuid_and_resends(server: Server, tmp_path: Path,
                                                           states: dict[str, Path]) -> None:
    """The PSK client borrows the certificate client's cuid (RFC 9132 §4.4.1.1): 4.09 with
    cause cuid-collision, a new UUID-based cuid, the request sent once more: 2.01."""
    cert_cuid = cuid_from_certificate((server.pki / "client.pem").read_bytes())
    async with DotsClient(cert_credentials(server.pki), server.uri(), state_dir=states["cert"],
                          negotiate=False) as owner:
        assert owner.cuid == cert_cuid
        assert (await owner.mitigate(make_scope(target_prefix=["203.0.113.64/28"]))).ok
    state = tmp_path / "psk"
    async with DotsClient(psk_credentials(server.pki), server.uri(), state_dir=state,
                          cuid=cert_cuid, negotiate=False) as borrower:
        reply = await borrower.mitigate(make_scope(target_prefix=["203.0.113.80/28"]))
        assert reply.code is Code.CREATED, reply
        assert borrower.cuid != cert_cuid and len(borrower.cuid) == 22
        assert f"cuid={borrower.cuid}" in reply.request.path
        assert (await borrower.withdraw(reply.mid or 0)).code is Code.DELETED
    # The replacement is kept: the cuid SHOULD stay stable (§4.4.1.1).
    again = DotsClient(psk_credentials(server.pki), server.uri(), state_dir=state,
                       cuid=cert_cuid)
    assert again.cuid == borrower.cuid


# --- mid persistence -------------------------------------------------------------------------


async def test_mids_stay_monotonic_across_client_instances(server: Server,
                                                           tmp_path: Path) -> None:
    creds, cuid, prefix = psk_credentials(server.pki), new_cuid(), ["203.0.113.128/26"]
    state = tmp_path / "state"
    async with DotsClient(creds, server.uri(), state_dir=state, cuid=cuid,
                          negotiate=False) as first:
        one = await first.mitigate(make_scope(target_prefix=prefix))
    async with DotsClient(creds, server.uri("coaps+tcp"), state_dir=state, cuid=cuid,
                          negotiate=False) as second:
        two = await second.mitigate(make_scope(target_prefix=prefix))
    assert one.code is Code.CREATED and two.code is Code.CREATED  # higher mid supersedes
    assert two.mid is not None and one.mid is not None and two.mid > one.mid
    assert json.loads((state / STATE_FILE).read_text())["next_mid"] == two.mid + 1
    # A client that lost its state starts again at 0: the server refuses the lower mid,
    # and the client learns the mid it must exceed from the conflict-scope.
    async with DotsClient(creds, server.uri(), state_dir=tmp_path / "lost", cuid=cuid,
                          negotiate=False) as amnesic:
        refused = await amnesic.mitigate(make_scope(target_prefix=prefix))
        assert refused.code is Code.CONFLICT and refused.mid == 0
        assert refused.conflict is not None and refused.conflict.conflict_scope is not None
        assert refused.conflict.conflict_scope.mid == two.mid
        healed = await amnesic.mitigate(make_scope(target_prefix=prefix))
        assert healed.code is Code.CREATED and (healed.mid or 0) > two.mid
        assert (await amnesic.withdraw(healed.mid or 0)).ok


# --- Happy Eyeballs --------------------------------------------------------------------------


async def test_happy_eyeballs_prefers_udp_over_ipv6_and_caches_it(server: Server,
                                                                  tmp_path: Path) -> None:
    creds = cert_credentials(server.pki)
    async with DotsClient(creds, f"localhost:{server.port}", state_dir=tmp_path,
                          negotiate=False) as client:
        assert client.endpoint is not None
        assert (client.endpoint.transport, client.endpoint.address) == (Transport.UDP, "::1")
        assert (await client.heartbeat()).code is Code.CHANGED
    async with DotsClient(creds, f"localhost:{server.port}", state_dir=tmp_path,
                          negotiate=False) as cached:
        assert list(cached.stats.attempts) == [f"coaps://[::1]:{server.port}"]


async def test_happy_eyeballs_falls_back_to_tcp_when_udp_is_closed(
        pki: Path, tmp_path: Path) -> None:
    with running_server(tmp_path / "server", pki, transports=("tcp",)) as tcp_only:
        started = time.monotonic()
        async with DotsClient(cert_credentials(pki), f"localhost:{tcp_only.port}",
                              state_dir=tmp_path, negotiate=False) as client:
            elapsed = time.monotonic() - started
            assert client.endpoint is not None
            assert (client.endpoint.transport, client.endpoint.address) == (Transport.TCP,
                                                                             "::1")
            assert list(client.stats.attempts)[:3] == [
                f"coaps://[::1]:{tcp_only.port}", f"coaps://127.0.0.1:{tcp_only.port}",
                f"coaps+tcp://[::1]:{tcp_only.port}"]
            assert (await client.heartbeat()).code is Code.CHANGED
        assert elapsed < 3  # closed UDP ports answer with ICMP: no waiting for timeouts


# --- heartbeats, refresh, retransmission, loss -----------------------------------------------


class DeafClient(DotsClient):
    """Leaves the server's heartbeats unanswered (negative control)."""

    def request_received(self, session: Any, message: CoapMessage, key: Any,
                         now: float) -> CoapMessage | None:
        return None


async def test_heartbeats_both_ways_and_config_refresh(pki: Path, tmp_path: Path) -> None:
    with running_server(tmp_path / "server", pki, max_age=2, level="debug") as hb_server:
        async with DotsClient(cert_credentials(pki), hb_server.uri(), state_dir=tmp_path,
                              preferred_idle=FAST, preferred_mitigating=FAST) as client:
            assert client.parameters().heartbeat_interval == 1  # negotiated
            await asyncio.sleep(4.5)
            stats = client.stats
            assert stats.server_heartbeats >= 3  # the server's PUT /hb reached us...
            assert stats.heartbeats_sent >= 3 and stats.heartbeats_answered >= 3
            assert stats.config_refreshes >= 1  # Max-Age 2: re-GET config/sid before it
            assert client.connected and stats.signal_losses == 0
        # ...and the server saw our 2.04s: it never found us silent.
        assert PEER_SILENT not in hb_server.log_text()
        async with DeafClient(cert_credentials(pki), hb_server.uri(), state_dir=tmp_path,
                              preferred_idle=FAST, preferred_mitigating=FAST) as deaf:
            await wait_until(lambda: PEER_SILENT in hb_server.log_text(), 8,
                             "the server noticing unanswered heartbeats")
            assert deaf.connected  # our own heartbeats are still answered


async def test_unanswered_non_request_is_sent_again_after_3_s(
        server: Server, states: dict[str, Path]) -> None:
    async with DotsClient(cert_credentials(server.pki), server.uri(), state_dir=states["cert"],
                          negotiate=False) as client:
        server.pause()
        try:
            started = time.monotonic()
            pending = asyncio.ensure_future(client.get(timeout=12))
            await wait_until(lambda: client.stats.retransmissions == 1, 5, "a retransmission")
            assert time.monotonic() - started >= 2.9  # §4.4: one NON per 3 s at most
        finally:
            server.resume()
        reply = await asyncio.wait_for(pending, 10)
        assert reply.ok or reply.code is Code.NOT_FOUND
        assert client.stats.retransmissions == 1


async def test_signal_loss_is_detected_and_the_session_resumed(pki: Path,
                                                               tmp_path: Path) -> None:
    with running_server(tmp_path / "server", pki) as loss_server:
        async with DotsClient(cert_credentials(pki), loss_server.uri(), state_dir=tmp_path,
                              preferred_idle=FAST, preferred_mitigating=FAST,
                              handshake_timeout=5) as client:
            created = await client.mitigate(make_scope(target_prefix=["198.51.100.64/28"]))
            observation = await client.observe(created.mid)
            loss_server.pause()
            try:
                await wait_until(lambda: client.stats.signal_losses == 1, 8, "loss detection")
                assert not client.connected
            finally:
                loss_server.resume()
            await wait_until(lambda: client.connected and client.stats.sessions == 2, 10,
                             "re-establishment")
            assert client.stats.resumed_sessions == 1  # §4.7: resumption first
            # The observation was registered again on the new session.
            note = await observation.next(timeout=5)
            assert note.scopes[0].status is Status.ATTACK_MITIGATION_IN_PROGRESS
            assert (await client.get(created.mid)).code is Code.CONTENT
            assert client.sid is not None  # negotiated again on the new session


# --- bugs in other modules -------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("kind", [Kind.DTLS, Kind.TLS])
async def test_cancelled_connect_closes_its_socket(pki: Path, kind: Kind) -> None:
    from gateway.transport.dtls_client import connect_dtls
    from gateway.transport.tls_stream import connect_tls

    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind is Kind.DTLS
                           else socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    if kind is Kind.TLS:
        silent.listen()
    connect = connect_dtls if kind is Kind.DTLS else connect_tls
    context = ClientContext(kind, cert_credentials(pki))
    leaked: list[Any] = []
    try:
        before = open_fds()
        task = asyncio.ensure_future(connect("127.0.0.1", silent.getsockname()[1], context,
                                             lambda _data: None, timeout=5,
                                             on_lost=leaked.append))
        await asyncio.sleep(0.3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)
        after = open_fds()
    finally:
        silent.close()
        # Clean up what the bug leaves behind, so that the leak does not fail other tests.
        for connection in _open_transports():
            connection.close()
            if connection.established.done() and not connection.established.cancelled():
                connection.established.exception()  # retrieved: no "never retrieved" noise
        await asyncio.sleep(0.05)
    assert after == before


def _open_transports() -> list[Any]:
    import gc

    from gateway.transport.dtls_client import ClientConnection

    found = []
    for obj in gc.get_objects():
        if isinstance(obj, ClientConnection) and not obj.closed:
            found.append(obj)
    return found


# --- socket-free checks of the client's own logic ----------------------------------------------


def test_candidates_follow_the_rfc_9132_order() -> None:
    from gateway.client.connect import ServerSpec, order_candidates

    spec = ServerSpec("dots.example", 4646, server_name="dots.example")
    got = [e.uri for e in order_candidates(spec, ["192.0.2.1", "2001:db8::1", "192.0.2.1"])]
    assert got == ["coaps://[2001:db8::1]:4646", "coaps://192.0.2.1:4646",
                   "coaps+tcp://[2001:db8::1]:4646", "coaps+tcp://192.0.2.1:4646"]


@pytest.mark.parametrize(("text", "host", "port", "transports"), [
    ("coaps://[::1]:5000", "::1", 5000, (Transport.UDP,)),
    ("coaps+tcp://dots.example", "dots.example", 4646, (Transport.TCP,)),
    ("192.0.2.1:7", "192.0.2.1", 7, (Transport.UDP, Transport.TCP)),
    ("localhost", "localhost", 4646, (Transport.UDP, Transport.TCP)),
])
def test_server_uris(text: str, host: str, port: int,
                     transports: tuple[Transport, ...]) -> None:
    from gateway.client.connect import parse_server

    spec = parse_server(text)
    assert (spec.host, spec.port, spec.transports) == (host, port, transports)


@pytest.mark.parametrize("text", ["coap://h", "https://h", "coaps://h/path", "coaps://:1",
                                  "coaps://h:99999"])
def test_bad_server_uris(text: str) -> None:
    from gateway.client.connect import parse_server

    with pytest.raises(ValueError):
        parse_server(text)


async def test_happy_eyeballs_staggers_attempts_and_closes_the_extra_winner() -> None:
    from gateway.client.connect import Endpoint, happy_eyeballs

    endpoints = [Endpoint(Transport.UDP, "::1", 1, "x"), Endpoint(Transport.UDP, "127.0.0.1", 1,
                                                                  "x"),
                 Endpoint(Transport.TCP, "::1", 1, "x")]
    started: dict[str, float] = {}
    closed: list[str] = []
    t0 = time.monotonic()

    async def attempt(endpoint: Endpoint) -> str:
        started[endpoint.uri] = time.monotonic() - t0
        if endpoint.address == "::1" and endpoint.transport is Transport.UDP:
            await asyncio.sleep(0.3)  # slow first candidate: the second one overtakes it
            return "slow"
        if endpoint.transport is Transport.TCP:
            raise ConnectionRefusedError("closed")
        await asyncio.sleep(0.01)
        return "fast"

    winner, result = await happy_eyeballs(endpoints, attempt, 0.05, close=closed.append)
    assert (winner, result) == (endpoints[1], "fast")
    assert 0.04 <= started[endpoints[1].uri] < 0.2  # started one attempt delay later
    assert endpoints[2].uri not in started or started[endpoints[2].uri] >= 0.05
    assert closed == []  # the slow attempt was cancelled, nothing succeeded twice


async def test_under_attack_switches_pacing_parameters_and_refresh(pki: Path) -> None:
    from gateway.client.connect import ATTACK_ATTEMPT_DELAY

    client = DotsClient(cert_credentials(pki), "localhost:1")
    client.core.config.current[True] = SessionParameters(heartbeat_interval=20)
    client.sid, client.core.config.refresh_at = 1, client.clock() + 100
    assert client._refresh_due_at() is not None
    client.set_under_attack(True)
    assert client.attempt_delay == ATTACK_ATTEMPT_DELAY  # RFC 9132 §4.3: 100 ms
    assert client.parameters().heartbeat_interval == 20  # mitigating-config (§4.5)
    assert client._refresh_due_at() is None  # §4.5.3: no refresh during an attack
    assert client.core.heartbeat.under_attack  # §4.7: no loss declared, keep the session


async def test_redirect_is_surfaced_to_the_caller(pki: Path) -> None:
    from gateway.client.connect import Endpoint
    from gateway.dots.codec import encode_message
    from gateway.dots.model import RedirectedSignal

    seen: list[Any] = []
    client = DotsClient(cert_credentials(pki), "localhost:1", on_redirect=seen.append)
    request = client.core.retrieve(1)
    body = encode_message(RedirectedSignal("alt.example", ()))
    answer = CoapMessage.request(1, ()).response(int(Code.SERVICE_UNAVAILABLE), payload=body,
                                                 content_format=271, max_age=600)
    reply = client._reply(request, answer, Endpoint(Transport.UDP, "::1", 1, "x"), 1)
    assert reply.code is Code.SERVICE_UNAVAILABLE and reply.dotted == "5.03"
    assert reply.redirect is not None and reply.redirect.alt_server == "alt.example"
    assert reply.response.max_age == 600  # the redirect's TTL
    assert seen == [reply] and client.last_redirect is reply and client.stats.redirects == 1
