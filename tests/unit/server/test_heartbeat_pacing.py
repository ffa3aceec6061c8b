"""The server's heartbeats due at one tick leave a slice per loop turn (heartbeat_pacing)."""

from __future__ import annotations

import asyncio

from gateway.server.heartbeat_pacing import PER_TURN, HeartbeatPacer


async def test_a_tick_of_heartbeats_leaves_in_slices_with_other_work_in_between() -> None:
    sent: list[tuple[str, int]] = []
    pacer = HeartbeatPacer(lambda session_id, _status: sent.append(("hb", session_id)))
    for session_id in range(3 * PER_TURN + 5):
        pacer.add(session_id, True)
    loop = asyncio.get_running_loop()
    # Stands for a request read between slices: it must not wait for every heartbeat.
    loop.call_soon(lambda: sent.append(("request", -1)))
    pacer.start()
    assert len(sent) == PER_TURN  # the first slice at once
    for _ in range(10):  # bounded: four slices in all
        await asyncio.sleep(0)
    assert len(pacer) == 0
    assert [s for kind, s in sent if kind == "hb"] == list(range(3 * PER_TURN + 5))
    assert sent.index(("request", -1)) == PER_TURN


async def test_a_tick_during_a_drain_joins_the_queue_without_a_second_drain() -> None:
    sent: list[int] = []
    pacer = HeartbeatPacer(lambda session_id, _status: sent.append(session_id))
    for session_id in range(PER_TURN + 1):
        pacer.add(session_id, False)
    pacer.start()
    pacer.add(1000, False)
    pacer.start()  # a drain is under way: nothing more now
    assert sent == list(range(PER_TURN))
    for _ in range(5):
        await asyncio.sleep(0)
    assert sent == [*range(PER_TURN + 1), 1000]


async def test_cancel_drops_what_is_queued() -> None:
    sent: list[int] = []
    pacer = HeartbeatPacer(lambda session_id, _status: sent.append(session_id))
    for session_id in range(2 * PER_TURN):
        pacer.add(session_id, True)
    pacer.start()
    pacer.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert sent == list(range(PER_TURN)) and len(pacer) == 0
