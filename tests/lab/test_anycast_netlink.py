"""The address holder against a real kernel, in a namespace of its own (``netns=``): create
or adopt the interface, nodad addresses, table-46 routes, repair after outside deletions
(netlink events, not the periodic pass), clean removal, and a clear error for a link kind
the kernel lacks."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator

import pytest

from anycast.netlink import AddressHolder, HolderError
from tests.lab.netns import Lab, cleanup_stale, ip, require_root

pytestmark = [pytest.mark.root, pytest.mark.lab]

ADDRS = (ipaddress.ip_address("192.0.2.46"), ipaddress.ip_address("2001:db8::4646"))


@pytest.fixture
def ns() -> Iterator[str]:
    why = require_root()
    if why:
        pytest.skip(why)
    cleanup_stale()
    with Lab() as lab:
        yield lab.namespace("holder")


def show(ns: str, *args: str) -> str:
    return ip("-n", ns, *args, check=False).stdout


async def until(condition: object, timeout: float = 3.0) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, "timed out"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_holder_keeps_addresses_and_routes_in_place(ns: str) -> None:
    # A long periodic interval: only the netlink events can explain a quick repair.
    holder = AddressHolder("anycast0", "ifb", ADDRS, table=46, netns=ns,
                           reconcile_interval=30.0)
    await holder.start()
    try:
        assert holder.created and holder.healthy
        addrs = show(ns, "addr", "show", "anycast0")
        assert "192.0.2.46/32" in addrs and "2001:db8::4646/128" in addrs and "nodad" in addrs
        assert "UP" in show(ns, "link", "show", "anycast0")
        assert show(ns, "route", "show", "table", "46") == ""
        await holder.set_routes(True)
        assert "192.0.2.46 dev anycast0 proto static" in show(ns, "route", "show", "table", "46")
        assert "2001:db8::4646 dev anycast0" in show(ns, "-6", "route", "show", "table", "46")

        ip("-n", ns, "addr", "del", "2001:db8::4646/128", "dev", "anycast0")
        took = await until(lambda: "2001:db8::4646" in show(ns, "addr", "show", "anycast0"))
        assert took < 1.0
        ip("-n", ns, "route", "flush", "table", "46")
        await until(lambda: "192.0.2.46" in show(ns, "route", "show", "table", "46"))
        ip("-n", ns, "link", "del", "anycast0")
        await until(lambda: "2001:db8::4646" in show(ns, "-6", "route", "show", "table", "46"))
        assert "192.0.2.46/32" in show(ns, "addr", "show", "anycast0")
        assert holder.repairs >= 2  # close changes may be repaired in one pass

        await holder.set_routes(False)
        assert show(ns, "route", "show", "table", "46") == ""
        assert show(ns, "-6", "route", "show", "table", "46") == ""
    finally:
        await holder.close()
    assert "anycast0" not in show(ns, "link", "show")  # we created it, we removed it


async def test_an_existing_interface_is_adopted_and_kept(ns: str) -> None:
    holder = AddressHolder("lo", "dummy", ADDRS, table=46, netns=ns)
    await holder.start()
    try:
        assert not holder.created
        assert "192.0.2.46/32" in show(ns, "addr", "show", "lo")
    finally:
        await holder.close()
    assert "192.0.2.46" not in show(ns, "addr", "show", "lo")
    assert "LOOPBACK" in show(ns, "link", "show", "lo")


async def test_start_removes_routes_a_crashed_run_left(ns: str) -> None:
    ip("-n", ns, "link", "add", "anycast0", "type", "ifb")
    ip("-n", ns, "link", "set", "anycast0", "up")
    ip("-n", ns, "route", "add", "192.0.2.46/32", "dev", "anycast0", "table", "46")
    holder = AddressHolder("anycast0", "ifb", ADDRS, table=46, netns=ns)
    await holder.start()
    try:
        assert show(ns, "route", "show", "table", "46") == ""
    finally:
        await holder.close()


async def test_an_unsupported_link_kind_is_explained(ns: str) -> None:
    ip("-n", ns, "link", "add", "probe0", "type", "dummy", check=False)
    if "probe0" in show(ns, "link", "show"):
        pytest.skip("this kernel has dummy links")
    holder = AddressHolder("anycast0", "dummy", ADDRS, netns=ns)
    with pytest.raises(HolderError, match='interface_kind.*"ifb"'):
        await holder.start()


async def test_a_holder_without_a_route_table_closes_cleanly(ns: str) -> None:
    # The exabgp backend announces through ExaBGP: no table, and close() must not need one
    # (it once failed an assertion there, so the daemon exited 1 after every clean stop).
    holder = AddressHolder("anycast0", "ifb", ADDRS, netns=ns)
    await holder.start()
    try:
        assert "192.0.2.46/32" in show(ns, "addr", "show", "anycast0")
        with pytest.raises(HolderError, match="no route table"):
            await holder.set_routes(True)
    finally:
        await holder.close()
    assert "anycast0" not in show(ns, "link", "show")
