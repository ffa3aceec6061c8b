"""What the DOTS client role hands to its callers: replies, observations, scope builders.

``Reply`` pairs a request with the server's answer as the core interpreted it (``Outcome``:
code, decoded body, conflict-information, redirect). ``Observation`` is an async iterator of
the notifications of one observed GET. ``make_scope`` and ``request_scope`` build the single
scope entry of a mitigation request, the latter from what a GET returned (an efficacy update
must repeat the original parameters, RFC 9132 §4.4.3).

No I/O here beyond an asyncio queue; the role owns sessions and sending.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.client.connect import Endpoint, NetworkError
from gateway.coap.codes import format_code
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block
from gateway.dots.client import Outcome
from gateway.dots.codes import Code, Method, Status
from gateway.dots.errors import DotsUsageError
from gateway.dots.filters import AclActivation, with_acl_list
from gateway.dots.message import DotsRequest, DotsResponse
from gateway.dots.model import (
    ConflictInformation,
    Message,
    MitigationScope,
    PortRange,
    RedirectedSignal,
    Scope,
    parse_prefix,
)

#: RFC 9132 §4.4.1.1: the RECOMMENDED lifetime (and App. C default).
DEFAULT_LIFETIME = 3600


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer from the server: a response, or a notification of an observation."""

    request: DotsRequest
    response: DotsResponse
    outcome: Outcome
    endpoint: Endpoint
    #: The CoAP code as received (``outcome.code`` is the nearest DOTS code if unknown).
    raw_code: int
    #: The mid of a mitigation request, when the request named one.
    mid: int | None = None
    #: The Observe sequence number of a notification (None for plain responses).
    observe: int | None = None
    confirmable: bool = False
    #: The CoAP token of the exchange (an observation's, for notifications).
    token: bytes = b""

    @property
    def code(self) -> Code:
        return self.outcome.code

    @property
    def dotted(self) -> str:
        """The code in the RFC's notation, e.g. ``4.09``."""
        return format_code(self.raw_code)

    @property
    def ok(self) -> bool:
        return self.outcome.ok

    @property
    def message(self) -> Message | None:
        return self.outcome.message

    @property
    def diagnostic(self) -> str:
        return self.outcome.diagnostic

    @property
    def conflict(self) -> ConflictInformation | None:
        return self.outcome.conflict

    @property
    def redirect(self) -> RedirectedSignal | None:
        """A 5.03 with ``redirected-signal`` (RFC 9132 §4.6) that could not be followed
        (loop, no alternate reachable, or met while connecting). The TTL is
        ``response.max_age``."""
        return self.outcome.redirect

    @property
    def scopes(self) -> tuple[Scope, ...]:
        message = self.outcome.message
        return message.scope if isinstance(message, MitigationScope) else ()

    def raise_for_status(self) -> Reply:
        if not self.ok:
            raise DotsErrorResponse(self)
        return self


class DotsErrorResponse(Exception):
    """A 4.xx/5.xx answer, for callers that prefer exceptions (``Reply.raise_for_status``)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.dotted} {reply.diagnostic}".rstrip())
        self.reply = reply


def coap_request(request: DotsRequest, token: bytes = b"") -> CoapMessage:
    return CoapMessage.request(int(request.method), request.path, query=request.query,
                               content_format=request.content_format,
                               observe=request.observe, if_match=request.if_match,
                               hop_limit=request.hop_limit, payload=request.payload,
                               block2=None if request.block2 is None
                               else Block(request.block2[0], False, request.block2[1]),
                               token=token)


def dots_response(message: CoapMessage) -> tuple[DotsResponse, int]:
    """The core's response value; unknown codes map to the nearest generic DOTS code."""
    raw = message.code
    try:
        code = Code(raw)
    except ValueError:
        code = {2: Code.CONTENT, 4: Code.BAD_REQUEST}.get(raw >> 5, Code.INTERNAL_SERVER_ERROR)
    return DotsResponse(code, message.payload, message.content_format, message.max_age), raw


def request_label(request: DotsRequest) -> str:
    return f"{request.method.name} /{'/'.join(request.path)}"


# --- scopes ----------------------------------------------------------------------------------


PortSpec = int | tuple[int, int] | PortRange


