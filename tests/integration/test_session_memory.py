"""A closed session is freed by reference counting, without the cyclic garbage collector.

The handler's session layers point back at the DTLS connection; while the connection kept
its handler after closing, every closed session (~24 objects) waited for a full garbage
collection, and those stalled the event loop for up to a second at 10,000 sessions
(issue 21's relay bench). The collector is switched off here, so anything left in a
cycle would stay.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

from gateway.testing.embedded import EmbeddedServer
from tests.integration.test_daemon import heartbeat
from tests.support.daemon import open_session


async def test_a_closed_dtls_session_is_freed_without_the_garbage_collector() -> None:
    async with EmbeddedServer(transports=("udp",)) as server:
        dtls = server.running.dtls
        assert dtls is not None
        conn, replies = await open_session(server.port_udp, server.credentials.ca.parent)
        assert await heartbeat(conn, replies, 1) == 0x44  # 2.04
        (server_side,) = dtls.sessions.values()
        handler = server_side.handler
        assert handler is not None
        refs = [weakref.ref(server_side), weakref.ref(server_side.session), weakref.ref(handler)]
        del server_side, handler
        gc.disable()
        try:
            conn.close()
            for _ in range(100):  # the close_notify reaches the server
                if not dtls.sessions:
                    break
                await asyncio.sleep(0.05)
            assert not dtls.sessions
            await asyncio.sleep(0.1)  # callbacks scheduled by the close have run
            assert [ref() for ref in refs] == [None, None, None]
        finally:
            gc.enable()
