"""The DTLS server's sessions once a cookie has been verified: handshake steps in worker
threads, retransmission of the server's flights, established sessions' records to and from
the layer above, and closing (which frees the session's OpenSSL state at once).

``DtlsSessions`` is the base of ``DtlsServer`` (dtls_server.py), which owns the sockets, the
stateless cookie exchange, admission and the sweeper, and creates the sessions kept here.
Imports nothing above gateway.transport.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.transport.dtls_ssl_objects import SslObjects
from gateway.transport.endpoint import HANDSHAKE_NICE, EndpointBase
from gateway.transport.secure_session import PeerCredential, SecureSession, State
from gateway.transport.session_deadlines import SessionDeadlines
from gateway.transport.tls_context import Kind, ServerContext, ssl_address
from gateway.transport.udp import Address, send

log = logging.getLogger(__name__)
#: How long a finished handshake step may wait for the loop to take it up when no datagram
#: wakes the loop first (its flight has already left; this is bookkeeping: the
#: retransmission timer, the established session's handler).
RESULT_DELAY = 0.01
#: For the per-datagram path: ``State.X`` costs an EnumType.__getattr__ slot call in 3.11.
_ENDED = (State.CLOSED, State.FAILED)


@dataclass
class Counters:
    datagrams_in: int = 0
    datagrams_out: int = 0
    hello_verify_requests: int = 0
    handshakes_started: int = 0
    handshakes_completed: int = 0
    handshakes_failed: int = 0
    handshakes_timed_out: int = 0
    #: Handshakes past their deadline while their next step waited for our workers: given
    #: another deadline rather than closed (the delay was ours, not the peer's).
    handshakes_waiting_on_us: int = 0
    #: A handshake flight the peer sent again while the step on the same flight still
    #: waited for our workers: dropped, as the answer to it is on its way.
    handshake_resends_dropped: int = 0
    refused_session_limit: int = 0
    refused_handshake_limit: int = 0
    refused_rate_limit: int = 0
    refused_source_limit: int = 0
    #: Half-open handshakes closed to make room for a source with fewer pending.
    handshakes_evicted: int = 0
    #: Handshakes started beside an established session of the same address (RFC 6347
    #: §4.2.8), and the sessions they replaced once established.
    handshakes_replacing: int = 0
    sessions_replaced: int = 0
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
        endpoint: DtlsSessions,
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
        #: The ClientHello.random this handshake started with: a ClientHello with another
        #: one is a new handshake (the client restarted), not a retransmission.
        self.client_random: bytes | None = None
        #: The datagram the handshake step in a worker (or waiting for one) is working on.
        self.step_input: bytes | None = None

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


class DtlsSessions(EndpointBase):
    """The session table and everything done to a session after its cookie was verified."""

    def __init__(
        self,
        context: ServerContext,
        on_session: Callable[[DtlsConnection], SessionHandler],
        threads: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        nice: int = HANDSHAKE_NICE,
    ) -> None:
        super().__init__(context, threads, clock=clock, nice=nice)
        self.on_session = on_session
        self.counters = Counters()
        self.sessions: dict[Key, DtlsConnection] = {}
        #: New handshakes from the address of an established session (the client restarted
        #: on the same port): the old session stays in ``sessions`` until the new one is
        #: established, then the new one takes its place (RFC 6347 §4.2.8).
        self.replacements: dict[Key, DtlsConnection] = {}
        #: Handshake deadlines and idle timeouts, looked at without a pass over the table.
        self.deadlines = SessionDeadlines()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl_objects = SslObjects()
        #: Handshake steps done by the workers, not yet taken up by the loop.
        self._results: deque[_StepResult] = deque()
        self._sent_by_workers: deque[int] = deque()  # datagrams, counted on the loop
        self._results_timer: asyncio.TimerHandle | None = None
        self.jobs_running = 0

    def _handshake_over(self, conn: DtlsConnection) -> None:
        """``conn`` no longer counts as a handshake (established, failed, closed)."""
        raise NotImplementedError

    def _is_live(self, conn: DtlsConnection) -> bool:
        key = (conn.local, conn.remote)
        return self.sessions.get(key) is conn or self.replacements.get(key) is conn

    # --- handshakes (worker threads) ---------------------------------------------------------

    def _handshake_step(self, conn: DtlsConnection, data: bytes, *,
                        flight: bytes | None = None) -> None:
        """Run a handshake step on ``data`` in a worker (``flight``: the datagram, when the
        SSL object already holds it)."""
        if conn.busy:
            if _repeats_a_waiting_flight(conn, data):
                # The peer's timer ran out while its flight waited in our queue. Feeding
                # the copy to OpenSSL later costs a worker step and answers nothing. In a
                # failover storm each client resends ~3 times while it waits.
                self.counters.handshake_resends_dropped += 1
                return
            _queue(conn, data)
            return
        conn.step_input = flight if flight is not None else data
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
        conn.step_input = None
        if not self._is_live(conn):
            return  # closed while the worker ran; already freed by _close
        if error is not None:
            self._close(conn, f"handshake error: {error!r}", notify=False)
            return
        self._flush(conn)
        state = conn.session.state
        if state is State.FAILED:
            self.counters.handshakes_failed += 1
            self._rate_limited_event("handshake-failed", "handshake.failed", "handshake failed",
                                     peer=conn.remote, local=conn.local,
                                     reason=conn.session.failure)
            self._close(conn, conn.session.failure or "handshake failed", notify=False)
            return
        if state is State.ESTABLISHED:
            self._established(conn, records)
        else:
            self._arm_retransmit(conn, retransmit_at)
        backlog = conn.backlog
        while backlog and self._is_live(conn):
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
        self._handshake_over(conn)
        key = (conn.local, conn.remote)
        if self.replacements.get(key) is conn:
            # RFC 6347 §4.2.8: after a correct Finished the server MUST abandon the previous
            # association. Not before: a forged ClientHello must not cost a session. No
            # close_notify: it would reach the new client under the old keys.
            del self.replacements[key]
            self.counters.sessions_replaced += 1
            self._close(self.sessions[key], "replaced by a new session from the same address",
                        notify=True, alert=False)
            self.sessions[key] = conn
        conn.session.context.peers.pop(ssl_address(conn.session._ssl), None)
        if conn.retransmit is not None:
            conn.retransmit.cancel()
            conn.retransmit = None
        self.counters.handshakes_completed += 1
        if conn.session.resumed:
            self.counters.sessions_resumed += 1
        self._handshake_took(self.clock() - conn.created_at)
        if log.isEnabledFor(logging.DEBUG):  # the role logs session.established
            log.debug("dtls handshake completed peer=%s local=%s cipher=%s resumed=%s",
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
        if conn.session.state in _ENDED:
            self._close(conn, conn.session.failure or "peer closed", notify=True)

    def _flush(self, conn: DtlsConnection) -> None:
        for datagram in conn.session.take_output():
            self._send(conn.sock, datagram, conn.remote, conn.local)

    def _send(self, sock: socket.socket, data: bytes, remote: Address, local: Address) -> None:
        if send(sock, data, remote, local):
            self.counters.datagrams_out += 1

    def _close(self, conn: DtlsConnection, reason: str, *, notify: bool,
               alert: bool = True) -> None:
        """Forget ``conn`` and free its OpenSSL state; ``alert``: send close_notify (or
        the pending alert); ``notify``: tell the handler."""
        key = (conn.local, conn.remote)
        if self.sessions.get(key) is conn:
            del self.sessions[key]
            successor = self.replacements.pop(key, None)
            if successor is not None:  # the old session ended first: the new one is next
                self.sessions[key] = successor
        elif self.replacements.get(key) is conn:
            del self.replacements[key]
        else:
            return
        if conn.retransmit is not None:
            conn.retransmit.cancel()
        self._handshake_over(conn)  # no-op unless it was still a handshake
        if conn.session._ssl is not None:
            conn.session.context.peers.pop(ssl_address(conn.session._ssl), None)
        if not conn.busy:
            if alert:
                conn.session.close()
                self._flush(conn)
            conn.session.free()
        else:
            # A worker still uses the SSL object: free it when the job returns.
            conn.backlog = None
            self._free_later(conn)
        self.counters.sessions_closed += 1
        # Dropped here: the handler's session layers point back at the connection, and that
        # cycle (~24 objects per session) left every closed session to a full garbage
        # collection, a stall of up to a second at 10,000 sessions (issue 21's benches).
        handler, conn.handler = conn.handler, None
        if notify and handler is not None:
            try:
                handler.connection_lost(reason)
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


def _retransmit_deadline(session: SecureSession) -> float | None:
    """When (time.monotonic) to resend the session's last flight, or None."""
    delay = session.timeout()
    return None if delay is None else time.monotonic() + delay