def make_scope(*, target_prefix: Iterable[str] = (), target_port_range: Iterable[PortSpec] = (),
               target_protocol: Iterable[int] = (), target_fqdn: Iterable[str] = (),
               target_uri: Iterable[str] = (), alias_name: Iterable[str] = (),
               lifetime: int = DEFAULT_LIFETIME,
               trigger_mitigation: bool | None = None,
               acl_list: Iterable[AclActivation | str] | None = None) -> Scope:
    """One mitigation request scope; invalid values raise ``InvalidValue`` (a 4.00 the server
    would have answered), a missing target raises ``DotsUsageError``. ``acl_list``: ACLs
    (created over the data channel) to activate or deactivate (RFC 9133), as
    ``AclActivation`` or ``"NAME[:ACTIVATION-TYPE]"``; ``[]`` sends an empty acl-list."""
    ports = tuple(p if isinstance(p, PortRange) else
                  PortRange(p) if isinstance(p, int) else
                  PortRange(p[0], p[1] if p[1] != p[0] else None) for p in target_port_range)
    scope = Scope(
        target_prefix=tuple(parse_prefix(p) for p in target_prefix),
        target_port_range=ports,
        target_protocol=tuple(target_protocol),
        target_fqdn=tuple(target_fqdn),
        target_uri=tuple(target_uri),
        alias_name=tuple(alias_name),
        lifetime=lifetime,
        trigger_mitigation=trigger_mitigation,
    )
    if not scope.has_target():
        raise DotsUsageError("a mitigation request needs a target-prefix, target-fqdn, "
                             "target-uri or alias-name (RFC 9132 §4.4.1.1)")
    if lifetime == 0:
        raise DotsUsageError("a lifetime of 0 is invalid (RFC 9132 §4.4.1.1); -1 = indefinite")
    if acl_list is not None:
        acls = tuple(a if isinstance(a, AclActivation) else AclActivation.parse(a)
                     for a in acl_list)
        names = [a.acl_name for a in acls]
        if len(set(names)) != len(names):
            raise DotsUsageError("acl-list names an ACL twice")
        scope = with_acl_list(scope, acls)
    return scope


def request_scope(view: Scope, *, lifetime: int | None = None) -> Scope:
    """The request parameters of a scope the server returned (GET), for a refresh or an
    efficacy update: targets, trigger-mitigation and a lifetime; server-only nodes dropped.
    Without ``lifetime``, the remaining lifetime the server reported (or 3600 if none)."""
    if lifetime is None:
        lifetime = view.lifetime if view.lifetime not in (None, 0) else DEFAULT_LIFETIME
    return Scope(target_prefix=view.target_prefix, target_port_range=view.target_port_range,
                 target_protocol=view.target_protocol, target_fqdn=view.target_fqdn,
                 target_uri=view.target_uri, alias_name=view.alias_name, lifetime=lifetime,
                 trigger_mitigation=view.trigger_mitigation)


def parse_port_range(text: str) -> PortRange:
    """``N`` or ``LOW-HIGH``."""
    low, dash, high = text.partition("-")
    try:
        return PortRange(int(low), int(high) if dash else None)
    except ValueError:
        raise ValueError(f"port {text!r} is neither N nor LOW-HIGH") from None


def is_address_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- observations ----------------------------------------------------------------------------


class Observation:
    """The notifications of one observed mitigation GET (RFC 9132 §4.4.2.1, RFC 7641).

    ``first`` is the reply to the registration. Iterate (``async for``) or call ``next()``
    to get notifications; iteration ends after a notification that ends the observation
    (an error code, a response without Observe, the end of an observed single request) or
    after ``cancel()``. The client re-registers it on a new session after a reconnection.
    At most ``limit`` notifications wait unread; older ones are dropped first.
    """

    def __init__(self, request_factory: Callable[[], DotsRequest], mid: int | None,
                 cancel: Callable[[Observation], Awaitable[None]], limit: int = 64) -> None:
        self._request_factory = request_factory
        self.mid = mid
        self.first: Reply | None = None
        self.token: bytes | None = None
        self.session: Any = None
        self.ended = False
        self.dropped = 0
        self._cancel = cancel
        self._limit = limit
        self._queue: asyncio.Queue[Reply | None] = asyncio.Queue()

    def request(self, *, observe: bool = True) -> DotsRequest:
        from dataclasses import replace

        return replace(self._request_factory(), observe=0 if observe else 1)

    def deliver(self, reply: Reply) -> None:
        """A notification arrived (called by the client role)."""
        if self.ended:
            return
        if self._queue.qsize() >= self._limit:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(reply)
        if ends_observation(reply, self.mid):
            self.end()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._queue.put_nowait(None)

    def __aiter__(self) -> Observation:
        return self

    async def __anext__(self) -> Reply:
        if self._queue.empty() and self.ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # stay ended for later readers
            raise StopAsyncIteration
        return item

    async def next(self, timeout: float) -> Reply:
        """The next notification within ``timeout`` seconds (``TimeoutError`` otherwise,
        ``NetworkError`` if the observation ended)."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except StopAsyncIteration:
            raise NetworkError("the observation has ended") from None

    async def cancel(self) -> None:
        """Deregister (GET with Observe 1 and the same token, RFC 7641 §3.6) and end."""
        if not self.ended:
            await self._cancel(self)
        self.end()

    async def __aenter__(self) -> Observation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()


def ends_observation(reply: Reply, mid: int | None) -> bool:
    """Whether this notification is the last one of its observation."""
    if reply.raw_code >> 5 != 2 or reply.response is None or reply.observe is None:
        return True
    if mid is not None:  # the observed request is gone (RFC 9132 §4.4.2.1, status 6 final)
        return any(s.status is Status.ATTACK_MITIGATION_TERMINATED and s.lifetime == 0
                   for s in reply.scopes)
    return False


def is_mitigation_request(request: DotsRequest) -> bool:
    return len(request.path) > 2 and request.path[2] == "mitigate" and (
        request.method in (Method.PUT, Method.DELETE))
