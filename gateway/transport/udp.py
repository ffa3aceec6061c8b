"""UDP sockets that know which local address a datagram arrived on (anycast-ready).

A wildcard socket answers from the wrong source unless the reply names the address the
client targeted, so every socket asks for IP_PKTINFO / IPV6_RECVPKTINFO and replies with
``sendmsg`` carrying that address. IP_FREEBIND lets a socket bind an anycast address before
it exists on the host. SO_REUSEADDR is never set: a second process must not silently take
over the port (it would black-hole the first one's sessions).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import NamedTuple

IP_FREEBIND = 15  # linux/in.h
IPV6_FREEBIND = 78  # linux/in6.h
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
#: Large enough for any UDP datagram, so MSG_TRUNC never fires on a legal one.
MAX_DATAGRAM = 65535
_CMSG_SPACE = socket.CMSG_SPACE(max(struct.calcsize("@i4s4s"), struct.calcsize("@16sI")))


class Address(NamedTuple):
    """A host and port. A named tuple, not a dataclass: two are made for every datagram
    and they key the session table, where a tuple's construction and hash cost a fraction
    of a frozen dataclass's (Python-level __init__ and __hash__)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def key(self) -> bytes:
        """Stable bytes for cookie binding and dictionary keys."""
        return str(self).encode()


class PortInUse(OSError):
    """The address and port are taken by another socket: refuse to start (no takeover)."""


def open_udp_socket(
    host: str, port: int, *, freebind: bool = True, receive_buffer: int = 4 * 1024 * 1024
) -> socket.socket:
    """A non-blocking UDP socket on ``host``:``port`` with PKTINFO and (optionally) FREEBIND."""
    ip = ipaddress.ip_address(host)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            if freebind:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            if freebind:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        except OSError:
            pass  # the kernel caps it at rmem_max; a smaller buffer still works
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(exc.errno, f"UDP {Address(host, port)} is already in use") from None
            raise
        return sock
    except BaseException:
        sock.close()
        raise


_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: an IntFlag's & runs Python code


_new_address = tuple.__new__  # Address(h, p) runs the named tuple's Python-level __new__


def receive(sock: socket.socket) -> tuple[bytes, Address, Address] | None:
    """One datagram with its source and the local address it was sent to.

    Returns None when nothing is pending. Truncated datagrams (larger than MAX_DATAGRAM,
    impossible for UDP but cheap to check) are dropped rather than half-parsed.
    """
    try:
        data, ancillary, flags, source = sock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
    except (BlockingIOError, InterruptedError):
        return None
    remote = _new_address(Address, source if len(source) == 2 else source[:2])
    if flags & _MSG_TRUNC:
        return b"", remote, _local_of(sock, ())
    if len(ancillary) == 1:
        # The one PKTINFO of a datagram: the same few local addresses over and over, so
        # their Address is looked up by the raw control data (keyed with the socket: the
        # port is the socket's) instead of unpacked and formatted each time.
        key = (sock.fileno(), ancillary[0])
        local = _local_cache.get(key)
        if local is None:
            local = _local_of(sock, ancillary)
            if len(_local_cache) >= _LOCAL_CACHE_SIZE:
                _local_cache.clear()
            _local_cache[key] = local
        return data, remote, local
    return data, remote, _local_of(sock, ancillary)


#: PKTINFO control data (with the socket's fd) -> local Address; bounded, and emptied with
#: ``forget`` (an fd number is reused by the next socket, perhaps on another port).
_local_cache: dict[tuple[int, tuple[int, int, bytes]], Address] = {}
_LOCAL_CACHE_SIZE = 1024


def _local_of(sock: socket.socket, ancillary: object) -> Address:
    port = _bound(sock)[1]
    for level, kind, payload in ancillary:  # type: ignore[attr-defined]
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            _ifindex, _spec_dst, addr = struct.unpack("@i4s4s", payload[:12])
            return Address(socket.inet_ntop(socket.AF_INET, addr), port)
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            addr, _ifindex = struct.unpack("@16sI", payload[:20])
            return Address(socket.inet_ntop(socket.AF_INET6, addr), port)
    return Address(_bound(sock)[0], port)


_bound_cache: dict[int, tuple[str, int]] = {}


def _bound(sock: socket.socket) -> tuple[str, int]:
    """getsockname() once per socket, not once per datagram (it is a system call)."""
    fd = sock.fileno()
    bound = _bound_cache.get(fd)
    if bound is None or bound[1] == 0:
        name = sock.getsockname()
        bound = _bound_cache[fd] = (name[0], name[1])
    return bound


def forget(sock: socket.socket) -> None:
    """Drop cached facts about a socket before it is closed (its fd number will be reused)."""
    _bound_cache.pop(sock.fileno(), None)
    _local_cache.clear()


def send(sock: socket.socket, data: bytes, destination: Address, source: Address) -> bool:
    """Send ``data`` from ``source`` (the address the client used); False when the kernel
    buffer is full (the datagram is dropped, as UDP may)."""
    if _bound(sock)[0] == source.host:
        # Bound to that very address: the kernel picks the right source without PKTINFO,
        # and plain sendto is cheaper than sendmsg with ancillary data.
        try:
            sock.sendto(data, (destination.host, destination.port))
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False
    if sock.family == socket.AF_INET6:
        info = struct.pack("@16sI", socket.inet_pton(socket.AF_INET6, source.host), 0)
        ancillary = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, info)]
    else:
        info = struct.pack("@i4s4s", 0, socket.inet_pton(socket.AF_INET, source.host), bytes(4))
        ancillary = [(socket.IPPROTO_IP, IP_PKTINFO, info)]
    try:
        sock.sendmsg([data], ancillary, 0, (destination.host, destination.port))
        return True
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False  # e.g. the anycast address was just removed; the session will time out
