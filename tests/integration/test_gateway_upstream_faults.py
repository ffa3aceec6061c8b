"""The gateway against upstream servers that misbehave the way real ones did (issue 19 §1):
a mitigation list it cannot read, an Observe registration declined, a restart that leaves
the gateway's session dead without a word, and a cdid from a client that may not send one.

The misbehaving upstream is our own server, in this process, with a hook on what it
answers; the restarted one is a ``dots-gateway server`` process killed without a
close_notify and started again on the same port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from gateway.client.role import make_scope
from gateway.config import load_config
from gateway.daemon import RunningServer, start_server
from gateway.dots.codes import Code, Method
from gateway.dots.message import DotsRequest, DotsResponse
from gateway.dots.uri import Resource, build_path
from tests.integration.test_client_role import free_port, wait_until
from tests.integration.test_gateway import (
    LIMITS,
    Pkis,
    Upstream,
    client_of,
    gateway,
    gateway_config,
    relay_of,
    upstream_config,
)
from tests.support.daemon import serving


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> Pkis:
    down, up = tmp_path_factory.mktemp("pki-down"), tmp_path_factory.mktemp("pki-up")
    init_dev_pki(down)
    init_dev_pki(up)
    return Pkis(down, up)


# --- an upstream server in this process, with a hook on its answers -------------------------

#: (request, the answer the server would give) -> the answer it gives.
Mangle = Callable[[DotsRequest, DotsResponse | None], DotsResponse | None]


@contextlib.asynccontextmanager
async def hooked_upstream(directory: Path, pkis: Pkis) -> AsyncIterator[
        tuple[RunningServer, int, list[Mangle]]]:
    """Our DOTS server, terminal mode; every answer goes through the hooks in the list."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    running = await start_server(load_config(upstream_config(directory, pkis, port)))
    hooks: list[Mangle] = []
    core = running.role.core
    original = core.receive_request

    def receive_request(session: Any, request: DotsRequest, now: float) -> DotsResponse | None:
        response = original(session, request, now)
        for hook in hooks:
            response = hook(request, response)
        return response

    core.receive_request = receive_request  # type: ignore[method-assign]
    try:
        yield running, port, hooks
    finally:
        await running.stop()


def is_mitigation_list(request: DotsRequest) -> bool:
    """A GET of a client's mitigations (no mid): what the gateway reconciles with."""
    return (request.method is Method.GET and request.path[2:3] == ("mitigate",)
            and not any(p.startswith("mid=") for p in request.path))


def status_of(running: RunningServer) -> dict[str, Any]:
    return {name: section() for name, section in running.control.status_sections.items()}


# --- an unreadable answer is 'unknown', not 'none' ------------------------------------------


async def test_unreadable_mitigation_list_keeps_the_records(pkis: Pkis, tmp_path: Path
                                                            ) -> None:
    async with hooked_upstream(tmp_path / "up", pkis) as (up, up_port, hooks):
        port = free_port()
        config = gateway_config(tmp_path, pkis, port, [f"127.0.0.1:{up_port}"])
        async with gateway(config) as gw, client_of(pkis, port, tmp_path / "client") as client:
            relay = relay_of(gw)
            created = await client.mitigate(make_scope(target_prefix=["192.0.2.0/28"],
                                                       lifetime=3600))
            assert created.code is Code.CREATED, created

            # From now on the upstream's lists are 2.05 with a body nobody can decode (as
            # go-dots' were for us); everything else it answers normally.
            listed: list[DotsRequest] = []

            def garbled(request: DotsRequest, response: DotsResponse | None
                        ) -> DotsResponse | None:
                if is_mitigation_list(request) and response is not None \
                        and response.code is Code.CONTENT:
                    listed.append(request)
                    return replace(response, payload=b"\xbf\x01\xff\xff")
                return response

            hooks.append(garbled)
            # A new upstream session (as after an upstream restart): reconciliation reads
            # the list, cannot, and must keep what the gateway answers for.
            before = relay.reconciliations
            upstream = relay.upstream
            assert upstream.session is not None
            upstream.session.close("test: a new session")
            await wait_until(lambda: relay.reconciliations > before and listed, 30,
                             "a reconciliation on the new session")
            await wait_until(lambda: relay._reconcile_task is None, 30,
                             "the reconciliation done")
            record = relay.table.get(client.cuid, created.mid)
            assert record is not None and record.confirmed, "record dropped on an unreadable list"
            assert (client.cuid, created.mid) in up.role.core.store._records
            assert relay.unreadable >= 1
            text = gw.metrics.render()
            assert "dots_gateway_relay_unreadable_answers_total" in text

            # The check is retried: once the list is readable again, it settles.
            hooks.remove(garbled)
            seen = len(listed)
            await wait_until(lambda: relay.rechecks_pending == 0, 60,
                             "the retried check settled")
            assert len(listed) == seen  # not garbled any more, and not sent garbled again
            record = relay.table.get(client.cuid, created.mid)
            assert record is not None and record.confirmed


# --- Observe declined upstream is not claimed downstream ------------------------------------


