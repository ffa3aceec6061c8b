"""The gateway's upstream side: a DOTS client session of its own to an upstream server.

``UpstreamClient`` is a ``DotsClient`` (its own credential, its own session configuration
negotiation, heartbeats both ways, loss detection, resumption, Happy Eyeballs, and the
client-side redirect rules) that sends requests it did not build: the relay's, carrying the
downstream clients' cuids and mids. What is per hop (config, heartbeats) never comes from
downstream. It tells the relay when a session to some upstream server is ready, so the
relay can re-establish the mitigations it answers for there (failover, restart).

``fail_over`` moves to the next configured server: the current one goes to the end of the
list and its resumption ticket is dropped, so the next establishment races the others.

Asyncio glue only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.client.connect import NetworkError, ServerSpec, Transport
from gateway.client.messages import Reply, coap_request
from gateway.client.role import DotsClient
from gateway.client.session import ClientSession
from gateway.client.transmission import Failure
from gateway.coap.message import CoapMessage
from gateway.dots.heartbeat import ReconnectBackoff
from gateway.dots.message import DotsRequest
from gateway.dots.session_config import SessionParameters
from gateway.eventlog import log_event
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind

log = logging.getLogger(__name__)


#: What arrives for an observation's token after its first answer (None: it ended).
NotificationSink = Callable[[ClientSession, CoapMessage | None, Failure], None]


class UpstreamBusy(NetworkError):
    """Every slot for relayed requests stayed taken: the gateway's own backlog, not an
    upstream failure."""


class UpstreamClient(DotsClient):
    """See the module docstring. ``on_ready`` runs (as a task) after every new session;
    ``is_mitigating`` says whether relayed requests are active (parameter set, §4.5)."""

    #: One session carries every client's requests and observations (one per observed
    #: mitigation): far more than a single client's.
    max_outstanding = 65536
    #: Relayed requests waiting for an upstream answer at once; the rest queue for a slot.
    max_in_flight = 256

    def __init__(self, credentials: ClientCredentials, servers: Sequence[ServerSpec], *,
                 state_dir: Path | None, on_ready: Callable[[], Awaitable[None]],
                 is_mitigating: Callable[[], bool], request_timeout: float = 10.0,
                 handshake_timeout: float = 5.0,
                 preferred_idle: SessionParameters | None = None,
                 preferred_mitigating: SessionParameters | None = None,
                 backoff: ReconnectBackoff | None = None,
                 names: dict[tuple[str, int], str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(credentials, list(servers), state_dir=state_dir,
                         request_timeout=request_timeout, handshake_timeout=handshake_timeout,
                         max_attempts=3, preferred_idle=preferred_idle,
                         preferred_mitigating=preferred_mitigating, negotiate=True,
                         reconnect=True, backoff=backoff, clock=clock)
        self._on_ready = on_ready
        self._is_mitigating = is_mitigating
        self.failovers = 0
        self._connecting = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.max_in_flight)
        #: (host as configured, port) -> the ``[[upstream]]`` entry's name.
        self.names = dict(names or {})
        #: Establishments running now (start, re-establishment, ``reconnect``).
        self.establishing = 0
        #: Set by ``reconnect_now``: ends the back-off wait of whichever loop is waiting.
        self._wake = asyncio.Event()
        #: (host as configured, port) -> (why the latest attempt to it failed, when).
        self.server_errors: dict[tuple[str, int], tuple[str, float]] = {}

    async def connect(self) -> None:
        # The daemon connects at start while the first relayed requests may already ask for
        # a session: one establishment at a time, or two sessions race and one leaks. One
        # that waited for another's attempt to fail does not try again at once: the
        # back-off decides when the next attempt runs (RFC 9132 §4.7).
        waited = self._connecting.locked()
        async with self._connecting:
            if waited and not self.connected and self.last_error is not None:
                raise NetworkError(self.last_error)
            await super().connect()

    async def _establish(self, *, resume: bool) -> None:
        self.establishing += 1
        try:
            await super()._establish(resume=resume)
        finally:
            self.establishing -= 1

    async def _attempt(self, endpoint: Any, resume: bytes | None = None) -> ClientSession:
        try:
            return await super()._attempt(endpoint, resume)
        except NetworkError as exc:
            index = _spec_index(self.servers, endpoint.address, endpoint.port,
                                endpoint.server_name)
            if index is not None:
                spec = self.servers[index]
                self.server_errors[(spec.host, spec.port)] = (
                    f"{endpoint.uri}: {exc}", self.clock())
            raise

    def find(self, name: str) -> ServerSpec | None:
        """The upstream server configured under ``name`` (or with that host)."""
        for spec in self.servers:
            if name in (self.names.get((spec.host, spec.port)), spec.host,
                        f"{spec.host}:{spec.port}"):
                return spec
        return None

    def prefer(self, spec: ServerSpec) -> None:
        """Try ``spec`` first from the next establishment on."""
        self.servers.remove(spec)
        self.servers.insert(0, spec)

    def status_rows(self) -> list[dict[str, object]]:
        """One row per upstream server in the order they are tried, for ``status``: its
        name, whether the session is to it, and why the latest attempt to it failed."""
        current = self.current_spec()
        now = self.clock()
        rows: list[dict[str, object]] = []
        for spec in self.servers:
            error = self.server_errors.get((spec.host, spec.port))
            rows.append({"name": self.names.get((spec.host, spec.port), ""),
                         "host": spec.host, "port": spec.port,
                         "transports": [t.value for t in spec.transports],
                         "in_use": spec is current,
                         "last_error": None if error is None else error[0],
                         "last_error_age": None if error is None
                         else round(now - error[1], 1)})
        return rows

    @property
    def session_expected(self) -> bool:
        """Whether a relayed request may get a session: one is up, or an establishment is
        running now. False while the back-off holds the next attempt back: a request then
        gets the gateway's 5.03 at once instead of waiting for its timeout."""
        return self.connected or self.establishing > 0

    def label(self, endpoint: Any) -> str:
        """How diagnostics and logs name an upstream endpoint: the ``[[upstream]]`` name
        it was configured under, with its URI."""
        index = _spec_index(self.servers, endpoint.address, endpoint.port,
                            endpoint.server_name)
        name = None
        if index is not None:
            spec = self.servers[index]
            name = self.names.get((spec.host, spec.port))
        return f"{name} ({endpoint.uri})" if name else endpoint.uri

    async def backoff_wait(self, delay: float) -> None:
        """Sleep until the next establishment attempt, or until ``reconnect_now``."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, delay))
        except TimeoutError:
            pass

    def reconnect_now(self, spec: ServerSpec | None = None) -> str:
        """The operator's ``reconnect``: forget the back-off and attempt at once (``spec``
        first; when connected to another server, move there). What it did, in words."""
        if spec is not None and self.current_spec() is not spec:
            self.prefer(spec)
            if self.connected:
                self.fail_over(f"the operator asked for {spec.host}:{spec.port}")
                return f"moving to {spec.host}:{spec.port}"
        if self.connected:
            return f"connected to {self.name}: nothing to do"
        if self.establishing:
            return "an attempt is under way"
        # Whichever loop waits (the daemon's first connection, or re-establishment after a
        # loss; one of them runs while there is no session) wakes and attempts at once.
        self.backoff.succeeded()
        self._wake.set()
        return "attempting now"

    def current_spec(self) -> ServerSpec | None:
        """The configured (or discovered) server the session in use goes to."""
        endpoint = self.endpoint
        if endpoint is None or not self.connected:
            return None
        index = _spec_index(self.servers, endpoint.address, endpoint.port, endpoint.server_name)
        return None if index is None else self.servers[index]

    def set_servers(self, servers: Sequence[ServerSpec]) -> None:
        """A new upstream list (discovery): used from the next establishment on; the
        session in use stays while it works."""
        self.servers = list(servers)

    def replace_credentials(self, credentials: ClientCredentials) -> None:
        """SIGHUP: new handshakes use ``credentials``; the session in use stays. Raises
        (and changes nothing) when they cannot be loaded."""
        fresh = {transport: ClientContext(_kind(transport), credentials)
                 for transport in self._contexts}
        self.credentials = credentials
        self._contexts = fresh

    @property
    def name(self) -> str | None:
        """The upstream endpoint in use (``coaps://[addr]:port``), None when none is."""
        endpoint = self.endpoint
        return None if endpoint is None else endpoint.uri

    async def forward(self, request: DotsRequest, *, mid: int | None,
                      timeout: float | None = None,
                      later: NotificationSink | None = None,
                      confirmable: bool = False) -> Reply:
        """Send a relayed request (NON, §4.4; CON for RFC 9244's tm-setup) and return the
        upstream answer as received.
        Raises ``NetworkError`` when no upstream server answers in time, ``UpstreamBusy``
        when no slot freed up in that time."""
        limit = timeout if timeout is not None else self.request_timeout
        try:
            await asyncio.wait_for(self._slots.acquire(), limit)
        except TimeoutError:
            raise UpstreamBusy(f"{self.max_in_flight} relayed requests in flight for "
                               f"{limit:g} s") from None
        try:
            # Block-wise answers come back whole (the channel joins them, RFC 7959).
            return await self._send(request, confirmable=confirmable, timeout=timeout,
                                    mid=mid, later=later)
        finally:
            self._slots.release()

    async def cancel(self, session: ClientSession, token: bytes, request: DotsRequest) -> None:
        """End an upstream observation (RFC 7641 §3.6: GET, Observe 1, same token)."""
        session.forget(token)
        if session.closed:
            return
        try:
            await self._send_once(session, coap_request(request, token), False, 3.0, 3.5)
        except Exception as exc:  # noqa: BLE001 - best effort: the server times it out anyway
            log.info("cancelling an upstream observation failed: %s", exc)

    def fail_over(self, reason: str) -> None:
        """Give up on the current upstream server and race the others (the current one
        last)."""
        current = self.endpoint
        if current is None:
            return
        self.failovers += 1
        index = _spec_index(self.servers, current.address, current.port, current.server_name)
        if index is not None:
            spec = self.servers.pop(index)
            self.servers.append(spec)
            self.state.forget_winner(spec.cache_key)
        self.leave_alternate(reason)  # a redirect's alternate is not preferred any more
        self._ticket = None
        self._ticket_endpoint = None
        log_event(log, logging.WARNING, "upstream.failover", "upstream failed: failing over",
                  upstream=current.uri, reason=reason,
                  next=f"{self.servers[0].host}:{self.servers[0].port}" if self.servers else None)
        self._lose(f"failover: {reason}")

    # --- hooks of the channel ----------------------------------------------------------------

    async def _after_connect(self) -> None:
        await super()._after_connect()
        self._spawn(self._on_ready())

    def _mitigating(self) -> bool:
        return super()._mitigating() or self._is_mitigating()


def _spec_index(servers: list[ServerSpec], address: str, port: int,
                server_name: str) -> int | None:
    """Which configured server the session went to: by address when configured as one,
    else by the name its certificate was checked against."""
    for index, spec in enumerate(servers):
        if spec.port == port and spec.host.strip("[]") == address:
            return index
    for index, spec in enumerate(servers):
        if spec.port == port and spec.reference_identifier == server_name:
            return index
    return None


def _kind(transport: Transport) -> Kind:
    return Kind.DTLS if transport is Transport.UDP else Kind.TLS
