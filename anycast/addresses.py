"""Which local addresses are this node's anycast service addresses (pure).

``is_anycast(local)`` tells, for a session's local address (what the client targeted: the
PKTINFO destination of a datagram or ``getsockname()`` of an accepted connection), whether
the client reached the node over anycast or over one of its unicast addresses. The server
role and the redirect policy ask it: a session on an anycast address may move to another
node with the next route change, a unicast one stays.

Standard library only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_prefix(address: IPAddress) -> str:
    """``192.0.2.46/32``, ``2001:db8::4646/128``: the route an anycast node announces."""
    return f"{address}/{address.max_prefixlen}"


def _parse(local: object) -> IPAddress | None:
    """An address from what transports hand out: an ``Address`` (``.host``), a
    ``(host, port, ...)`` tuple, an ipaddress object or a string (``[v6]:port`` too)."""
    if isinstance(local, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return local
    host = getattr(local, "host", None)
    if host is None and isinstance(local, tuple) and local:
        host = local[0]
    if host is None:
        host = str(local)
        if host.startswith("[") and "]" in host:
            host = host[1:host.index("]")]
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
    host = str(host).split("%", 1)[0]  # scope id of a link-local address
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 clients this way
    return address


#: Local addresses whose classification is kept (a server binds a handful).
_CLASSIFIER_CACHE = 256


def anycast_classifier(addresses: Iterable[IPAddress]) -> Callable[[object], bool]:
    """``is_anycast(local) -> bool`` for the configured anycast addresses."""
    anycast = frozenset(addresses)
    # The anycast manager asks this for every session on each look (session_split), and
    # parsing an address is ~2 us: 25% of an edge's CPU while it held 20,000 sessions. A
    # server has a few local addresses, so their answers are kept (bounded all the same).
    answers: dict[object, bool] = {}

    def is_anycast(local: object) -> bool:
        try:
            return answers[local]
        except (KeyError, TypeError):  # new, or not hashable
            pass
        answer = _parse(local) in anycast
        try:
            if len(answers) >= _CLASSIFIER_CACHE:
                answers.clear()
            answers[local] = answer
        except TypeError:
            pass
        return answer

    return is_anycast
