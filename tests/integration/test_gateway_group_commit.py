"""Group commit of the gateway's relay state (issue 21 §3), end to end: a real gateway (in
this process) relaying for a real DTLS client to a real upstream ``dots-gateway server``.
Concurrent relayed PUTs and DELETEs are all answered, each after its record change is
fsynced, and they share fsyncs: the relay database counts fewer fsyncs than saves. And with
commits no longer fsynced one by one, a file system that turns read-only under the gateway
(a real ext4 error, root) still never gets a request acknowledged that is not on disk."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway.client.role import make_scope
from gateway.dots.codes import Code
from gateway.relay.store import DATABASE_NAME
from tests.integration.test_client_role import free_port, wait_until
from tests.integration.test_fault_injection import (
    CREATED,
    UNAVAILABLE,
    break_ext4,
    client,
    ext4,
    gateway_pair,
    needs_root,
)
from tests.integration.test_gateway import (
    Pkis,
    client_of,
    gateway,
    gateway_config,
    pkis,  # noqa: F401 (the fixture)
    relay_of,
    upstream_server,
)

#: Concurrent requests: distinct /28s, so that none replaces another upstream (§4.4.1).
PREFIXES = [f"192.0.2.{16 * i}/28" for i in range(16)] + [
    f"198.51.100.{16 * i}/28" for i in range(8)]


def counter(text: str, name: str, database: str) -> float:
    match = re.search(rf'^{name}{{database="{database}"}} (\S+)$', text, re.MULTILINE)
    assert match is not None, f"{name} for {database} not in the metrics"
    return float(match.group(1))


async def test_concurrent_relayed_requests_share_fsyncs(pkis: Pkis,  # noqa: F811
                                                        tmp_path: Path) -> None:
    with upstream_server(tmp_path / "a", pkis) as up:
        port = free_port()
        config = gateway_config(tmp_path, pkis, port, [up.spec])
        async with gateway(config) as gw, client_of(pkis, port, tmp_path / "client") as client:
            relay = relay_of(gw)
            await wait_until(lambda: relay.upstream.connected, 10, "upstream session")
            database = relay.database
            saves, fsyncs = database.saves, database.fsyncs

            replies = await asyncio.gather(*(
                client.mitigate(make_scope(target_prefix=[prefix], lifetime=600))
                for prefix in PREFIXES))
            assert [r.code for r in replies] == [Code.CREATED] * len(PREFIXES), replies
            mids = sorted(r.mid for r in replies)
            assert [row[1] for row in up.rows()] == mids
            # Each new request saves twice (before it goes upstream, then its acceptance),
            # and every answer waited for an fsync that covered its saves.
            assert database.saves - saves >= 2 * len(PREFIXES)
            assert not database.unsynced
            put_fsyncs = database.fsyncs - fsyncs
            assert 1 <= put_fsyncs < database.saves - saves, (put_fsyncs, database.saves)

            # On disk for another reader (what a restarted gateway loads).
            db = sqlite3.connect(tmp_path / "gw" / DATABASE_NAME, timeout=5)
            try:
                saved = sorted(m for (m,) in db.execute(
                    "SELECT mid FROM relayed WHERE confirmed = 1"))
            finally:
                db.close()
            assert saved == mids

            withdrawn = await asyncio.gather(*(client.withdraw(mid) for mid in mids))
            assert [r.code for r in withdrawn] == [Code.DELETED] * len(mids), withdrawn
            assert len(relay.table) == 0  # the upstream may keep them active-but-terminating

            text = gw.metrics.render()
            total_saves = counter(text, "dots_gateway_state_saves_total", "relay")
            total_fsyncs = counter(text, "dots_gateway_state_fsyncs_total", "relay")
            assert total_saves == database.saves and total_fsyncs == database.fsyncs
            assert 1 <= total_fsyncs < total_saves, (total_fsyncs, total_saves)
            print(f"relay database: {total_saves:.0f} saves, {total_fsyncs:.0f} fsyncs for "
                  f"{len(PREFIXES)} concurrent PUTs then as many DELETEs")


@pytest.mark.root
@needs_root
async def test_gateway_on_a_file_system_turned_read_only_acknowledges_nothing_unsaved(
        pkis: Pkis, tmp_path: Path) -> None:  # noqa: F811
    """After the ext4 error, a relayed PUT is refused with 5.03 (its commit fails) or, had
    its commit reached the page cache and its fsync failed, the gateway stops with exit
    status 74 before answering; never 2.01. What was acknowledged before is all there after
    a restart on the repaired file system."""
    state = tmp_path / "gwstate"
    image = tmp_path / "disk.img"
    with ext4(image, state):
        async with gateway_pair(tmp_path, pkis, gateway_state=state) as (gw, _up, book, port):
            c = await client(port, pkis.down)
            for mid in range(1, 5):
                assert (await book.put(c, mid)).code == CREATED
            break_ext4(state)
            for mid in range(5, 8):
                try:
                    reply = await c.ask(3, book.path(mid), book.body(mid), timeout=15)
                except TimeoutError:
                    reply = None
                book.record(mid, reply)
                if reply is None:
                    break
                assert reply.code == UNAVAILABLE, f"mid {mid}: {reply.code:#x} read-only"
            assert gw.proc is not None
            stopped = gw.proc.poll() is not None
            if stopped:
                assert gw.proc.returncode == 74, gw.log_text()[-2000:]
                assert "fsync failed" in gw.log_text()
                gw.stop()
            else:
                await book.check(c, "gateway state read-only")
                gw.kill9()
            c.close()
            subprocess.run(["umount", str(state)], check=True)
            subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, check=False)
            subprocess.run(["mount", "-o", "loop", str(image), str(state)], check=True)
            gw.start()
            c = await client(port, pkis.down)
            await book.check(c, "gateway restarted after its file system turned read-only")
            c.close()
            print("read-only: the gateway " + ("stopped (exit 74)" if stopped else
                                               "answered 5.03"))
