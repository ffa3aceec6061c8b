"""``dots-gateway status`` shows what is left (issue 20 item 11), against the real daemon: a
mitigation's remaining lifetime, cut to its active-but-terminating period once withdrawn
(the old code kept showing the full lifetime of a withdrawn mitigation, ~3600 s instead of
at most 120), "indefinite" for lifetime -1, and per session the time since the client's
last message and before its signal would be declared lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.udp_codec import decode_udp, encode_udp
from gateway.dots.codec import json_to_cbor
from tests.integration.test_operations import Daemon, dev_daemon, dots_gateway, heartbeat
from tests.support.daemon import open_session

PUT, DELETE = 3, 4
CREATED, DELETED = 65, 66  # 2.01, 2.02


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with dev_daemon(tmp_path) as running:
        yield running


async def request(conn: Any, replies: asyncio.Queue[bytes], mid: int, code: int,
                  path: tuple[str, ...], payload: bytes = b"") -> int:
    msg = CoapMessage.request(code, path, content_format=271 if payload else None,
                              payload=payload)
    token = mid.to_bytes(2, "big")
    conn.send(encode_udp(CoapMessage(MessageType.CON, code, mid, token, msg.options,
                                     msg.payload)))
    while True:  # skip what is not our answer (a server heartbeat, say)
        reply = decode_udp(await asyncio.wait_for(replies.get(), 10))
        if reply.token == token:
            return reply.code


def mitigation(cuid: str, mid: int) -> tuple[str, ...]:
    return (".well-known", "dots", "mitigate", f"cuid={cuid}", f"mid={mid}")


def body(prefix: str, lifetime: int) -> bytes:
    return json_to_cbor({"ietf-dots-signal-channel:mitigation-scope": {"scope": [
        {"target-prefix": [prefix], "lifetime": lifetime}]}})


async def status(daemon: Daemon, *extra: str) -> str:
    code, out, err = await dots_gateway("status", "--socket", str(daemon.socket), *extra)
    assert code == 0, err
    return out


async def test_status_shows_what_is_left(daemon: Daemon) -> None:
    conn, replies = await open_session(daemon.port, daemon.pki)
    try:
        assert await request(conn, replies, 1, PUT, mitigation(daemon.cuid, 1),
                             body("2001:db8:1::/48", 3600)) == CREATED
        assert await request(conn, replies, 2, PUT, mitigation(daemon.cuid, 2),
                             body("2001:db8:2::/48", -1)) == CREATED
        assert await request(conn, replies, 3, DELETE, mitigation(daemon.cuid, 1)) == DELETED
        assert await heartbeat(conn, replies, 4) == 68

        state = json.loads(await status(daemon, "--json"))
        rows = {row["mid"]: row for row in state["mitigations"]["list"]}
        # Withdrawn while active: it runs for the active-but-terminating period (120 s).
        assert rows[1]["status"] == "dots-client-withdrawn-mitigation"
        assert 0 < rows[1]["lifetime"] <= 120, rows[1]
        assert rows[2]["lifetime"] == -1
        [session] = state["sessions"]["list"]
        # Defaults: heartbeat-interval 30 s, missing-hb-allowed 15 (RFC 9132 §4.5 / App. C).
        assert 0 <= session["idle"] <= 60
        assert 450 - 60 <= session["lost_in"] <= 450

        text = await status(daemon)
        lines = text.splitlines()
        header = next(line for line in lines if line.strip().startswith("CUID"))
        column = header.index("LIFETIME")
        cells = {line.split()[1]: line[column:].split()[0] for line in
                 lines[lines.index(header) + 1:] if line.strip() and line.split()[0] ==
                 daemon.cuid}
        assert cells["2"] == "indefinite"
        assert cells["1"].endswith("s") and cells["1"] != "-1", text
        assert "LOST_IN" in text and "7m" in text, text
    finally:
        conn.close()
