"""A client under attack whose server goes silent (RFC 9132 §4.7), with real processes over
DTLS: it keeps the old session, opens a parallel one, sends its mitigation there, and keeps
whichever session answers. Server A is a ``dots-gateway server`` subprocess; "killed" is
SIGKILL followed by a fresh server on the same port and state directory (its mitigations
restored from SQLite), which is what an anycast client meets when its edge dies and the
route moves; "comes back" is SIGSTOP then SIGCONT."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from gateway.client.role import DotsClient, make_scope
from gateway.dots.codes import Code, Status
from gateway.dots.session_config import SessionParameters
from tests.integration.test_client_role import (
    cert_credentials,
    free_port,
    wait_until,
    write_server_config,
)
from tests.support.daemon import serving

#: Heartbeats every second; the parallel session after 4 unanswered ones. 4 rather than 2
#: leaves a busy machine time to start the replacement server before the client tries.
ATTACK = SessionParameters(heartbeat_interval=1, missing_hb_allowed=4)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    init_dev_pki(directory)
    return directory


async def test_killed_server_is_replaced_by_the_parallel_session(
        pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.client.channel")
    port = free_port()
    (tmp_path / "server").mkdir()
    config = write_server_config(tmp_path / "server", pki, port, transports=("udp",))
    log = tmp_path / "server" / "server.log"
    with serving("server", config, log) as server_a:
        async with DotsClient(cert_credentials(pki), f"coaps://127.0.0.1:{port}",
                              state_dir=tmp_path / "client", preferred_idle=ATTACK,
                              preferred_mitigating=ATTACK, handshake_timeout=3) as client:
            created = await client.mitigate(make_scope(target_prefix=["198.51.100.0/28"]))
            assert created.code is Code.CREATED
            observation = await client.observe(created.mid)
            client.set_under_attack(True)
            assert client.parameters().missing_hb_allowed == 4  # negotiated
            old = client.session
            assert old is not None
            os.kill(server_a.pid, signal.SIGKILL)
            server_a.wait(10)
            with serving("server", config, log):  # same port, same SQLite state
                await wait_until(lambda: client.stats.parallel_promoted == 1, 40,
                                 "the parallel session replacing the silent one")
                assert client.session is not old and client.connected
                assert old.closed and "parallel session" in old.close_reason
                # §4.7: never declared lost; no re-establishment, the parallel session is it.
                assert client.stats.signal_losses == 0
                assert client.stats.parallel_dropped == 0
                text = caplog.text
                events = [getattr(r, "event", None) for r in caplog.records]
                assert [e for e in events if e and e.startswith("upstream.parallel")] == [
                    "upstream.parallel_opening", "upstream.parallel_established",
                    "upstream.parallel_promoted"]  # one event per transition
                # The mitigation was sent again on the parallel session: a refresh (2.04)
                # of the request the new server restored from SQLite.
                assert f"mid={created.mid} answered 2.04" in text, text[-3000:]
                # Observations go on over the new session.
                note = await observation.next(timeout=15)
                assert note.scopes[0].status is Status.ATTACK_MITIGATION_IN_PROGRESS
                assert (await client.get(created.mid, timeout=10)).code is Code.CONTENT
                assert client.sid is not None  # configuration negotiated on it too
                heartbeats = client.stats.heartbeats_answered
                await wait_until(lambda: client.stats.heartbeats_answered > heartbeats + 1, 10,
                                 "heartbeats answered on the new session")


async def test_old_session_coming_back_keeps_it_and_drops_the_parallel_one(
        pki: Path, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "server").mkdir()
    config = write_server_config(tmp_path / "server", pki, port, transports=("udp",))
    log = tmp_path / "server" / "server.log"
    with serving("server", config, log) as server_a:
        async with DotsClient(cert_credentials(pki), f"coaps://127.0.0.1:{port}",
                              state_dir=tmp_path / "client", preferred_idle=ATTACK,
                              preferred_mitigating=ATTACK, handshake_timeout=5) as client:
            created = await client.mitigate(make_scope(target_prefix=["198.51.100.16/28"]))
            assert created.code is Code.CREATED
            observation = await client.observe(created.mid)
            client.set_under_attack(True)
            old = client.session
            os.kill(server_a.pid, signal.SIGSTOP)
            try:
                await wait_until(lambda: client.stats.parallel_attempts == 1, 20,
                                 "a parallel session attempt")
            finally:
                os.kill(server_a.pid, signal.SIGCONT)
            await wait_until(lambda: client.stats.parallel_dropped == 1, 20,
                             "the parallel session being dropped")
            assert client.session is old and client.connected
            assert client.stats.parallel_promoted == 0 and client.stats.signal_losses == 0
            assert client._parallel_session is None
            assert client.stats.sessions == 1
            # The old session carries on: heartbeats and the observation.
            heartbeats = client.stats.heartbeats_answered
            await wait_until(lambda: client.stats.heartbeats_answered > heartbeats + 1, 10,
                             "heartbeats answered on the old session")
            assert (await client.get(created.mid, timeout=10)).code is Code.CONTENT
            assert not observation.ended


async def test_unreachable_server_keeps_the_old_session_and_backs_off(
        pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.client.channel")
    port = free_port()
    (tmp_path / "server").mkdir()
    config = write_server_config(tmp_path / "server", pki, port, transports=("udp",))
    log = tmp_path / "server" / "server.log"
    with serving("server", config, log) as server_a:
        async with DotsClient(cert_credentials(pki), f"coaps://127.0.0.1:{port}",
                              state_dir=tmp_path / "client", preferred_idle=ATTACK,
                              preferred_mitigating=ATTACK, handshake_timeout=2) as client:
            created = await client.mitigate(make_scope(target_prefix=["198.51.100.32/28"]))
            assert created.code is Code.CREATED
            client.set_under_attack(True)
            old = client.session
            os.kill(server_a.pid, signal.SIGKILL)
            server_a.wait(10)
            await wait_until(lambda: client.stats.parallel_failures == 1, 30,
                             "the parallel attempt failing")
            failed = [r for r in caplog.records
                      if getattr(r, "event", None) == "upstream.parallel_failed"]
            assert len(failed) == 1 and failed[0].retry_in >= 59  # §4.7: 60 s floor
            # Nothing else is tried meanwhile; the old session is kept and heartbeated.
            sent = client.stats.heartbeats_sent
            await wait_until(lambda: client.stats.heartbeats_sent > sent + 2, 10,
                             "heartbeats on the old session")
            assert client.stats.parallel_attempts == 1
            assert client.session is old and client.stats.signal_losses == 0
