"""The signal channel of a DOTS client: sessions, their establishment and re-establishment.

``SignalChannel`` keeps one ``ClientSession`` to a DOTS server at a time. It reaches the
server with Happy Eyeballs (``gateway.client.connect``, with the cached winner first,
§4.3), installs the session (heartbeats and session parameters start afresh), and
re-establishes it when lost: at once with (D)TLS session resumption, then as
``ReconnectBackoff`` allows (never more often than every 60 s, §4.7). It composes the
parts that act on the session: ``RequestSending`` (``gateway.client.transmission``:
sending requests with the RFC 9132 pacing), ``HeartbeatKeeping``
(``gateway.client.heartbeats``: heartbeats both ways, loss detection, the channel's timer)
and ``RedirectFollowing`` (``gateway.client.redirect``). ``gateway.client.role.DotsClient``
adds the DOTS operations on top and fills in the hooks (``_after_connect``,
``_refresh_due``, ``_mitigating``...).

It also follows redirects (RFC 9132 §4.6) for every subclass, with the rules of
``redirect.follow``: a 5.03 + ``redirected-signal`` answering a request moves the channel to
the alternate server (alt-server-record, else alt-server resolved; its certificate must
match alt-server; Happy Eyeballs) and the same request, same cuid and mid, is sent there;
one arriving in a notification or answering a heartbeat moves the channel in the
background. ``_after_connect`` then runs on the new session (``relocated`` is set), which
negotiates and re-registers observations. A redirect to a server contacted in the last
5 minutes is ignored and the other provisioned servers are tried instead. When the TTL
(Max-Age; 0: this request only) expires the channel goes back to the provisioned servers,
unless under attack. At most ``MAX_REDIRECTS`` are followed per request; a request whose
redirect could not be followed returns its 5.03 to the caller.

Asyncio glue only; protocol decisions are the core's (``gateway.dots.client``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certs.identity import cuid_from_certificate, cuid_from_psk_identity
from gateway.client.blocks import BlockTracker
from gateway.client.connect import (
    ATTACK_ATTEMPT_DELAY,
    CACHE_TTL,
    DEFAULT_ATTEMPT_DELAY,
    Endpoint,
    NetworkError,
    ServerSpec,
    Transport,
    happy_eyeballs,
    open_dtls,
    open_tls,
    parse_server,
    resolve,
)
from gateway.client.heartbeats import HeartbeatKeeping
from gateway.client.messages import Reply
from gateway.client.parallel import ParallelSessions
from gateway.client.redirect import RedirectFollowing
from gateway.client.session import ClientSession
from gateway.client.state import ClientState
from gateway.client.transmission import RequestSending, transmission_parameters
from gateway.dots.client import DotsClientCore
from gateway.dots.heartbeat import HeartbeatMonitor, ReconnectBackoff, Role
from gateway.dots.parallel import ParallelPlan
from gateway.dots.session_config import ClientSessionConfig, SessionParameters
from gateway.eventlog import log_event
from gateway.transport.dtls_client import HandshakeError
from gateway.transport.openssl_ffi import OpenSSLError
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind
from redirect.follow import RedirectFollower

log = logging.getLogger(__name__)


def derived_cuid(credentials: ClientCredentials) -> str:
    """RFC 9132 App. B: the cuid of our certificate's SPKI, or of our PSK identity."""
    if credentials.cert_chain is not None:
        return cuid_from_certificate(Path(credentials.cert_chain).read_bytes())
    if credentials.psk_identity is not None:
        return cuid_from_psk_identity(credentials.psk_identity)
    raise ValueError("client credentials need a certificate or a PSK identity")


