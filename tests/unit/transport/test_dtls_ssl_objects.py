"""SSL objects the DTLS server's workers make and free for the event loop (SslObjects)."""

from __future__ import annotations

from pathlib import Path

from gateway.transport.dtls_ssl_objects import SslObjects
from gateway.transport.openssl_ffi import ssl
from gateway.transport.tls_context import Kind, ServerContext, ServerCredentials


def context(pki: Path) -> ServerContext:
    return ServerContext(Kind.DTLS, ServerCredentials(
        pki / "server.pem", pki / "server.key", pki / "ca.pem"))


def test_listeners_come_from_the_spares_a_worker_made(pki: Path) -> None:
    ctx, objects = context(pki), SslObjects()
    objects.replenish(ctx)
    spares = [ptr for _, ptr in objects._spares]
    assert len(spares) == min(SslObjects.SPARES, SslObjects.REFILL)
    assert objects.take(ctx) == spares[0]
    assert len(objects._spares) == len(spares) - 1
    for ptr in spares:
        assert ssl.SSL_get_rbio(ptr) and ssl.SSL_get_wbio(ptr)  # ready for DTLSv1_listen
    objects.dispose(spares[0])
    objects.clear()


def test_without_spares_the_loop_makes_its_own(pki: Path) -> None:
    ctx, objects = context(pki), SslObjects()
    ptr = objects.take(ctx)
    assert ptr and not objects._spares
    objects.dispose(ptr)
    objects.clear()


def test_spares_of_replaced_credentials_are_freed_not_used(pki: Path) -> None:
    old, new, objects = context(pki), context(pki), SslObjects()
    objects.replenish(old)
    stale = {ptr for _, ptr in objects._spares}
    fresh = objects.take(new)
    assert fresh not in stale
    assert not objects._spares and len(objects._dead) == len(stale)
    objects.dispose(fresh)
    objects.replenish(new)  # a worker's turn frees what is dead first
    assert not objects._dead
    objects.clear()
    assert not objects._spares and not objects._dead


def test_dead_objects_are_bounded(pki: Path) -> None:
    ctx, objects = context(pki), SslObjects()
    for _ in range(SslObjects.MAX_DEAD + 1):
        objects.dispose(objects.take(ctx))
    assert len(objects._dead) <= SslObjects.MAX_DEAD
    objects.clear()
