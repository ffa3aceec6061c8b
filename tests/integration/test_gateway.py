"""The gateway end to end on loopback: DotsClient -> gateway (in this process) -> upstream
``dots-gateway server`` processes, DTLS with certificates on both hops.

Two PKIs, as in a real deployment: the downstream one (the gateway's server certificate and
its client) and the upstream provider's (its server certificate and the certificate it
issued to the gateway). The upstream server's own database shows what it was told: who
sent each request (the gateway's credential), the client's cuid and the inserted cdid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.client.role import DotsClient, make_scope
from gateway.config import load_config
from gateway.daemon import RunningServer, start_server
from gateway.dots.codes import AttackStatus, Code, ConflictCause, Method, Status
from gateway.dots.message import DotsRequest
from gateway.dots.model import ConfigSet, ConfigValue, SignalConfig
from gateway.dots.session_config import SessionParameters
from gateway.dots.uri import Resource, build_path
from gateway.relay.role import GatewayRole
from gateway.relay.startup import NoUpstreamError
from gateway.server.persistence import DATABASE_NAME
from gateway.transport.tls_context import ClientCredentials
from tests.integration.test_client_role import free_port, wait_until
from tests.support.daemon import serving

FAST = SessionParameters(heartbeat_interval=1, missing_hb_allowed=2)
LIMITS = ("heartbeat_interval = { min = 1, max = 240, default = 30 }\n"
          "missing_hb_allowed = { min = 1, max = 20, default = 15 }\n")
PREFIXES = '["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]'


@dataclass
class Pkis:
    down: Path  # the gateway's domain: its server certificate, its client
    up: Path  # the provider's: the upstream server, the certificate of the gateway

    @property
    def client_cuid(self) -> str:
        return cuid_from_certificate((self.down / "client.pem").read_bytes())

    @property
    def gateway_cuid(self) -> str:
        return cuid_from_certificate((self.up / "client.pem").read_bytes())

    def client(self) -> ClientCredentials:
        return ClientCredentials(self.down / "client.pem", self.down / "client.key",
                                 self.down / "ca.pem")


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> Pkis:
    down, up = tmp_path_factory.mktemp("pki-down"), tmp_path_factory.mktemp("pki-up")
    init_dev_pki(down)
    init_dev_pki(up)
    return Pkis(down, up)


# --- upstream servers (processes we can kill) ----------------------------------------------


@dataclass
class Upstream:
    proc: subprocess.Popen[str]
    port: int
    directory: Path

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rows(self) -> list[tuple[str, int, str, str | None]]:
        """(cuid, mid, credential_id, cdid) of the mitigations it saved."""
        db = sqlite3.connect(self.directory / "state" / DATABASE_NAME, timeout=5)
        try:
            return sorted(db.execute("SELECT cuid, mid, credential_id, cdid FROM mitigation"))
        finally:
            db.close()

    def states(self) -> dict[int, str]:
        """mid -> state of the mitigations it saved."""
        db = sqlite3.connect(self.directory / "state" / DATABASE_NAME, timeout=5)
        try:
            return dict(db.execute("SELECT mid, state FROM mitigation"))
        finally:
            db.close()

    def log(self) -> str:
        return (self.directory / "server.log").read_text(errors="replace")


def upstream_config(directory: Path, pkis: Pkis, port: int) -> Path:
    up = pkis.up
    config = directory / "upstream.toml"
    config.write_text(
        f'[general]\nstate_dir = "{directory / "state"}"\nnode_name = "upstream-{port}"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp", "tcp"]\n'
        f'[tls]\nca = "{up / "ca.pem"}"\ncert = "{up / "server.pem"}"\n'
        f'key = "{up / "server.key"}"\n'
        f'[session]\nmax_age = 600\n[session.idle]\n{LIMITS}[session.mitigating]\n{LIMITS}'
        f'[trusted_gateways]\nidentities = ["{pkis.gateway_cuid}"]\n'
        f'[[clients]]\nname = "gateway"\ncuid = "{pkis.gateway_cuid}"\nprefixes = {PREFIXES}\n'
        f'allow_any_cuid = true\n')
    return config


@contextlib.contextmanager
def upstream_server(directory: Path, pkis: Pkis, port: int | None = None) -> Iterator[Upstream]:
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = upstream_config(directory, pkis, port)
    with serving("server", config, directory / "server.log") as proc:
        yield Upstream(proc, port, directory)


# --- the gateway (in this process, so the tests can look inside) ---------------------------


def gateway_config(directory: Path, pkis: Pkis, port: int, upstreams: list[str], *,
                   name: str = "gw", extra: str = "", trusted: list[str] = ()) -> Path:
    down, up = pkis.down, pkis.up
    servers = "".join(
        f'[[upstream]]\nname = "up{i}"\naddress = "{s.rsplit(":", 1)[0]}"\n'
        f'port = {s.rsplit(":", 1)[1]}\nreference_identifier = "localhost"\n'
        for i, s in enumerate(upstreams))
    config = directory / f"{name}.toml"
    config.write_text(
        f'[general]\nmode = "gateway"\nstate_dir = "{directory / name}"\nnode_name = "{name}"\n'
        f'[server]\naddresses = ["127.0.0.1", "::1"]\nport = {port}\n'
        f'transports = ["udp", "tcp"]\n'
        f'[tls]\nca = "{down / "ca.pem"}"\ncert = "{down / "server.pem"}"\n'
        f'key = "{down / "server.key"}"\n'
        f'[session]\nmax_age = 300\n[session.idle]\n{LIMITS}[session.mitigating]\n{LIMITS}'
        f'[trusted_gateways]\nidentities = {list(trusted)!r}\n'.replace("'", '"')
        + f'[[clients]]\nname = "client"\ncuid = "{pkis.client_cuid}"\nprefixes = {PREFIXES}\n'
        f'[gateway]\ncert = "{up / "client.pem"}"\nkey = "{up / "client.key"}"\n'
        f'ca = "{up / "ca.pem"}"\nheartbeat_interval = 1\nmissing_hb_allowed = 2\n'
        f'request_timeout = 6\n{extra}'
        + servers)
    return config


@contextlib.asynccontextmanager
async def gateway(config: Path) -> AsyncIterator[RunningServer]:
    settings = load_config(config)
    running = await start_server(settings)
    try:
        assert isinstance(running.role, GatewayRole)
        yield running
    finally:
        await running.stop()


def relay_of(running: RunningServer) -> Any:
    assert isinstance(running.role, GatewayRole)
    return running.role.relay


@contextlib.asynccontextmanager
async def client_of(pkis: Pkis, port: int, state: Path, **options: Any
                    ) -> AsyncIterator[DotsClient]:
    async with DotsClient(pkis.client(), f"coaps://127.0.0.1:{port}", state_dir=state,
                          request_timeout=15, preferred_idle=FAST,
                          preferred_mitigating=FAST, **options) as client:
        yield client


async def withdrawal_notified(observation: Any) -> None:
    """Wait for the notification of a withdrawal. Notifications before it may repeat the
    current state (the upstream server reports status changes too); it must arrive, as a
    notification (with Observe), within the pacing."""
    for _ in range(5):
        note = await observation.next(timeout=10)
        assert note.code is Code.CONTENT and note.observe is not None
        if note.scopes[0].status is Status.DOTS_CLIENT_WITHDRAWN_MITIGATION:
            return
    raise AssertionError("no notification of the withdrawal")


# --- tests -----------------------------------------------------------------------------------


async def test_relay_inserts_cdid_keeps_cuid_and_per_hop_config(pkis: Pkis, tmp_path: Path
                                                                ) -> None:
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [up.spec])) as gw, \
                client_of(pkis, port, tmp_path / "client") as client:
            relay = relay_of(gw)
            await wait_until(lambda: relay.upstream.connected, 10, "upstream session")

            created = await client.mitigate(make_scope(target_prefix=["192.0.2.0/28"],
                                                       lifetime=600))
            assert created.code is Code.CREATED, created
            assert created.scopes[0].lifetime == 600
            # The upstream server was told: the gateway's credential sent it, for the
            # client's cuid, with the client's cdid (RFC 9132 §4.4.1.2, App. B).
            assert up.rows() == [(pkis.client_cuid, created.mid, pkis.gateway_cuid,
                                  pkis.client_cuid)]
            assert f"cuid={pkis.gateway_cuid}" in up.log()  # its session is the gateway's

            got = await client.get(created.mid)
            assert got.code is Code.CONTENT
            assert got.scopes[0].status is Status.ATTACK_MITIGATION_IN_PROGRESS

            # A cdid sent by the client is not passed on: the gateway's own replaces it.
            path = build_path(Resource.MITIGATE, cdid="forged-cdid", cuid=client.cuid,
                              mid=created.mid + 1)
            body = created.request.payload
            forged = await client._send(DotsRequest(Method.PUT, path, payload=body,
                                                    content_format=271),
                                        confirmable=False, mid=created.mid + 1)
            assert forged.code is Code.CREATED, forged
            assert {row[3] for row in up.rows()} == {pkis.client_cuid}

            # Session configuration is per hop: the client negotiated with the gateway (its
            # max-age 300), the gateway with the upstream server (max-age 600), and GET
            # config from the client is answered by the gateway itself.
            limits = await client.config_get()
            assert limits.code is Code.CONTENT and limits.response.max_age == 300
            assert isinstance(limits.message, SignalConfig)
            upstream_client = relay.upstream
            assert upstream_client.sid is not None
            assert upstream_client.core.config.current[False].heartbeat_interval == 1

            # Heartbeats are per hop: with the upstream server frozen, the client's
            # heartbeats are still answered by the gateway.
            os.kill(up.proc.pid, signal.SIGSTOP)
            try:
                before = client.stats.heartbeats_answered
                await wait_until(lambda: client.stats.heartbeats_answered >= before + 2, 8,
                                 "client heartbeats answered by the gateway")
            finally:
                os.kill(up.proc.pid, signal.SIGCONT)

            withdrawn = await client.withdraw(created.mid)
            assert withdrawn.code is Code.DELETED
            assert relay.table.get(client.cuid, created.mid) is None


async def test_observe_notifications_reach_the_client(pkis: Pkis, tmp_path: Path) -> None:
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [up.spec])) as gw, \
                client_of(pkis, port, tmp_path / "client") as client:
            created = await client.mitigate(make_scope(target_prefix=["198.51.100.0/28"],
                                                       lifetime=600))
            assert created.code is Code.CREATED
            observation = await client.observe(created.mid)
            assert observation.first is not None and observation.first.code is Code.CONTENT
            assert not observation.ended
            assert len(relay_of(gw).observations) == 1
            # A second observer of the same thing shares the upstream observation.
            second = await client.observe(created.mid)
            assert not second.ended and len(relay_of(gw).observations) == 1

            assert (await client.withdraw(created.mid)).code is Code.DELETED
            await withdrawal_notified(observation)

            await second.cancel()
            await observation.cancel()
            await wait_until(lambda: not relay_of(gw).observations, 10,
                             "the upstream observation cancelled")


async def test_gateways_pointed_at_each_other_answer_5_08(pkis: Pkis, tmp_path: Path) -> None:
    # One PKI for this loop: each gateway's upstream certificate is the client one, which
    # the other gateway (and this test's client) authenticate with.
    one, two = free_port(), free_port()
    shared = replace(pkis, down=pkis.up)
    first = gateway_config(tmp_path, shared, one, [f"127.0.0.1:{two}"], name="gw1")
    second = gateway_config(tmp_path, shared, two, [f"127.0.0.1:{one}"], name="gw2")
    async with gateway(first), gateway(second):
        async with DotsClient(shared.client(), f"coaps://127.0.0.1:{one}",
                              state_dir=tmp_path / "client", request_timeout=20) as client:
            reply = await client.mitigate(make_scope(target_prefix=["203.0.113.0/28"],
                                                     lifetime=600))
            assert reply.dotted == "5.08", reply
            listed = reply.diagnostic.removeprefix("hop limit reached:").split()
            # gw1 inserts 16; 16 more hops each decrement it; the 17th gateway on the path
            # gets 1, would send 0, and answers 5.08; each one on the way back adds itself.
            assert listed == ["gw1", "gw2"] * 8 + ["gw1"]


async def test_failover_reinstalls_every_mitigation_and_restart_loses_none(
        pkis: Pkis, tmp_path: Path) -> None:
    with upstream_server(tmp_path / "a", pkis) as a, upstream_server(tmp_path / "b", pkis) as b:
        port = free_port()
        config = gateway_config(tmp_path, pkis, port, [a.spec, b.spec])
        async with gateway(config) as gw, client_of(pkis, port, tmp_path / "client") as client:
            relay = relay_of(gw)
            mids = []
            for prefix in ("192.0.2.64/28", "192.0.2.80/28", "2001:db8:9::/48"):
                reply = await client.mitigate(make_scope(target_prefix=[prefix], lifetime=900))
                assert reply.code is Code.CREATED, reply
                mids.append(reply.mid)
            assert [row[1] for row in a.rows()] == mids and b.rows() == []

            a.proc.kill()  # no close_notify: the gateway finds out from its heartbeats
            a.proc.wait(5)
            # The upstream saves each row before it answers, and the gateway counts the
            # re-installation when the answer arrives: wait for both, not the rows alone.
            await wait_until(lambda: [row[1] for row in b.rows()] == mids
                             and relay.reinstalled == len(mids), 30,
                             "every mitigation re-installed on the second upstream")
            assert {(row[0], row[2], row[3]) for row in b.rows()} == {
                (pkis.client_cuid, pkis.gateway_cuid, pkis.client_cuid)}
            # The client kept its session and sees every request, through the new upstream.
            assert client.stats.sessions == 1 and client.connected
            got = await client.get()
            assert got.code is Code.CONTENT
            assert sorted(s.mid for s in got.scopes) == mids

        # Restart the gateway after the upstream server lost its state: the gateway's
        # saved relay state puts every request back.
        b.proc.terminate()
        b.proc.wait(10)
        (b.directory / "state" / DATABASE_NAME).unlink()
        for suffix in ("-wal", "-shm"):
            (b.directory / "state" / (DATABASE_NAME + suffix)).unlink(missing_ok=True)
        with upstream_server(tmp_path / "b2", pkis, port=b.port) as fresh:
            assert fresh.rows() == []
            config.write_text(config.read_text())  # same file, same state directory
            async with gateway(config) as gw:
                await wait_until(lambda: [row[1] for row in fresh.rows()] == mids, 30,
                                 "every mitigation re-installed after the gateway restart")
                async with client_of(pkis, port, tmp_path / "client") as client:
                    got = await client.get()
                    assert sorted(s.mid for s in got.scopes) == mids


async def test_gateway_own_refusals_say_so(pkis: Pkis, tmp_path: Path) -> None:
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [up.spec])) as gw, \
                client_of(pkis, port, tmp_path / "client") as client:
            # Outside the client's prefixes: the gateway refuses (4.01) before relaying.
            reply = await client.mitigate(make_scope(target_prefix=["10.0.0.0/8"],
                                                     lifetime=600))
            assert reply.code is Code.UNAUTHORIZED and reply.diagnostic.startswith("gateway:")
            # Hop-Limit 1 arriving here would reach 0: 5.08 naming this gateway.
            path = build_path(Resource.MITIGATE, cuid=client.cuid, mid=7)
            request = DotsRequest(Method.GET, path, hop_limit=1)
            reply = await client._send(request, confirmable=False)
            assert reply.dotted == "5.08" and "gw" in reply.diagnostic
            # Upstream errors come back with their code (4.04 for an unknown mid) and a
            # diagnostic naming the hop that produced it (issue 20 §2).
            reply = await client.get(12345)
            assert reply.code is Code.NOT_FOUND
            assert reply.diagnostic.startswith(f"upstream up0 (coaps://127.0.0.1:{up.port}): ")
            assert relay_of(gw).relayed.get("4.04") == 1


async def test_no_upstream_answers_5_03_from_the_gateway(pkis: Pkis, tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    async with gateway(gateway_config(tmp_path, pkis, port, [f"127.0.0.1:{dead}"])), \
            client_of(pkis, port, tmp_path / "client") as client:
        reply = await asyncio.wait_for(
            client.mitigate(make_scope(target_prefix=["192.0.2.0/28"], lifetime=600)), 30)
        assert reply.code is Code.SERVICE_UNAVAILABLE
        assert reply.diagnostic.startswith("gateway:") and reply.response.max_age == 5


async def test_downstream_signal_loss_activates_preconfigured_requests_upstream(
        pkis: Pkis, tmp_path: Path) -> None:
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [up.spec])) as gw:
            client = DotsClient(pkis.client(), f"coaps://127.0.0.1:{port}",
                                state_dir=tmp_path / "client", request_timeout=15,
                                preferred_idle=FAST, preferred_mitigating=FAST, reconnect=False)
            await client.connect()
            try:
                reply = await client.mitigate(make_scope(
                    target_prefix=["203.0.113.128/28"], lifetime=600, trigger_mitigation=False))
                assert reply.code is Code.CREATED, reply
                assert up.states() == {reply.mid: "await-signal-loss"}

                # The client falls silent (nothing it sends arrives, not even close_notify):
                # the gateway declares the signal lost after its heartbeats go unanswered.
                session = client.session
                assert session is not None
                session.connection.transport.sendto = lambda *_args, **_kw: None
                await wait_until(lambda: up.states() == {reply.mid: "mitigating"}, 20,
                                 "the preconfigured request activated upstream")
                record = relay_of(gw).table.get(client.cuid, reply.mid)
                assert record is not None and record.activated_by_loss
            finally:
                await client.close()

        # The client comes back and refreshes its (preconfigured) request: the gateway keeps
        # it active upstream (RFC 9132: only DELETE or the lifetime ends it).
        async with gateway(gateway_config(tmp_path, pkis, port, [up.spec])) as gw, \
                client_of(pkis, port, tmp_path / "client") as client:
            refreshed = await client.mitigate(make_scope(
                target_prefix=["203.0.113.128/28"], lifetime=600, trigger_mitigation=False),
                mid=reply.mid)
            assert refreshed.code is Code.CHANGED, refreshed
            assert up.states() == {reply.mid: "mitigating"}
            assert (await client.withdraw(reply.mid)).code is Code.DELETED


async def test_transports_change_across_the_gateway(pkis: Pkis, tmp_path: Path) -> None:
    """TLS over IPv6 from the client, TLS upstream: each hop has its own transport."""
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        config = gateway_config(tmp_path, pkis, port, [up.spec])
        config.write_text(config.read_text().replace('reference_identifier = "localhost"\n',
                                                     'reference_identifier = "localhost"\n'
                                                     'transport = "tcp"\n'))
        async with gateway(config) as gw, \
                DotsClient(pkis.client(), f"coaps+tcp://[::1]:{port}",
                           state_dir=tmp_path / "client", request_timeout=15) as client:
            created = await client.mitigate(make_scope(target_prefix=["2001:db8:77::/48"],
                                                       lifetime=300))
            assert created.code is Code.CREATED, created
            observation = await client.observe(created.mid)
            assert observation.first is not None and not observation.ended
            upstream = relay_of(gw).upstream
            assert upstream.endpoint is not None and upstream.endpoint.uri.startswith(
                "coaps+tcp://")
            assert (await client.withdraw(created.mid)).code is Code.DELETED
            await withdrawal_notified(observation)


async def test_gateway_mode_with_no_upstream_anywhere_falls_back_only_when_told(
        pkis: Pkis, tmp_path: Path) -> None:
    port = free_port()
    config = gateway_config(tmp_path, pkis, port, [])
    # Only the configured servers count (no DHCP or DNS traffic from a test).
    config.write_text(config.read_text() + '[discovery]\nmechanisms = ["manual"]\n')
    with pytest.raises(NoUpstreamError, match="fallback_to_terminal"):
        await start_server(load_config(config))
    text = config.read_text().replace("[gateway]\n", "[gateway]\nfallback_to_terminal = true\n")
    assert text != config.read_text()
    config.write_text(text)
    running = await start_server(load_config(config))
    try:
        assert not isinstance(running.role, GatewayRole)
        async with client_of(pkis, port, tmp_path / "client") as client:
            reply = await client.mitigate(make_scope(target_prefix=["192.0.2.0/28"],
                                                     lifetime=60))
            assert reply.code is Code.CREATED  # answered by the terminal store
    finally:
        await running.stop()


async def test_large_lists_travel_in_blocks_on_both_hops(pkis: Pkis, tmp_path: Path) -> None:
    """RFC 9132 §4.4.2 / RFC 7959: a client's list of mitigations larger than one datagram
    comes from the upstream server in blocks (the gateway reassembles it) and goes to the
    client in blocks again (the client role reassembles it like the gateway does)."""
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [up.spec])) as gw, \
                client_of(pkis, port, tmp_path / "client") as client:
            mids = []
            for i in range(30):
                reply = await client.mitigate(make_scope(
                    target_prefix=[f"198.51.100.{8 * i}/29"], lifetime=900))
                assert reply.code is Code.CREATED, reply
                mids.append(reply.mid)
            # The client role joins the blocks too (DotsClient, dots-client).
            whole = await client.get()
            assert whole.code is Code.CONTENT and len(whole.response.payload) > 1024
            assert sorted(s.mid for s in whole.scopes) == mids
            # The relay's own view of the upstream list is complete too (reconciliation).
            assert sorted(await relay_of(gw)._present(client.cuid, client.cuid)) == mids


async def test_upstream_answers_reach_the_client_with_code_and_body(pkis: Pkis,
                                                                   tmp_path: Path) -> None:
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        async with gateway(gateway_config(tmp_path, pkis, port, [up.spec])) as gw, \
                client_of(pkis, port, tmp_path / "client") as client:
            high = await client.mitigate(make_scope(target_prefix=["203.0.113.0/26"],
                                                    lifetime=600), mid=500)
            assert high.code is Code.CREATED
            # 4.09 from the upstream server, conflict information and all (§4.4.1.3).
            low = await client.mitigate(make_scope(target_prefix=["203.0.113.0/28"],
                                                   lifetime=600), mid=400)
            assert low.code is Code.CONFLICT and low.conflict is not None
            assert low.conflict.conflict_cause is ConflictCause.OVERLAPPING_TARGETS
            assert low.conflict.conflict_scope is not None
            assert low.conflict.conflict_scope.mid == 500
            assert relay_of(gw).table.get(client.cuid, 400) is None  # nothing recorded
            # An efficacy update is relayed (2.04) and does not replace the request.
            got = await client.get(500)
            efficacy = await client.efficacy_update(500, got.scopes[0],
                                                    AttackStatus.UNDER_ATTACK)
            assert efficacy.code is Code.CHANGED, efficacy
            record = relay_of(gw).table.get(client.cuid, 500)
            assert record is not None and record.body == high.request.payload
            # Session configuration outside the gateway's limits: 4.22 from the gateway
            # itself (config is per hop and never relayed).
            bad = SignalConfig(mitigating_config=ConfigSet(
                heartbeat_interval=ConfigValue(current_value=9999)))
            refused = await client.config_put(bad)
            assert refused.code is Code.UNPROCESSABLE_ENTITY, refused
            assert not refused.diagnostic.startswith("gateway:")  # the per-hop server role's
            assert (await client.withdraw(500)).code is Code.DELETED


async def test_client_domain_gateway_sends_no_cdid_and_resolves_cuid_collisions(
        pkis: Pkis, tmp_path: Path) -> None:
    psk_identity, psk_key = "cpe-client", "0123456789abcdef0123"
    extra = ('domain = "client"\n'
             f'[[psk]]\nidentity = "{psk_identity}"\nkey = "{psk_key}"\n'
             f'[[clients]]\nname = "psk"\npsk_identity = "{psk_identity}"\n'
             f'prefixes = {PREFIXES}\nallow_any_cuid = true\n')
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        config = gateway_config(tmp_path, pkis, port, [up.spec], extra=extra)
        async with gateway(config) as gw, client_of(pkis, port, tmp_path / "c1") as first:
            created = await first.mitigate(make_scope(target_prefix=["192.0.2.96/28"],
                                                      lifetime=600))
            assert created.code is Code.CREATED
            assert up.rows() == [(first.cuid, created.mid, pkis.gateway_cuid, None)]
            # Another client behind the gateway claims the same cuid: the upstream server
            # cannot tell them apart (both come from the gateway), so the gateway refuses
            # (4.09, cuid-collision) and the client takes a fresh cuid (§4.4.1.1).
            psk = ClientCredentials(psk_identity=psk_identity.encode(),
                                    psk_key=psk_key.encode())
            async with DotsClient(psk, f"coaps://127.0.0.1:{port}", state_dir=tmp_path / "c2",
                                  cuid=first.cuid, request_timeout=15) as second:
                reply = await second.mitigate(make_scope(target_prefix=["192.0.2.112/28"],
                                                         lifetime=600))
                assert reply.code is Code.CREATED, reply
                assert second.cuid != first.cuid
            assert relay_of(gw).table.owner_of(first.cuid) == pkis.client_cuid
            assert {row[0] for row in up.rows()} == {first.cuid, second.cuid}