async def test_observe_declined_upstream_is_not_claimed_downstream(pkis: Pkis, tmp_path: Path
                                                                   ) -> None:
    async with hooked_upstream(tmp_path / "up", pkis) as (up, up_port, _hooks):
        # The upstream answers the registration but keeps no observation (RFC 7641 §4.1:
        # a server may decline; go-dots' first answer never carries Observe).
        up.role._observe = lambda *_args: None  # type: ignore[method-assign]
        port = free_port()
        config = gateway_config(tmp_path, pkis, port, [f"127.0.0.1:{up_port}"])
        async with gateway(config) as gw, client_of(pkis, port, tmp_path / "client") as client:
            created = await client.mitigate(make_scope(target_prefix=["198.51.100.0/28"],
                                                       lifetime=600))
            assert created.code is Code.CREATED
            observation = await client.observe(created.mid)
            first = observation.first
            assert first is not None and first.code is Code.CONTENT
            assert first.observe is None, "Observe claimed downstream, declined upstream"
            assert observation.ended
            relay = relay_of(gw)
            assert not relay.observations
            role = gw.role
            assert all(not s.observations for s in role.sessions.values())


# --- a dead upstream is noticed without waiting for missing-hb-allowed heartbeats ------------


def slow_heartbeats(config: Path) -> None:
    """The gateway's heartbeats as a real deployment's: 15 x 60 s before they say anything."""
    text = config.read_text()
    config.write_text(text.replace("heartbeat_interval = 1\nmissing_hb_allowed = 2\n",
                                   "heartbeat_interval = 60\nmissing_hb_allowed = 15\n"))


def upstream_with_quick_refresh(directory: Path, pkis: Pkis, port: int) -> Path:
    """A config that makes the gateway refresh its session configuration every couple of
    seconds, with CON retransmission short enough for a test (1 s, 2 retransmissions)."""
    config = upstream_config(directory, pkis, port)
    quick = ("heartbeat_interval = { min = 15, max = 240, default = 60 }\n"
             "missing_hb_allowed = { min = 1, max = 20, default = 15 }\n"
             "max_retransmit = { min = 2, max = 2, default = 2 }\n"
             "ack_timeout = { min = 1.0, max = 1.0, default = 1.0 }\n")
    session = f"[session]\nmax_age = 600\n[session.idle]\n{LIMITS}[session.mitigating]\n{LIMITS}"
    text = config.read_text()
    assert session in text
    config.write_text(text.replace(session, f"[session]\nmax_age = 3\n[session.idle]\n{quick}"
                                            f"[session.mitigating]\n{quick}"))
    return config


async def test_restarted_upstream_is_noticed_by_the_config_refresh(pkis: Pkis, tmp_path: Path
                                                                   ) -> None:
    directory = tmp_path / "up"
    directory.mkdir()
    up_port = free_port()
    config = upstream_with_quick_refresh(directory, pkis, up_port)
    with serving("server", config, directory / "server.log") as proc:
        up = Upstream(proc, up_port, directory)
        port = free_port()
        gw_config = gateway_config(tmp_path, pkis, port, [up.spec])
        slow_heartbeats(gw_config)
        async with gateway(gw_config) as gw:
            relay = relay_of(gw)
            upstream = relay.upstream
            await wait_until(lambda: upstream.connected and upstream.sid is not None, 20,
                             "upstream session configured")
            assert upstream.core.heartbeat.missing_hb_allowed == 15
            await wait_until(lambda: upstream.stats.config_refreshes >= 1, 20,
                             "a first configuration refresh")
            sessions = upstream.stats.sessions

            # The upstream restarts without a close_notify: our DTLS session is gone there
            # and its records are dropped; only silence comes back.
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            with serving("server", config, directory / "server.log"):
                # Heartbeats would take 15 x 60 s; the unanswered CON refresh says it within
                # a refresh period and the CoAP retransmissions (~3 + 7 s here).
                await wait_until(lambda: upstream.stats.sessions > sessions, 60,
                                 "a new upstream session after the restart")
                status = status_of(gw)["upstreams"]
                assert status["connected"] is True
                assert "configuration refresh" in (status["last_error"] or "")
                assert status["last_error_age"] is not None
                assert "next_attempt_in" in status


# --- a cdid from a client that may not send one ---------------------------------------------


async def test_cdid_from_an_untrusted_client_is_logged_once_and_counted(
        pkis: Pkis, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with hooked_upstream(tmp_path / "up", pkis) as (_up, up_port, _hooks):
        port = free_port()
        config = gateway_config(tmp_path, pkis, port, [f"127.0.0.1:{up_port}"])
        async with gateway(config) as gw, client_of(pkis, port, tmp_path / "client") as client:
            caplog.set_level(logging.INFO, logger="gateway.relay")
            for mid in (1, 2):
                path = build_path(Resource.MITIGATE, cdid="forged-cdid", cuid=client.cuid,
                                  mid=mid)
                reply = await client._send(DotsRequest(Method.GET, path), confirmable=False,
                                           mid=mid)
                assert reply.code is Code.NOT_FOUND, reply
            lines = [r for r in caplog.records if "forged-cdid" in r.getMessage()]
            assert len(lines) == 1, [r.getMessage() for r in lines]
            text = gw.metrics.render()
            assert "dots_gateway_relay_cdid_ignored_total 2\n" in text
