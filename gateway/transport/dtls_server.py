"""The DTLS server endpoint: sockets, stateless cookies, sessions, limits, timers.

Every datagram from an unknown (local, remote) pair goes through ``DTLSv1_listen`` on one
reusable listener object, so a spoofed or unfinished ClientHello costs a HelloVerifyRequest
and no state. Only a ClientHello with a valid cookie becomes a session, and only while the
session and handshake caps and the per-source rate allow it; otherwise the client gets no
cookie (it retries later) and we count and log it. Handshake crypto runs in worker threads
(OpenSSL releases the GIL), one job at a time per session, so established sessions keep
their latency during a reconnect storm; a worker sends the flight it produced and leaves
its bookkeeping for the loop's next turn. A session's OpenSSL state is freed as soon as it
closes, fails, misses its handshake deadline or idles out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.transport.endpoint import EndpointBase
from gateway.transport.openssl_ffi import (
    BIO_CTRL_PENDING,
    SSL_OP_COOKIE_EXCHANGE,
    crypto,
    error_queue,
    ffi,
    ssl,
)
from gateway.transport.secure_session import (
    DEFAULT_DATAGRAM_SIZE,
    PeerCredential,
    SecureSession,
    State,
    attach_memory_bios,
)
from gateway.transport.tls_context import Kind, ServerContext, ssl_address
from gateway.transport.udp import Address, forget, open_udp_socket, receive, send

log = logging.getLogger(__name__)
_BIO_CTRL_RESET = 1
_BATCH = 64  # datagrams per readiness callback: fairness between sockets
#: How long a finished handshake step may wait for the loop to take it up when no datagram
#: wakes the loop first (its flight has already left; this is bookkeeping: the
#: retransmission timer, the established session's handler).
RESULT_DELAY = 0.01


@dataclass(frozen=True)
class Limits:
    max_sessions: int = 20_000
    max_handshakes: int = 512
    handshake_deadline: float = 20.0
    #: DOTS sessions are quiet for long stretches (heartbeats may be disabled when idle),
    #: so the default is long; heartbeats normally detect dead peers first.
    idle_timeout: float = 6 * 3600.0
    handshakes_per_source_per_second: float = 20.0
    handshake_burst: int = 40
    tracked_sources: int = 8192
    datagram_size: int = DEFAULT_DATAGRAM_SIZE
    handshake_threads: int = 2


@dataclass
class Counters:
    datagrams_in: int = 0
    datagrams_out: int = 0
    hello_verify_requests: int = 0
    handshakes_started: int = 0
    handshakes_completed: int = 0
    handshakes_failed: int = 0
    handshakes_timed_out: int = 0
    refused_session_limit: int = 0
    refused_handshake_limit: int = 0
    refused_rate_limit: int = 0
    dropped_garbage: int = 0
    dropped_truncated: int = 0
    sessions_closed: int = 0
    sessions_idle_closed: int = 0
    sessions_resumed: int = 0
    #: Established sessions whose records we protect ourselves, the SSL object freed.
    sessions_handed_over: int = 0


class SessionHandler(Protocol):
    """What the layer above (CoAP) implements for one established session."""

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, reason: str) -> None: ...


class DtlsConnection:
    """An established (or establishing) session, as the layer above sees it."""

    def __init__(
        self,
        endpoint: DtlsServer,
        sock: socket.socket,
        local: Address,
        remote: Address,
        session: SecureSession,
        now: float,
    ) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.local = local
        self.remote = remote
        self.session = session
        self.created_at = now
        self.last_activity = now
        self.handler: SessionHandler | None = None
        self.busy = False  # a handshake job is running in a worker thread
        # Datagrams that arrive while a handshake job runs; made on first use, dropped once
        # established (an idle session should not carry an empty queue).
        self.backlog: deque[bytes] | None = None
        self.retransmit: asyncio.TimerHandle | None = None

    @property
    def kind(self) -> Kind:
        return Kind.DTLS

    @property
    def peer(self) -> PeerCredential | None:
        return self.session.peer

    @property
    def established(self) -> bool:
        return self.session.state is State.ESTABLISHED

    def send(self, plaintext: bytes) -> None:
        """Encrypt and send one application message (one CoAP message)."""
        self.session.send(plaintext)
        self.endpoint._flush(self)

    def close(self, reason: str = "closed locally") -> None:
        self.endpoint._close(self, reason, notify=True)


Key = tuple[Address, Address]  # (local, remote)
#: A worker's handshake step: connection, application data, error, and when to retransmit
#: the flight (time.monotonic) if the peer stays silent.
_StepResult = tuple["DtlsConnection", list[bytes], Exception | None, float | None]


class SslObjects:
    """SSL objects made and freed by the handshake workers rather than the event loop.

    OpenSSL 3.0 takes one process-wide write lock (ex_data) in every SSL_new and SSL_free,
    and a handshake worker takes it again and again (certificates, keys, sessions). While
    the loop made its listener objects and freed finished sessions itself, it kept running
    into a worker holding that lock: on a one-core server during a handshake storm, 8-16% of
    the CPU went to pthread_rwlock_wrlock (perf). So the loop takes listener objects a worker
    made in advance, and leaves the ones it is done with for the next worker job to free (or
    the sweeper, when no handshake comes). Both lists are bounded.
    """

    #: Handshakes start in bursts (a batch of datagrams holds many valid-cookie ClientHellos);
    #: with 4 spares the loop still made most of its listener objects itself at 32 in flight.
    SPARES = 32
    #: Made per worker job at most, so that a job's result is not held up for long.
    REFILL = 8
    MAX_DEAD = 512

    def __init__(self) -> None:
        self._spares: deque[tuple[ServerContext, Any]] = deque()
        self._dead: deque[Any] = deque()

    def take(self, context: ServerContext) -> Any:
        """A fresh listener object for ``context`` (loop thread)."""
        while self._spares:
            made_for, ptr = self._spares.popleft()
            if made_for is context:
                return ptr
            self._dead.append(ptr)  # made before the credentials were reloaded
        return new_listener(context)  # the workers have not caught up: make it here

    def dispose(self, ptr: Any) -> None:
        """Leave an SSL object nobody uses any more to be freed later (any thread)."""
        self._dead.append(ptr)
        if len(self._dead) > self.MAX_DEAD:
            self.free_dead()

    def replenish(self, context: ServerContext) -> None:
        """Worker thread, after a handshake step: free the dead, make the spares."""
        self.free_dead()
        for _ in range(min(self.REFILL, self.SPARES - len(self._spares))):
            self._spares.append((context, new_listener(context)))

    def free_dead(self) -> None:
        for _ in range(len(self._dead)):
            try:
                ptr = self._dead.popleft()
            except IndexError:  # another thread took the rest
                return
            ssl.SSL_free(ptr)

    def clear(self) -> None:
        """Free everything (the server stopped; no worker runs any more)."""
        while self._spares:
            self._dead.append(self._spares.popleft()[1])
        self.free_dead()


class DtlsServer(EndpointBase):
    """Serve DTLS on one or more UDP sockets; hand established sessions to ``on_session``."""

    KIND = Kind.DTLS

    def __init__(
        self,
        context: ServerContext,
        on_session: Callable[[DtlsConnection], SessionHandler],
        limits: Limits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or Limits()
        super().__init__(context, self.limits.handshake_threads, clock=clock)
        self.on_session = on_session
        self.counters = Counters()
        self.sessions: dict[Key, DtlsConnection] = {}
        self.handshaking = 0
        self._sockets: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Any = None
        self._ssl_objects = SslObjects()
        #: Handshake steps done by the workers, not yet taken up by the loop.
        self._results: deque[_StepResult] = deque()
        self._sent_by_workers: deque[int] = deque()  # datagrams, counted on the loop
        self._results_timer: asyncio.TimerHandle | None = None
        self.jobs_running = 0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._sweeper: asyncio.TimerHandle | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, addresses: list[tuple[str, int]], *, freebind: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            for host, port in addresses:
                sock = open_udp_socket(host, port, freebind=freebind)
                self._sockets.append(sock)
                self._loop.add_reader(sock.fileno(), self._readable, sock)
                log.info("dtls listening on %s", Address(host, sock.getsockname()[1]))
        except BaseException:
            await self.stop()
            raise
        self._new_listener()
        self._schedule_sweep()

    def replace_context(self, context: ServerContext) -> None:
        """New credentials for new handshakes; sessions keep the context they started with."""
        if context.kind is not Kind.DTLS:
            raise ValueError("DtlsServer needs a DTLS context")
        self.context = context
        if self._listener is not None:
            self._new_listener()

    @property
    def bound(self) -> list[Address]:
        return [Address(*s.getsockname()[:2]) for s in self._sockets]

    async def stop(self) -> None:
        """Close every session (close_notify), free all OpenSSL state, release the port."""
        for conn in list(self.sessions.values()):
            self._close(conn, "server shutting down", notify=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for sock in self._sockets:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            forget(sock)
            sock.close()
        self._sockets.clear()
        if self._listener is not None:
            self._ssl_objects.dispose(self._listener)
            self._listener = None
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self._results_timer is not None:
            self._results_timer.cancel()
            self._results_timer = None
        self._take_results()
        self.jobs_running = 0  # jobs cancelled before they started never report
        self._ssl_objects.clear()

    # --- datagrams in ------------------------------------------------------------------------

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(_BATCH):
            got = receive(sock)
            if got is None:
                break
            data, remote, local = got
            self.counters.datagrams_in += 1
            if not data:
                self.counters.dropped_truncated += 1
                continue
            try:
                self._datagram(sock, data, local, remote)
            except Exception:  # one bad datagram must never take the endpoint down
                self.counters.dropped_garbage += 1
                log.exception("unexpected error handling a datagram from %s", remote)
        # Steps the workers finished: after the datagrams, so that established sessions'
        # requests go first; a datagram for a session with a step pending waited in its
        # backlog and is handled as that step is taken up.
        if self._results:
            self._take_results()

    def _datagram(self, sock: socket.socket, data: bytes, local: Address, remote: Address) -> None:
        conn = self.sessions.get((local, remote))
        if conn is not None:
            conn.last_activity = self.clock()
            if conn.session.state is State.HANDSHAKING:
                self._handshake_step(conn, data)
            else:
                self._application(conn, data)
            return
        if data[0] != 22:  # not a handshake record: nothing to talk about without a session
            self.counters.dropped_garbage += 1
            return
        self._listen(sock, data, local, remote)

    def _listen(self, sock: socket.socket, data: bytes, local: Address, remote: Address) -> None:
        listener = self._listener
        rbio, wbio = ssl.SSL_get_rbio(listener), ssl.SSL_get_wbio(listener)
        self.context.current_peer = remote.key()
        crypto.ERR_clear_error()
        ssl.BIO_write(rbio, data, len(data))
        addr = ssl.BIO_ADDR_new()
        try:
            result = ssl.DTLSv1_listen(listener, addr)
        finally:
            ssl.BIO_ADDR_free(addr)
        if result <= 0:
            out = _drain(wbio)
            ssl.BIO_ctrl(rbio, _BIO_CTRL_RESET, 0, ffi.NULL)
            if result < 0:
                crypto.ERR_clear_error()
                self.counters.dropped_garbage += 1
                self._new_listener()  # a listener in an error state is not reused
                return
            if out:
                refusal = self._refusal(remote)
                if refusal is not None:
                    self._rate_limited_log(refusal, "no cookie for %s: %s", remote, refusal)
                    return
                self.counters.hello_verify_requests += 1
                self._send(sock, out, remote, local)
            return
        # A valid cookie: this listener object becomes the session.
        refusal = self._refusal(remote, consume=True)
        if refusal is not None:
            self._rate_limited_log(refusal, "refusing handshake from %s: %s", remote, refusal)
            self._new_listener(free_old=True)
            return
        session_ptr = listener
        # DTLSv1_listen verified this ClientHello's cookie and left COOKIE_EXCHANGE set, so
        # the first handshake step would verify it again (our Python callback, in a worker).
        ssl.SSL_clear_options(session_ptr, SSL_OP_COOKIE_EXCHANGE)
        self._new_listener(free_old=False)
        self.context.peers[ssl_address(session_ptr)] = remote.key()
        session = SecureSession(
            self.context, ssl_ptr=session_ptr, datagram_size=self.limits.datagram_size,
            dispose=self._ssl_objects.dispose,
        )
        now = self.clock()
        conn = DtlsConnection(self, sock, local, remote, session, now)
        self.sessions[(local, remote)] = conn
        self.handshaking += 1
        self.counters.handshakes_started += 1
        self._handshake_step(conn, b"")  # the ClientHello is already inside the SSL object

    def _refusal(self, remote: Address, *, consume: bool = False) -> str | None:
        if len(self.sessions) >= self.limits.max_sessions:
            self.counters.refused_session_limit += 1
            return "session limit reached"
        if self.handshaking >= self.limits.max_handshakes:
            self.counters.refused_handshake_limit += 1
            return "concurrent handshake limit reached"
        if consume and not self._take_token(remote.host):
            self.counters.refused_rate_limit += 1
            return "per-source handshake rate exceeded"
        return None

    def _take_token(self, source: str) -> bool:
        now = self.clock()
        rate, burst = self.limits.handshakes_per_source_per_second, self.limits.handshake_burst
        tokens, stamp = self._buckets.pop(source, (float(burst), now))
        tokens = min(float(burst), tokens + (now - stamp) * rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.limits.tracked_sources:  # bounded, oldest first
            self._buckets.popitem(last=False)
        return allowed

    # --- handshakes (worker threads) ---------------------------------------------------------

    def _handshake_step(self, conn: DtlsConnection, data: bytes) -> None:
        if conn.busy:
            _queue(conn, data)
            return
        conn.busy = True
        try:
            self.executor.post(self._handshake_job, conn, data)
        except RuntimeError:  # the executor is shut down: the server is stopping
            conn.busy = False
            return
        self.jobs_running += 1
        self._expect_results()

    def _handshake_job(self, conn: DtlsConnection, data: bytes) -> None:
        """Worker thread: one handshake step; its flight leaves from here.

        The loop is not woken for the result: it picks it up (``_take_results``) when the
        peer's next datagram wakes it anyway, or at the latest after RESULT_DELAY. On one
        core, waking the loop after every step cost more than anything else we add to
        OpenSSL's own work per handshake (two extra loop turns, each a self-pipe round).
        The result is queued before the flight leaves, so the peer's answer, which wakes
        the loop, always finds it there."""
        output: list[bytes] = []
        retransmit_at = None
        try:
            records, error = conn.session.feed(data), None
            output = conn.session.take_output()
            # Read here too: OpenSSL calls on the loop would wait for this thread's GIL.
            retransmit_at = _retransmit_deadline(conn.session)
        except Exception as exc:  # reported on the loop, which closes the session
            records, error = [], exc
        self._results.append((conn, records, error, retransmit_at))
        sent = 0
        try:
            for datagram in output:
                sent += send(conn.sock, datagram, conn.remote, conn.local)
        except OSError:
            pass  # the socket closed under us: the server is stopping
        self._sent_by_workers.append(sent)
        try:
            self._ssl_objects.replenish(self.context)
        except RuntimeError:
            log.exception("cannot prepare listener objects")

    def _take_results(self) -> None:
        """Loop: finish the handshake steps the workers have done since the last look."""
        results = self._results
        for _ in range(len(results)):
            conn, records, error, retransmit_at = results.popleft()
            self.jobs_running -= 1
            self._handshake_done(conn, records, error, retransmit_at)
        self._count_worker_sends()

    def _count_worker_sends(self) -> None:
        sent = self._sent_by_workers
        for _ in range(len(sent)):
            self.counters.datagrams_out += sent.popleft()

    def _results_due(self) -> None:
        self._results_timer = None
        self._take_results()
        self._expect_results()

    def _expect_results(self) -> None:
        if self.jobs_running and self._results_timer is None and self._loop is not None:
            self._results_timer = self._loop.call_later(RESULT_DELAY, self._results_due)

    def _handshake_done(self, conn: DtlsConnection, records: list[bytes],
                        error: Exception | None, retransmit_at: float | None) -> None:
        conn.busy = False
        if self.sessions.get((conn.local, conn.remote)) is not conn:
            return  # closed while the worker ran; already freed by _close
        if error is not None:
            self._close(conn, f"handshake error: {error!r}", notify=False)
            return
        self._flush(conn)
        state = conn.session.state
        if state is State.FAILED:
            self.counters.handshakes_failed += 1
            self._rate_limited_log(
                "handshake-failed",
                "dtls handshake from %s failed: %s",
                conn.remote,
                conn.session.failure,
            )
            self._close(conn, conn.session.failure or "handshake failed", notify=False)
            return
        if state is State.ESTABLISHED:
            self._established(conn, records)
        else:
            self._arm_retransmit(conn, retransmit_at)
        backlog = conn.backlog
        while backlog and self.sessions.get((conn.local, conn.remote)) is conn:
            next_data = backlog.popleft()
            if conn.session.state is State.HANDSHAKING:
                self._handshake_step(conn, next_data)  # busy again: the rest waits for it
                return
            self._application(conn, next_data)
        conn.backlog = None

    def _arm_retransmit(self, conn: DtlsConnection, at: float | None) -> None:
        """Retransmit the last flight at ``at`` (time.monotonic)."""
        if conn.retransmit is not None:
            conn.retransmit.cancel()
            conn.retransmit = None
        if at is None or self._loop is None:
            return
        conn.retransmit = self._loop.call_later(max(at - time.monotonic(), 0.001),
                                                self._retransmit, conn)

    def _retransmit(self, conn: DtlsConnection) -> None:
        conn.retransmit = None
        if conn.busy or conn.session.state is not State.HANDSHAKING:
            return
        conn.session.handle_timeout()
        self._flush(conn)
        if conn.session.state is State.FAILED:
            self._close(conn, conn.session.failure or "handshake timed out", notify=False)
        else:
            self._arm_retransmit(conn, _retransmit_deadline(conn.session))

    def _established(self, conn: DtlsConnection, early: list[bytes]) -> None:
        self.handshaking -= 1
        conn.session.context.peers.pop(ssl_address(conn.session._ssl), None)
        if conn.retransmit is not None:
            conn.retransmit.cancel()
            conn.retransmit = None
        self.counters.handshakes_completed += 1
        if conn.session.resumed:
            self.counters.sessions_resumed += 1
        if log.isEnabledFor(logging.INFO):  # cipher and resumed are OpenSSL calls
            log.info("dtls session established peer=%s local=%s cipher=%s resumed=%s",
                     conn.remote, conn.local, conn.session.cipher, conn.session.resumed)
        try:
            conn.handler = self.on_session(conn)
        except Exception:
            log.exception("session handler refused %s", conn.remote)
            self._close(conn, "no handler", notify=True)
            return
        for record in early:
            conn.handler.data_received(record)

    # --- established sessions ----------------------------------------------------------------

    def _application(self, conn: DtlsConnection, data: bytes) -> None:
        if conn.busy:
            _queue(conn, data)
            return
        handed_over = conn.session.protects_records
        records = conn.session.feed(data)
        if not handed_over and conn.session.protects_records:
            self.counters.sessions_handed_over += 1
        self._flush(conn)  # e.g. a retransmitted Finished flight
        for record in records:
            if conn.handler is not None:
                try:
                    conn.handler.data_received(record)
                except Exception:
                    log.exception("handler error for %s", conn.remote)
        if conn.session.state in (State.CLOSED, State.FAILED):
            self._close(conn, conn.session.failure or "peer closed", notify=True)

    def _flush(self, conn: DtlsConnection) -> None:
        for datagram in conn.session.take_output():
            self._send(conn.sock, datagram, conn.remote, conn.local)

    def _send(self, sock: socket.socket, data: bytes, remote: Address, local: Address) -> None:
        if send(sock, data, remote, local):
            self.counters.datagrams_out += 1

    def _close(self, conn: DtlsConnection, reason: str, *, notify: bool) -> None:
        if self.sessions.get((conn.local, conn.remote)) is not conn:
            return
        del self.sessions[(conn.local, conn.remote)]
        if conn.retransmit is not None:
            conn.retransmit.cancel()
        was_handshaking = conn.session.state is State.HANDSHAKING or conn.handler is None
        if was_handshaking:
            self.handshaking -= 1
        if conn.session._ssl is not None:
            conn.session.context.peers.pop(ssl_address(conn.session._ssl), None)
        if not conn.busy:
            conn.session.close()
            self._flush(conn)
            conn.session.free()
        else:
            # A worker still uses the SSL object: free it when the job returns.
            conn.backlog = None
            self._free_later(conn)
        self.counters.sessions_closed += 1
        if notify and conn.handler is not None:
            try:
                conn.handler.connection_lost(reason)
            except Exception:
                log.exception("handler error on close for %s", conn.remote)

    def _free_later(self, conn: DtlsConnection) -> None:
        assert self._loop is not None

        def check() -> None:
            if conn.busy:
                self._loop.call_later(0.05, check)  # type: ignore[union-attr]
            else:
                conn.session.free()

        self._loop.call_soon(check)

    # --- timers ------------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        if self._sweeper is not None:
            self._sweeper.cancel()  # start() twice must not leave a second sweeper running
        self._sweeper = self._loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        now = self.clock()
        for conn in list(self.sessions.values()):
            if conn.session.state is State.HANDSHAKING or conn.handler is None:
                if now - conn.created_at >= self.limits.handshake_deadline:
                    self.counters.handshakes_timed_out += 1
                    self._close(conn, "handshake deadline passed", notify=False)
            elif now - conn.last_activity >= self.limits.idle_timeout:
                self.counters.sessions_idle_closed += 1
                self._close(conn, "idle timeout", notify=True)
        self._ssl_objects.free_dead()
        self._count_worker_sends()  # a last step's flight, counted after its result was taken
        self._trim_after_closes(self.counters.sessions_closed)
        self._schedule_sweep()

    # --- helpers -----------------------------------------------------------------------------

    def _new_listener(self, *, free_old: bool = True) -> None:
        if self._listener is not None and free_old:
            self._ssl_objects.dispose(self._listener)
        self._listener = self._ssl_objects.take(self.context)


def _retransmit_deadline(session: SecureSession) -> float | None:
    """When (time.monotonic) to resend the session's last flight, or None."""
    delay = session.timeout()
    return None if delay is None else time.monotonic() + delay


def new_listener(context: ServerContext) -> Any:
    """An SSL object in server mode on memory BIOs, ready for DTLSv1_listen."""
    listener = ssl.SSL_new(context.ptr)
    if listener == ffi.NULL:
        raise RuntimeError("SSL_new failed: " + error_queue())
    attach_memory_bios(listener)
    ssl.SSL_set_accept_state(listener)
    return listener



def _queue(conn: DtlsConnection, data: bytes) -> None:
    if conn.backlog is None:
        conn.backlog = deque(maxlen=16)  # bounded: a flood of retransmissions drops the oldest
    conn.backlog.append(data)


def _drain(bio: Any) -> bytes:
    pending = ssl.BIO_ctrl(bio, BIO_CTRL_PENDING, 0, ffi.NULL)
    if pending <= 0:
        return b""
    buf = ffi.new("unsigned char[]", pending)
    n = ssl.BIO_read(bio, buf, pending)
    return bytes(ffi.buffer(buf, n)) if n > 0 else b""
