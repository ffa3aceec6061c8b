"""The anycast address holder: the only pyroute2 user.

``AddressHolder`` puts the anycast /32 and /128 on a holder interface (created with the
configured kind, ``dummy`` in production, or adopted when a link of that name exists, e.g.
``lo``), with ``nodad`` so an IPv6 address is usable at once, and keeps them there while the
process runs: a separate netlink socket watches address, link and route events and any
deletion triggers a reconcile; a periodic reconcile backs it up. It also owns the routes of
the ``kernel-table`` announcement (one per address in a dedicated kernel table that BIRD
learns), so one writer, under one lock, changes this node's netlink state.

``close()`` removes the routes and the addresses (and the interface when this process
created it). A crash skips that: see deploy/README.md for the ``ExecStopPost`` guard.

Network-namespace aware: ``netns`` opens the sockets in a named namespace (the namespace
must exist; tests use it, the daemon runs inside its namespace and passes None).

pyroute2 0.9 forks a helper for each netns socket and stops it with SIGTERM, which would
run the daemon's SIGTERM handler; ``disable_mp_signal`` turns that off (anycast-lab.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Iterable
from typing import Any

import pyroute2  # type: ignore[import-untyped]
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD  # type: ignore[import-untyped]

from anycast.addresses import IPAddress, host_prefix
from anycast.errors import AnycastError

pyroute2.config.disable_mp_signal = True

log = logging.getLogger(__name__)

IFF_UP = 0x1
RT_SCOPE_NOWHERE = 255
#: Events after which the holder looks again (our own adds cause none of these).
_WATCHED = frozenset({"RTM_DELADDR", "RTM_DELLINK", "RTM_DELROUTE", "RTM_NEWLINK"})
_ROUTE_PROTO = "static"  # BIRD's kernel protocol learns it ("learn" skips only its own)


class HolderError(AnycastError):
    """The anycast addresses or routes could not be put in place (start-up fails)."""


class AddressHolder:
    """The anycast addresses on one interface, kept present while the process runs."""

    def __init__(
        self,
        interface: str,
        kind: str,
        addresses: Iterable[IPAddress],
        *,
        table: int | None = None,
        netns: str | None = None,
        reconcile_interval: float = 5.0,
    ) -> None:
        self.interface = interface
        self.kind = kind
        self.addresses = tuple(addresses)
        self.table = table
        self.netns = netns
        self.reconcile_interval = reconcile_interval
        self.created = False  # the interface is ours to delete
        self.routes_wanted = False
        self.healthy = False  # the last reconcile left every address in place
        self.repairs = 0  # changes reconcile had to make after start-up
        self._ipr: AsyncIPRoute | None = None
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create or adopt the interface, add the addresses, remove stale routes of ours
        (left by a crash), then watch. Raises HolderError."""
        try:
            self._ipr = await self._open()
            async with self._lock:
                await self._reconcile(initial=True)
        except (NetlinkError, OSError) as exc:
            await self._close_sockets()
            raise HolderError(self._explain(exc)) from None
        except BaseException:
            await self._close_sockets()
            raise
        self.healthy = True
        self._tasks = [asyncio.create_task(self._watch(), name="anycast-netlink-watch"),
                       asyncio.create_task(self._keeper(), name="anycast-netlink-keeper")]

    async def close(self) -> None:
        """Withdraw the routes, remove the addresses (and the interface if we made it)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._ipr is None:
            return
        try:
            async with self._lock:
                self.routes_wanted = False
                index = await self._index()
                if index is not None:
                    if self.table is not None:  # the exabgp backend has no table
                        await self._apply_routes(index, want=False)
                    for address in self.addresses:
                        await self._ignore(errno.EADDRNOTAVAIL, self._ipr.addr(
                            "del", index=index, address=str(address),
                            prefixlen=address.max_prefixlen))
                    if self.created:
                        await self._ignore(errno.ENODEV, self._ipr.link("del", index=index))
                log.info("anycast addresses removed from %s", self.interface)
        except (NetlinkError, OSError) as exc:
            log.error("anycast cleanup on %s failed: %s", self.interface, exc)
        finally:
            self.healthy = False
            await self._close_sockets()

    # --- routes (kernel-table announcement) --------------------------------------------------

    async def set_routes(self, announced: bool) -> None:
        """Add (True) or remove (False) one route per address in ``table``; idempotent."""
        if self.table is None or self._ipr is None:
            raise HolderError("no route table configured for this holder")
        async with self._lock:
            self.routes_wanted = announced
            index = await self._index()
            if index is None:
                self._dirty.set()  # the keeper recreates the link, then the routes
                raise HolderError(f"interface {self.interface} is gone")
            await self._apply_routes(index, want=announced)

    async def routes_present(self) -> set[str]:
        if self._ipr is None or self.table is None:
            return set()
        async with self._lock:
            return await self._routes()

    # --- reconcile ---------------------------------------------------------------------------

    async def reconcile(self) -> list[str]:
        """Put back whatever is missing; the list of repairs made (logged)."""
        async with self._lock:
            return await self._reconcile()

    async def _reconcile(self, *, initial: bool = False) -> list[str]:
        assert self._ipr is not None
        repairs: list[str] = []
        index = await self._index()
        if index is None:
            index = await self._create_link()
            repairs.append(f"created {self.kind} interface" if initial
                           else "interface recreated")
        elif initial:
            log.info("anycast interface %s exists: adopted (never deleted by us)",
                     self.interface)
        link = (await _collect(self._ipr.link("get", index=index)))[0]
        if not link["flags"] & IFF_UP:
            await self._ipr.link("set", index=index, state="up")
            repairs.append("interface set up")
        present = {(m.get("address"), m["prefixlen"])
                   for m in await _collect(self._ipr.addr("dump", index=index))}
        for address in self.addresses:
            if (str(address), address.max_prefixlen) not in present:
                await self._ipr.addr("replace", index=index, address=str(address),
                                     prefixlen=address.max_prefixlen, flags=IFA_F_NODAD)
                repairs.append(f"added {host_prefix(address)}")
        if self.table is not None:
            repairs += await self._apply_routes(index, want=self.routes_wanted)
        self.healthy = True
        if repairs and not initial:
            self.repairs += 1
            log.warning("anycast holder repaired %s: %s", self.interface, ", ".join(repairs))
        elif repairs:
            log.info("anycast holder %s: %s", self.interface, ", ".join(repairs))
        return repairs

    async def _apply_routes(self, index: int, *, want: bool) -> list[str]:
        assert self._ipr is not None and self.table is not None
        present = await self._routes()
        changes = []
        for address in self.addresses:
            dst = host_prefix(address)
            if want and dst not in present:
                await self._ipr.route("replace", dst=dst, oif=index, table=self.table,
                                      proto=_ROUTE_PROTO)
                changes.append(f"route {dst} table {self.table} added")
            elif not want and dst in present:
                # RT_SCOPE_NOWHERE matches any scope, as `ip route del` does: a route
                # someone added by hand ("scope link") is ours to remove too.
                await self._ignore(errno.ESRCH, self._ipr.route(
                    "del", dst=dst, table=self.table, scope=RT_SCOPE_NOWHERE))
                changes.append(f"route {dst} table {self.table} removed")
        return changes

    async def _routes(self) -> set[str]:
        assert self._ipr is not None
        found = set()
        for m in await _collect(self._ipr.route("dump", table=self.table)):
            if m.get("table") == self.table and m.get("dst"):
                found.add(f"{m.get('dst')}/{m['dst_len']}")
        return found

    # --- watching ----------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Netlink events: a deletion touching us marks the holder dirty at once."""
        try:
            monitor = await self._open()
        except (NetlinkError, OSError) as exc:
            log.warning("anycast netlink monitor unavailable (%s); periodic checks only", exc)
            return
        try:
            await monitor.bind()
            while True:
                # get() ends after each batch the socket delivered: ask again.
                received = 0
                async for message in monitor.get():
                    received += 1
                    if message.get("event") in _WATCHED:
                        self._dirty.set()
                if not received:
                    await asyncio.sleep(0.1)  # never spin on a socket that yields nothing
        finally:
            monitor.close()

    async def _keeper(self) -> None:
        """The one loop that repairs: after an event (debounced) or every interval."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.reconcile_interval)
                await asyncio.sleep(0.02)  # a burst of events (link deleted) -> one pass
            self._dirty.clear()
            try:
                await self.reconcile()
            except (NetlinkError, OSError) as exc:
                self.healthy = False
                log.error("anycast holder %s cannot be repaired: %s", self.interface,
                          self._explain(exc))

    # --- helpers -----------------------------------------------------------------------------

    async def _open(self) -> AsyncIPRoute:
        if self.netns is None:
            ipr = AsyncIPRoute()
        else:
            ipr = AsyncIPRoute(netns=self.netns, flags=0)  # flags=0: never create it
        await ipr.setup_endpoint()
        return ipr

    async def _index(self) -> int | None:
        assert self._ipr is not None
        found = await self._ipr.link_lookup(ifname=self.interface)
        return int(found[0]) if found else None

    async def _create_link(self) -> int:
        assert self._ipr is not None
        await self._ipr.link("add", ifname=self.interface, kind=self.kind)
        self.created = True
        index = await self._index()
        if index is None:
            raise HolderError(f"interface {self.interface} vanished after it was created")
        return index

    @staticmethod
    async def _ignore(code: int, request: Any) -> None:
        """Await a netlink request, ignoring one errno (already gone is fine)."""
        try:
            await request
        except NetlinkError as exc:
            if exc.code != code:
                raise

    async def _close_sockets(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _explain(self, exc: BaseException) -> str:
        code = getattr(exc, "code", None) or getattr(exc, "errno", None)
        if code == errno.EOPNOTSUPP:
            return (f"cannot create interface {self.interface!r} of kind {self.kind!r}: this "
                    "kernel does not support that link type (set anycast.interface_kind, "
                    "e.g. \"ifb\", or create the interface beforehand)")
        if code == errno.EPERM:
            return "netlink changes need CAP_NET_ADMIN (run as root or grant the capability)"
        return f"netlink: {exc}"


async def _collect(request: Any) -> list[Any]:
    """The messages of a request: pyroute2 answers dumps with an async generator and some
    other requests with a list."""
    result = await request
    if hasattr(result, "__aiter__"):
        return [m async for m in result]
    return list(result)
