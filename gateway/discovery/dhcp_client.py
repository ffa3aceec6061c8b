"""The real DHCP exchange: a DHCPINFORM or an Information-request on one interface.

Thin asyncio adapter around ``dhcp_packets``: a UDP socket bound to the client port and to
the interface (SO_BINDTODEVICE, so the request leaves and the reply is taken only there),
bounded retransmission (``attempts`` x ``timeout``), replies of other transactions ignored.
Every outcome is a value: ``DhcpInfo``, or ``LookupFailure`` (no reply, a malformed reply,
the port in use); nothing raises out of here.

DHCPv4: broadcast to 255.255.255.255:67 from 0.0.0.0:68 with ``ciaddr`` set; the server
answers DHCPACK unicast to ciaddr:68 (RFC 2131 §4.3.5). DHCPv6: from port 546 to
ff02::1:2 port 547 on the interface (RFC 8415 §18.2.6); the server answers the source.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
from collections.abc import Callable

from gateway.discovery.dhcp_options import DhcpInfo
from gateway.discovery.dhcp_packets import (
    ALL_DHCP_RELAY_AGENTS_AND_SERVERS,
    V4_CLIENT_PORT,
    V4_SERVER_PORT,
    V6_CLIENT_PORT,
    V6_SERVER_PORT,
    NotOurs,
    build_inform,
    build_information_request,
    parse_inform_reply,
    parse_information_reply,
)
from gateway.discovery.errors import DiscoveryError
from gateway.discovery.interfaces import InterfaceInfo
from gateway.discovery.lookups import FailureKind, LookupFailure

log = logging.getLogger(__name__)
_MAX_DATAGRAM = 65535


def _open(family: int, interface: InterfaceInfo, port: int) -> socket.socket | LookupFailure:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Bound to the interface: the exchange is per interface (seed §5), and with several
        # interfaces each socket only sees its own link's server.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.name.encode())
        if family == socket.AF_INET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind(("0.0.0.0", port))
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, interface.index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::", port, 0, interface.index))
        sock.setblocking(False)
        return sock
    except OSError as exc:
        sock.close()
        what = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        if exc.errno == errno.EPERM or exc.errno == errno.EACCES:
            what = "needs root (or CAP_NET_RAW and CAP_NET_BIND_SERVICE)"
        return LookupFailure(FailureKind.UNAVAILABLE, f"cannot bind UDP port {port} on "
                             f"{interface.name}: {what}")


async def _exchange(
    sock: socket.socket,
    packet: bytes,
    destination: tuple[object, ...],
    parse: Callable[[bytes], DhcpInfo],
    *,
    timeout: float,
    attempts: int,
) -> DhcpInfo | LookupFailure:
    loop = asyncio.get_running_loop()
    last_problem = ""
    for _attempt in range(max(1, attempts)):
        try:
            await loop.sock_sendto(sock, packet, destination)
        except OSError as exc:
            return LookupFailure(FailureKind.UNAVAILABLE, f"send failed: {exc.strerror or exc}")
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                data, _peer = await asyncio.wait_for(loop.sock_recvfrom(sock, _MAX_DATAGRAM), left)
            except TimeoutError:
                break
            except OSError as exc:
                return LookupFailure(FailureKind.UNAVAILABLE, f"receive failed: {exc}")
            try:
                return parse(data)
            except NotOurs:
                continue
            except DiscoveryError as exc:
                # A malformed reply: keep listening, another server may answer properly.
                last_problem = str(exc)
                log.info("discovery: unusable DHCP reply: %s", exc)
    if last_problem:
        return LookupFailure(FailureKind.MALFORMED, last_problem)
    return LookupFailure(FailureKind.NO_REPLY,
                         f"no reply within {attempts} x {timeout:g} s")


async def inform_v4(
    interface: InterfaceInfo,
    *,
    timeout: float,
    attempts: int,
    seed_address_code: int | None = None,
    seed_ri_code: int | None = None,
    rng: Callable[[int], int] = random.getrandbits,
) -> DhcpInfo | LookupFailure:
    """DHCPINFORM on ``interface`` (RFC 2131 §3.4): DOTS options, domain, DNS servers."""
    if not interface.ipv4:
        return LookupFailure(FailureKind.UNAVAILABLE, f"{interface.name} has no IPv4 address")
    extra = tuple(c for c in (seed_address_code, seed_ri_code) if c)
    request = build_inform(rng(32), interface.mac or b"\0" * 6, interface.ipv4[0],
                           extra_codes=extra)
    opened = _open(socket.AF_INET, interface, V4_CLIENT_PORT)
    if isinstance(opened, LookupFailure):
        return opened
    with opened:
        return await _exchange(
            opened, request.packet, ("255.255.255.255", V4_SERVER_PORT),
            lambda data: parse_inform_reply(data, request.xid, seed_address_code=seed_address_code,
                                            seed_ri_code=seed_ri_code),
            timeout=timeout, attempts=attempts,
        )


async def information_request_v6(
    interface: InterfaceInfo,
    *,
    timeout: float,
    attempts: int,
    rng: Callable[[int], int] = random.getrandbits,
) -> DhcpInfo | LookupFailure:
    """Information-request on ``interface`` (RFC 8415 §18.2.6)."""
    if interface.link_local_v6 is None:
        return LookupFailure(FailureKind.UNAVAILABLE,
                             f"{interface.name} has no IPv6 link-local address")
    request = build_information_request(rng(24), interface.mac or b"\0" * 6)
    opened = _open(socket.AF_INET6, interface, V6_CLIENT_PORT)
    if isinstance(opened, LookupFailure):
        return opened
    with opened:
        return await _exchange(
            opened, request.packet,
            (ALL_DHCP_RELAY_AGENTS_AND_SERVERS, V6_SERVER_PORT, 0, interface.index),
            lambda data: parse_information_reply(data, request.transaction_id),
            timeout=timeout, attempts=attempts,
        )