@dataclass
class ClientStats:
    """Counters for logs and tests."""

    sessions: int = 0
    resumed_sessions: int = 0
    heartbeats_sent: int = 0
    heartbeats_answered: int = 0
    server_heartbeats: int = 0
    retransmissions: int = 0
    config_refreshes: int = 0
    #: Configuration refreshes that got no answer (CON retransmissions exhausted, Reset).
    config_refresh_failures: int = 0
    signal_losses: int = 0
    notifications: int = 0
    #: 5.03 + redirected-signal received (RFC 9132 §4.6), followed or not.
    redirects: int = 0
    redirects_followed: int = 0
    #: Redirects ignored as loops (a server contacted in the last 5 minutes): an alert.
    redirect_loops: int = 0
    #: Redirects that could not be followed: alternate server unreachable, too many
    #: redirects for one request, no other provisioned server after a loop.
    redirects_failed: int = 0
    #: Returns to the provisioned servers when a redirect's TTL expired.
    redirect_returns: int = 0
    #: Large GETs and PUTs carried in Q-Block2/Q-Block1 (RFC 9177) to their answer.
    q_block_transfers: int = 0
    #: Parallel sessions opened while the server was silent during an attack (§4.7), those
    #: that failed, replaced the old session, or were dropped because it answered.
    parallel_attempts: int = 0
    parallel_failures: int = 0
    parallel_promoted: int = 0
    parallel_dropped: int = 0
    #: The endpoints of the latest connection attempts, newest last.
    attempts: deque[str] = field(default_factory=lambda: deque(maxlen=32))


