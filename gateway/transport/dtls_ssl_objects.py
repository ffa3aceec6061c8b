"""The DTLS server's pool of OpenSSL SSL objects: listener objects made in advance by the
handshake workers, and objects nobody uses any more, freed by the workers too.

Owns SSL_new / SSL_free for the DTLS server; knows nothing of sockets or sessions.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from gateway.transport.openssl_connection import attach_memory_bios
from gateway.transport.openssl_ffi import BIO_CTRL_PENDING, error_queue, ffi, ssl
from gateway.transport.tls_context import ServerContext


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


def new_listener(context: ServerContext) -> Any:
    """An SSL object in server mode on memory BIOs, ready for DTLSv1_listen."""
    listener = ssl.SSL_new(context.ptr)
    if listener == ffi.NULL:
        raise RuntimeError("SSL_new failed: " + error_queue())
    attach_memory_bios(listener)
    ssl.SSL_set_accept_state(listener)
    return listener


def drain(bio: Any) -> bytes:
    """Everything pending in a memory BIO."""
    pending = ssl.BIO_ctrl(bio, BIO_CTRL_PENDING, 0, ffi.NULL)
    if pending <= 0:
        return b""
    buf = ffi.new("unsigned char[]", pending)
    n = ssl.BIO_read(bio, buf, pending)
    return bytes(ffi.buffer(buf, n)) if n > 0 else b""
