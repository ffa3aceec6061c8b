"""Server-side redirect policy (RFC 9132 §4.6, seed §10): who is sent where, for how long.

Pure logic: the server role asks ``decide()`` for each request with what it knows (did the
session arrive on an anycast address, the client's cuid, the node's session count, whether
the node drains) and gets a ``Redirect`` to answer with (5.03 + ``redirected-signal``,
Max-Age = TTL) or None to serve the request itself.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.dots.model import IPAddress, IPNetwork, RedirectedSignal, check_domain_name

#: Max-Age 2^32-1: use the alternate server until it redirects again (RFC 9132 §4.6).
UNTIL_FURTHER_NOTICE = 2**32 - 1


class AnycastMode(enum.Enum):
    REDIRECT = "redirect"  # seed §10: the default
    KEEP = "keep"  # keep all DOTS communication on anycast


class Reason(enum.Enum):
    ANYCAST = "anycast"
    CAPACITY = "capacity"
    DRAIN = "drain"


@dataclass(frozen=True, slots=True)
class Target:
    """A unicast DOTS server: its name (alt-server, mandatory) and addresses (optional)."""

    name: str
    addresses: tuple[IPAddress, ...] = ()

    def __post_init__(self) -> None:
        check_domain_name(self.name, "alt-server")

    def signal(self) -> RedirectedSignal:
        return RedirectedSignal(self.name, self.addresses)


@dataclass(frozen=True, slots=True)
class Redirect:
    target: Target
    ttl: int
    reason: Reason


@dataclass(frozen=True)
class RedirectPolicy:
    mode: AnycastMode = AnycastMode.REDIRECT
    #: This node's own unicast identity (the RFC 8811 "instance discovery" pattern).
    own: Target | None = None
    #: Other nodes; with ``own`` they share anycast arrivals, each client always sent to the
    #: same one (rendezvous hashing on its cuid).
    pool: tuple[Target, ...] = ()
    #: Static assignments by cuid; they win over the pool.
    static: Mapping[str, Target] = field(default_factory=dict)
    #: Static assignments by the client's source address (longest prefix wins); after the
    #: cuid ones, before the pool.
    static_prefixes: Sequence[tuple[IPNetwork, Target]] = ()
    ttl: int = 3600
    #: Above this many sessions, new sessions are sent elsewhere (0: no limit).
    capacity: int = 0
    #: A draining node is going away: clients stay on the target for the normal TTL (with
    #: Max-Age 0 a client would come straight back and be redirected at every request).
    drain_ttl: int | None = None

    def decide(self, *, on_anycast: bool, cuid: str | None, session_count: int,
               draining: bool, load: Mapping[str, int] | None = None,
               peer: str | None = None) -> Redirect | None:
        if draining:
            target = self._elsewhere(cuid, load)
            ttl = self.ttl if self.drain_ttl is None else self.drain_ttl
            return Redirect(target, ttl, Reason.DRAIN) if target else None
        if self.capacity and session_count > self.capacity:
            target = self._elsewhere(cuid, load)
            if target is not None:
                return Redirect(target, self.ttl, Reason.CAPACITY)
        if on_anycast and self.mode is AnycastMode.REDIRECT:
            target = self._choose(cuid, peer)
            if target is not None:
                return Redirect(target, self.ttl, Reason.ANYCAST)
        return None

    def _choose(self, cuid: str | None, peer: str | None = None) -> Target | None:
        if cuid is not None and cuid in self.static:
            return self.static[cuid]
        if peer is not None and self.static_prefixes:
            by_prefix = self._by_prefix(peer)
            if by_prefix is not None:
                return by_prefix
        candidates = list(self.pool)
        if self.own is not None and all(t.name != self.own.name for t in candidates):
            candidates.append(self.own)  # this node takes its share too
        return rendezvous(candidates, cuid or "") if candidates else None

    def _by_prefix(self, peer: str) -> Target | None:
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return None
        matches = [(net.prefixlen, target) for net, target in self.static_prefixes
                   if net.version == address.version and address in net]
        return max(matches, key=lambda m: m[0])[1] if matches else None

    def _elsewhere(self, cuid: str | None, load: Mapping[str, int] | None) -> Target | None:
        """Another node: the least loaded peer when loads are known, else the hashed one."""
        others = [t for t in self.pool if self.own is None or t.name != self.own.name]
        if not others:
            return None
        if load:
            return min(others, key=lambda t: (load.get(t.name, 0), t.name))
        return rendezvous(others, cuid or "")


def rendezvous(targets: Sequence[Target], key: str) -> Target:
    """Highest-random-weight hashing: stable per key, even spread, minimal reshuffling
    when a node is added or removed."""
    return max(targets, key=lambda t: hashlib.sha256(f"{t.name}|{key}".encode()).digest())


def parse_target(name: str, addresses: Sequence[str] = ()) -> Target:
    return Target(name, tuple(ipaddress.ip_address(a) for a in addresses))