class SignalChannel(RequestSending, HeartbeatKeeping, RedirectFollowing, ParallelSessions):
    """Sessions and transmission for a DOTS client (see the module docstring)."""

    #: Requests and observations one session may have open (a bound on our own memory).
    max_outstanding = 64

    #: Called with the transport ("dtls", "tls") and the seconds each completed handshake
    #: took (the gateway feeds its handshake histogram, side="upstream").
    observe_handshake: Callable[[str, float], None] | None = None

    def __init__(self, credentials: ClientCredentials,
                 servers: Sequence[ServerSpec | str] | ServerSpec | str | None, *,
                 state_dir: Path | None, cuid: str | None, attempt_delay: float,
                 handshake_timeout: float, request_timeout: float, max_attempts: int,
                 preferred_idle: SessionParameters | None,
                 preferred_mitigating: SessionParameters | None, reconnect: bool,
                 backoff: ReconnectBackoff | None, on_redirect: Callable[[Reply], None] | None,
                 new_cuid: Callable[[], str], clock: Callable[[], float],
                 parallel_backoff: ReconnectBackoff | None = None) -> None:
        if servers is None:
            servers = [ServerSpec("localhost")]
        elif isinstance(servers, ServerSpec | str):
            servers = [servers]
        self.servers = [s if isinstance(s, ServerSpec) else parse_server(s) for s in servers]
        if not self.servers:
            raise ValueError("no DOTS server given")
        self.credentials = credentials
        self.state = ClientState(state_dir)
        self.derived_cuid = cuid or derived_cuid(credentials)
        self.clock = clock
        self.attempt_delay = attempt_delay
        self.handshake_timeout = handshake_timeout
        self.request_timeout = request_timeout
        self.max_attempts = max_attempts
        self.reconnect = reconnect
        self.backoff = backoff or ReconnectBackoff()
        self.on_redirect = on_redirect
        self.core = DotsClientCore(
            self.state.cuid_for(self.derived_cuid), clock(), new_cuid=new_cuid,
            config=ClientSessionConfig(preferred_mitigating, preferred_idle))
        self.state.load_counters(self.core)
        self.stats = ClientStats()
        self.last_redirect: Reply | None = None
        self._blocks = BlockTracker()
        #: Large mitigation GETs and PUTs over DTLS in Q-Block2/Q-Block1 (RFC 9177); False:
        #: Block2 only, as before (RFC 7959).
        self.q_block = True
        self.follower = RedirectFollower()
        #: The alternate server in use after a redirect; None while on the provisioned
        #: ``servers``.
        self.alternate: ServerSpec | None = None
        #: Whether the current session is on another server than the previous one (set
        #: before ``_after_connect`` runs): state held by the old server may be missing.
        self.relocated = False
        self._last_server: tuple[str, int] | None = None
        self._move_lock = asyncio.Lock()
        #: Tasks moving the channel or establishing a session: redirects their own
        #: requests get are not followed from inside.
        self._movers: set[asyncio.Task[Any]] = set()
        self._pinned = 0  # requests resent after a redirect and not answered yet
        self._returning = False
        self.session: ClientSession | None = None
        #: Why the latest session ended or the latest establishment failed, and when
        #: (``clock``); for operators (``status``), kept after a new session is up.
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._contexts: dict[Transport, ClientContext] = {}
        for transport in dict.fromkeys(t for spec in self.servers for t in spec.transports):
            self._context(transport)  # bad key or CA files fail here, not in a handshake
        self._ticket: bytes | None = None
        self._ticket_endpoint: Endpoint | None = None
        self._ticket_checked = False
        self._ready = asyncio.Event()
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        #: Attack time, server silent: a second session alongside (§4.7, ``parallel``).
        self.parallel = ParallelPlan(parallel_backoff)
        self._parallel_session: ClientSession | None = None
        self._parallel_task: asyncio.Task[Any] | None = None

    # --- hooks for the role ------------------------------------------------------------------

    async def _after_connect(self) -> None:
        """A session was (re-)established; negotiate, re-register observations..."""

    def _session_gone(self) -> None:
        """The session was lost and will not be re-established (``reconnect=False``)."""

    def _redirect_not_followed(self, reply: Reply) -> None:
        """A redirect that arrived outside a request of ours (in a notification, answering
        a heartbeat) was not followed; the channel stays where it is."""

    def _mitigating(self) -> bool:
        return self.core.under_attack

    def _refresh_due_at(self) -> float | None:
        """When the session configuration must be refreshed, or None."""
        return None

    def _refresh_now(self) -> None:
        """Start a refresh (called by the timer at ``_refresh_due_at``)."""

    # --- state -------------------------------------------------------------------------------

    @property
    def cuid(self) -> str:
        return self.core.cuid

    @property
    def endpoint(self) -> Endpoint | None:
        return None if self.session is None else self.session.endpoint

    @property
    def connected(self) -> bool:
        return self.session is not None and not self.session.closed

    @property
    def under_attack(self) -> bool:
        return self.core.under_attack

    def parameters(self) -> SessionParameters:
        """The session parameters in force (mitigating-config while mitigating, §4.5)."""
        return self.core.config.current[self._mitigating()]

    # --- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Establish the signal channel (Happy Eyeballs, then ``_after_connect``). Raises
        ``NetworkError`` when no server can be reached."""
        if self.connected:
            return
        self._closing = False
        await self._establish(resume=False)

    async def close(self) -> None:
        """End the session (close_notify; Release over TCP)."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._abandon_parallel("the client is closing")
        tasks = [t for t in (*self._tasks, self._reconnecting) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            self.session.close()
            self.session = None
        self._ready.clear()

    def set_under_attack(self, under_attack: bool) -> None:
        """Attack time (§4.3, §4.5.3, §4.6, §4.7): 100 ms between connection attempts, no
        config refresh, the mitigating parameter set, no loss declaration, and no return
        from an alternate server when its TTL expires."""
        self.core.set_under_attack(under_attack)
        self.attempt_delay = ATTACK_ATTEMPT_DELAY if under_attack else DEFAULT_ATTEMPT_DELAY
        self._sync_parameters(self.clock())
        self._arm()

    # --- SessionOwner ------------------------------------------------------------------------

    def session_closed(self, session: ClientSession, reason: str) -> None:
        if session is not self.session:
            return  # a Happy Eyeballs loser, or a session already replaced
        self._save_ticket(session)
        self.session = None
        self._ready.clear()
        self._abandon_parallel(f"the old session ended: {reason}")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closing:
            return
        self._note_error(f"session to {session.endpoint} lost: {reason}")
        log_event(log, logging.WARNING, "upstream.lost", "signal channel lost",
                  upstream=session.endpoint.uri, reason=reason)
        if not self.reconnect:
            self._session_gone()
        elif self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.ensure_future(self._reestablish())

    # --- establishing sessions ---------------------------------------------------------------

    async def _current_session(self, wait: float) -> ClientSession:
        if self.session is not None and not self.session.closed:
            return self.session
        if self._closing:
            raise NetworkError("the client is closed")
        if self._reconnecting is None or self._reconnecting.done():
            await self.connect()
            assert self.session is not None
            return self.session
        try:
            await asyncio.wait_for(self._ready.wait(), wait)
        except TimeoutError:
            raise NetworkError("no signal channel (re-establishment under way)") from None
        assert self.session is not None
        return self.session

    def _note_error(self, error: str) -> None:
        self.last_error, self.last_error_at = error, self.clock()

    @property
    def next_attempt_in(self) -> float | None:
        """Seconds until the next establishment attempt may run, while there is no session
        and the back-off holds one back (RFC 9132 §4.7); None otherwise."""
        at = self.backoff.next_attempt_at
        if self.connected or at is None:
            return None
        return max(0.0, at - self.clock())

    async def _establish(self, *, resume: bool) -> None:
        try:
            await self._establish_once(resume=resume)
        except NetworkError as exc:
            self._note_error(f"no session: {exc}")
            raise

    async def _establish_once(self, *, resume: bool) -> None:
        if self.alternate is not None and self.follower.should_return(
                self.clock(), under_attack=self.under_attack):
            self._end_redirect(returning=True)  # §4.6: the TTL expired meanwhile
        session = None
        endpoint, ticket = self._ticket_endpoint, self._ticket
        if resume and endpoint is not None and ticket is not None:
            try:  # §4.7: re-establish preferably with (D)TLS session resumption
                session = await self._attempt(endpoint, resume=ticket)
            except NetworkError as exc:
                log.info("resumption with %s failed: %s", endpoint, exc)
        if session is None:
            alternate = [] if self.alternate is None else [self.alternate]
            session = await self._race([*alternate, *self.servers])
        if self.alternate is not None and not self.alternate.reached(session.endpoint):
            log.warning("alternate server %s unreachable: back on the provisioned servers",
                        self.alternate.host)
            self._end_redirect(returning=False)
        self._install(session)
        with self._moving():
            await self._after_connect()

    async def _race(self, servers: Sequence[ServerSpec] | None = None) -> ClientSession:
        """Each server in turn (default: the provisioned ones): its cached winner alone if
        fresh (§4.3), else Happy Eyeballs over its candidates."""
        failures = []
        for spec in self.servers if servers is None else servers:
            cached = self.state.cached_winner(spec.cache_key, time.time(), CACHE_TTL)
            if cached is not None:
                endpoint = Endpoint(Transport(cached["transport"]), cached["address"],
                                    spec.port, spec.reference_identifier)
                try:
                    return await self._attempt(endpoint)
                except NetworkError as exc:
                    log.info("cached endpoint %s failed (%s): racing again", endpoint, exc)
                    self.state.forget_winner(spec.cache_key)
            try:
                candidates = await resolve(spec)
                endpoint, session = await happy_eyeballs(
                    candidates, self._attempt, self.attempt_delay,
                    close=lambda s: s.close("lost the Happy Eyeballs race"))
            except NetworkError as exc:
                failures.append(str(exc))
                continue
            self.state.remember_winner(spec.cache_key, {
                "transport": endpoint.transport.value, "address": endpoint.address,
                "at": time.time()})
            return session
        raise NetworkError("; ".join(failures))

    async def _attempt(self, endpoint: Endpoint, resume: bytes | None = None) -> ClientSession:
        self.stats.attempts.append(endpoint.uri)
        session = ClientSession(self, endpoint, self.clock,
                                transmission_parameters(self.parameters()),
                                max_outstanding=self.max_outstanding)
        opener = open_dtls if endpoint.transport is Transport.UDP else open_tls
        started = time.perf_counter()
        try:
            connection = await opener(endpoint, self._context(endpoint.transport),
                                      session.data_received, session.connection_lost,
                                      resume=resume, timeout=self.handshake_timeout)
        except (HandshakeError, OSError, TimeoutError) as exc:
            raise NetworkError(str(exc) or type(exc).__name__) from None
        if self.observe_handshake is not None:
            self.observe_handshake("dtls" if endpoint.transport is Transport.UDP else "tls",
                                   time.perf_counter() - started)
        session.attach(connection)
        return session

    def _context(self, transport: Transport) -> ClientContext:
        context = self._contexts.get(transport)
        if context is None:
            kind = Kind.DTLS if transport is Transport.UDP else Kind.TLS
            try:
                context = ClientContext(kind, self.credentials)
            except OpenSSLError as exc:
                raise ValueError(f"unusable client credentials: {exc}") from None
            self._contexts[transport] = context
        return context

    def _install(self, session: ClientSession, *,
                 replaced_reason: str = "moved to another DOTS server") -> None:
        now = self.clock()
        replaced, self.session = self.session, session
        if replaced is not None and replaced is not session:
            replaced.close(replaced_reason)  # one session at a time
        server = (session.endpoint.server_name, session.endpoint.port)
        self.relocated = self._last_server is not None and server != self._last_server
        self._last_server = server
        self.follower.contacted(session.endpoint.server_name, now)
        self.follower.contacted(session.endpoint.address, now)
        self.stats.sessions += 1
        if session.resumed:
            self.stats.resumed_sessions += 1
        self._save_ticket(session)
        self._ticket_checked = False
        # The server keeps a configuration per session: a new one starts from the defaults
        # until negotiated (§4.5.2), and heartbeats start afresh.
        self.core.config.current = {True: SessionParameters(), False: SessionParameters()}
        self.core.config.refresh_at = None
        params = self.parameters()
        self.core.heartbeat = HeartbeatMonitor(
            Role.CLIENT, now, heartbeat_interval=params.heartbeat_interval,
            missing_hb_allowed=1 if session.reliable else params.missing_hb_allowed)
        self.core.heartbeat.under_attack = self.core.under_attack
        self._ready.set()
        log_event(log, logging.INFO, "upstream.connected", "signal channel established",
                  upstream=session.endpoint.uri, cuid=self.core.cuid, resumed=session.resumed)
        self._arm()

    def _save_ticket(self, session: ClientSession) -> None:
        ticket = session.ticket
        if ticket is not None:
            self._ticket, self._ticket_endpoint = ticket, session.endpoint

    async def _reestablish(self) -> None:
        """§4.7: at once (resumption first), then never more often than the back-off."""
        while not self._closing:
            now = self.clock()
            if not self.backoff.may_attempt(now):
                assert self.backoff.next_attempt_at is not None
                await self.backoff_wait(self.backoff.next_attempt_at - now)
                continue
            try:
                await self._establish(resume=True)
            except Exception as exc:  # noqa: BLE001 - a bug must not end re-establishment
                if not isinstance(exc, NetworkError):
                    log.exception("re-establishing the signal channel failed unexpectedly")
                at = self.backoff.attempt_failed(self.clock())
                log.warning("re-establishing the signal channel failed (%s); next attempt in "
                            "%.0f s", exc, at - self.clock())
                continue
            self.backoff.succeeded()
            return

    async def backoff_wait(self, delay: float) -> None:
        """Wait ``delay`` seconds for the next establishment attempt (a subclass may let
        an operator cut it short)."""
        await asyncio.sleep(max(0.0, delay))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("client background task failed", exc_info=task.exception())