def _repeats_a_waiting_flight(conn: DtlsConnection, data: bytes) -> bool:
    """Whether ``data`` is a handshake flight sent again whose first copy is still waiting:
    in the running step or in the backlog."""
    signature = flight_signature(data)
    if signature is None:
        return False
    if conn.step_input and flight_signature(conn.step_input) == signature:
        return True
    return conn.backlog is not None and any(
        flight_signature(waiting) == signature for waiting in conn.backlog)


_CHANGE_CIPHER_SPEC_OR_HANDSHAKE = (20, 22)


def flight_signature(data: bytes) -> bytes | None:
    """What a handshake flight keeps when it is sent again (RFC 6347 §4.2.4): each record's
    type, version, epoch and length, and the plaintext of epoch 0. A retransmission has new
    record sequence numbers, and its encrypted Finished (epoch 1) new ciphertext of the
    same length. None for a datagram with anything but handshake and change_cipher_spec
    records (application data of equal length is not a repeat), or a torn record."""
    parts = []
    at, end = 0, len(data)
    while at < end:
        if end - at < 13 or data[at] not in _CHANGE_CIPHER_SPEC_OR_HANDSHAKE:
            return None
        body_end = at + 13 + int.from_bytes(data[at + 11:at + 13], "big")
        if body_end > end:
            return None
        parts.append(data[at:at + 5])  # type, version, epoch
        parts.append(data[at + 11:at + 13])  # length; the sequence number is skipped
        if data[at + 3:at + 5] == b"\0\0":
            parts.append(data[at + 13:body_end])
        at = body_end
    return b"".join(parts) if parts else None


def _queue(conn: DtlsConnection, data: bytes) -> None:
    if conn.backlog is None:
        conn.backlog = deque(maxlen=16)  # bounded: a flood of retransmissions drops the oldest
    conn.backlog.append(data)
