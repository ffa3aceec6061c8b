"""The DTLS server endpoint: sockets, stateless cookies, admission, limits, timers.

Every datagram from an unknown (local, remote) pair goes through ``DTLSv1_listen`` on one
reusable listener object, so a spoofed or unfinished ClientHello costs a HelloVerifyRequest
and no state. Only a ClientHello with a valid cookie becomes a session, and only while the
session and handshake caps and the per-source rate allow it; otherwise the client gets no
cookie (it retries later) and we count and log it; dtls_admission.py decides, keeping
room for sources with no handshake pending when a few sources hold many half-open ones.
Handshake crypto runs in worker threads (OpenSSL releases the GIL), one job at a time per
session, so established sessions keep their latency during a reconnect storm; a worker
sends the flight it produced and leaves its bookkeeping for the loop's next turn. A
session's OpenSSL state is freed as soon as it closes, fails, misses its handshake deadline
or idles out.

What happens to a session once its cookie is verified is in dtls_sessions.py; the pool of
SSL objects in dtls_ssl_objects.py. Imports nothing above gateway.transport.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from gateway.transport.dtls_admission import (
    HANDSHAKE_LIMIT,
    RATE_LIMIT,
    SESSION_LIMIT,
    SOURCE_LIMIT,
    Admission,
    Limits,
)
from gateway.transport.dtls_sessions import DtlsConnection, DtlsSessions, SessionHandler
from gateway.transport.dtls_ssl_objects import drain
from gateway.transport.openssl_ffi import SSL_OP_COOKIE_EXCHANGE, crypto, ffi, ssl
from gateway.transport.secure_session import SecureSession, State
from gateway.transport.tls_context import Kind, ServerContext, ssl_address
from gateway.transport.udp import Address, forget, open_udp_socket, receive

log = logging.getLogger(__name__)
_BIO_CTRL_RESET = 1
_BATCH = 64  # datagrams per readiness callback: fairness between sockets
_HANDSHAKE, _CHANGE_CIPHER_SPEC, _ALERT = 22, 20, 21  # record content types
_HANDSHAKING = State.HANDSHAKING  # per datagram: ``State.X`` is a slow lookup in 3.11
_REFUSAL_COUNTERS = {
    SESSION_LIMIT: "refused_session_limit",
    HANDSHAKE_LIMIT: "refused_handshake_limit",
    SOURCE_LIMIT: "refused_source_limit",
    RATE_LIMIT: "refused_rate_limit",
}


class DtlsServer(DtlsSessions):
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
        super().__init__(context, on_session, self.limits.handshake_threads, clock=clock,
                         nice=self.limits.handshake_nice)
        self._sockets: list[socket.socket] = []
        self._listener: Any = None
        self.admission: Admission[DtlsConnection] = Admission(self.limits)
        self._sweeper: asyncio.TimerHandle | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, addresses: list[tuple[str, int]], *, freebind: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            for host, port in addresses:
                sock = open_udp_socket(host, port, freebind=freebind)
                self._sockets.append(sock)
                self._loop.add_reader(sock.fileno(), self._readable, sock)
                log.debug("dtls listening on %s", Address(host, sock.getsockname()[1]))
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
        for conn in [*self.replacements.values(), *self.sessions.values()]:
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

    @property
    def handshaking(self) -> int:
        """Handshakes past the cookie, not yet established (nor failed, nor timed out)."""
        return self.admission.handshaking

    def _datagram(self, sock: socket.socket, data: bytes, local: Address, remote: Address) -> None:
        conn = self.sessions.get((local, remote))
        if conn is not None and (data[0] == _HANDSHAKE or self.replacements):
            # Only a handshake record, or a new handshake beside an established session,
            # can belong elsewhere (``_route``); application data goes to its session.
            conn = self._route(conn, data)
        if conn is not None:
            conn.last_activity = self.clock()
            if conn.session.state is _HANDSHAKING:
                self._handshake_step(conn, data)
            else:
                self._application(conn, data)
            return
        if data[0] != 22:  # not a handshake record: nothing to talk about without a session
            self.counters.dropped_garbage += 1
            return
        self._listen(sock, data, local, remote)

    def _route(self, conn: DtlsConnection, data: bytes) -> DtlsConnection | None:
        """Which connection of this address a datagram is for; None: the cookie exchange.

        A ClientHello with a ClientHello.random we do not know is a new handshake: the
        client restarted on the same port (NAT, a rebooted CPE). It gets a stateless
        HelloVerifyRequest like any other, and only a return with a valid cookie starts a
        handshake, beside the established session (RFC 6347 §4.2.8)."""
        hello = client_hello_random(data)
        pending = self.replacements.get((conn.local, conn.remote))
        if hello is not None:
            handshake = pending or (conn if conn.session.state is State.HANDSHAKING else None)
            if handshake is not None and handshake.client_random in (hello, None):
                return handshake  # a retransmission
            return None
        if pending is not None and (pending.busy or data[0] in (_HANDSHAKE, _CHANGE_CIPHER_SPEC)
                                    or (data[0] == _ALERT and data[3:5] == b"\0\0")):
            # The new handshake's flights, including its encrypted Finished. While one of its
            # steps runs, everything waits in its backlog: the step may be the one that
            # establishes it, and its flight has left, so the client may already send
            # application data under the new keys (the old session's own datagrams in that
            # window are lost: the new keys cannot open them, and CoAP resends). Otherwise
            # application data and the old keys' alerts stay with the established session.
            return pending
        return conn

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
            out = drain(wbio)
            ssl.BIO_ctrl(rbio, _BIO_CTRL_RESET, 0, ffi.NULL)
            if result < 0:
                crypto.ERR_clear_error()
                self.counters.dropped_garbage += 1
                self._new_listener()  # a listener in an error state is not reused
                return
            if out:
                refusal = self.admission.check(remote.host, len(self.sessions), self.clock(),
                                               consume=False).refusal
                if refusal is not None:
                    self._count_refusal(refusal)
                    self._rate_limited_event(refusal, "handshake.refused", "no cookie sent",
                                             peer=remote, reason=refusal)
                    return
                self.counters.hello_verify_requests += 1
                self._send(sock, out, remote, local)
            return
        # A valid cookie: this listener object becomes the session.
        verdict = self.admission.check(remote.host, len(self.sessions), self.clock(),
                                       consume=True)
        if verdict.refusal is not None:
            self._count_refusal(verdict.refusal)
            self._rate_limited_event(verdict.refusal, "handshake.refused", "handshake refused",
                                     peer=remote, reason=verdict.refusal)
            self._new_listener(free_old=True)
            return
        if verdict.evict is not None:
            self.counters.handshakes_evicted += 1
            self._close(verdict.evict, "evicted for a source with fewer handshakes",
                        notify=False, alert=False)
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
        conn.client_random = client_hello_random(data)
        key = (local, remote)
        current = self.sessions.get(key)
        if current is None:
            self.sessions[key] = conn
        elif current.session.state is State.HANDSHAKING:
            # The client restarted during its handshake: nothing established to keep.
            self._close(current, "replaced by a new handshake", notify=False, alert=False)
            self.sessions[key] = conn
        else:
            earlier = self.replacements.get(key)
            if earlier is not None:
                self._close(earlier, "replaced by a new handshake", notify=False, alert=False)
            self.replacements[key] = conn
            self.counters.handshakes_replacing += 1
        self.admission.started(remote.host, conn)
        self.deadlines.started(conn)
        self.counters.handshakes_started += 1
        # The ClientHello is already inside the SSL object.
        self._handshake_step(conn, b"", flight=data)

    def _count_refusal(self, refusal: str) -> None:
        name = _REFUSAL_COUNTERS[refusal]
        setattr(self.counters, name, getattr(self.counters, name) + 1)

    def _handshake_over(self, conn: DtlsConnection) -> None:
        self.admission.ended(conn.remote.host, conn)

    # --- timers ------------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        assert self._loop is not None
        if self._sweeper is not None:
            self._sweeper.cancel()  # start() twice must not leave a second sweeper running
        self._sweeper = self._loop.call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        now = self.clock()
        deadline = self.admission.deadline()  # shorter when the handshake table fills up
        idle_timeout = self.limits.idle_timeout
        for conn in list(self.deadlines.past_handshake_deadline(now, deadline)):
            if not self._is_live(conn):
                continue
            if conn.session.state is State.HANDSHAKING or conn.handler is None:
                if conn.busy:
                    # Its next step waits for our workers, not for the peer. In a failover
                    # storm on a busy core, closing these made each client start over (a
                    # resumed client already counts itself connected) and fed the storm.
                    self.counters.handshakes_waiting_on_us += 1
                    self.deadlines.look_again(conn, now)
                    continue
                self.counters.handshakes_timed_out += 1
                self._close(conn, "handshake deadline passed", notify=False)
            else:
                self.deadlines.watch_idle(conn, conn.last_activity + idle_timeout)
        for conn in list(self.deadlines.idle_candidates(now)):
            if not self._is_live(conn):
                continue
            if now - conn.last_activity >= idle_timeout:
                self.counters.sessions_idle_closed += 1
                self._close(conn, "idle timeout", notify=True)
            else:
                self.deadlines.watch_idle(conn, conn.last_activity + idle_timeout)
        self.deadlines.compact(len(self.sessions) + len(self.replacements), self._is_live)
        self._ssl_objects.free_dead()
        self._count_worker_sends()  # a last step's flight, counted after its result was taken
        self._trim_after_closes(self.counters.sessions_closed)
        self._schedule_sweep()

    # --- helpers -----------------------------------------------------------------------------

    def _new_listener(self, *, free_old: bool = True) -> None:
        if self._listener is not None and free_old:
            self._ssl_objects.dispose(self._listener)
        self._listener = self._ssl_objects.take(self.context)


def client_hello_random(data: bytes) -> bytes | None:
    """The ClientHello.random of a datagram that starts with an epoch-0 record holding the
    start of a ClientHello, else None (RFC 6347 §4.1, §4.2.2: record header 13 bytes,
    handshake header 12, then client_version and random)."""
    if len(data) < 59 or data[0] != _HANDSHAKE or data[3:5] != b"\0\0":
        return None
    if data[13] != 1 or data[19:22] != b"\0\0\0":  # client_hello, fragment_offset 0
        return None
    return data[27:59]
