"""Operations on one OpenSSL SSL object that keep no state of their own: its memory BIOs,
its record buffers, the DTLS handshake timer, the peer's certificate, the client's expected
server name and resumption, its session ticket.

``secure_session`` drives the connection (handshake, records, session state) with these;
``dtls_ssl_objects`` attaches the BIOs of the SSL objects it makes in advance. Builds on
``openssl_ffi`` only; knows nothing of sessions, sockets or our record layer.
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

from gateway.transport.openssl_ffi import (
    BIO_C_SET_BUF_MEM_EOF_RETURN,
    BIO_CTRL_PENDING,
    DTLS_CTRL_GET_TIMEOUT,
    SSL_CTRL_SET_TLSEXT_HOSTNAME,
    SSL_ERROR_NONE,
    OpenSSLError,
    TLSEXT_NAMETYPE_host_name,
    crypto,
    der_of,
    ffi,
    ssl,
)

#: What one SSL_read may return: a whole TLS record's plaintext, with room to spare.
_READ_CHUNK = 16 * 1024 + 512
#: SSL_free_buffers is safe from 3.0.14 on (CVE-2024-4741: it freed a buffer still in use).
_SAFE_FREE_BUFFERS = 0x300000E0
_FREE_BUFFERS_IS_SAFE = ssl.OpenSSL_version_num() >= _SAFE_FREE_BUFFERS

_buffers = threading.local()


def attach_memory_bios(ssl_ptr: Any) -> None:
    rbio = ssl.BIO_new(ssl.BIO_s_mem())
    wbio = ssl.BIO_new(ssl.BIO_s_mem())
    if rbio == ffi.NULL or wbio == ffi.NULL:
        raise OpenSSLError("BIO_new failed")
    # An empty read BIO means "no data yet" (retry), not end of file.
    ssl.BIO_ctrl(rbio, BIO_C_SET_BUF_MEM_EOF_RETURN, -1, ffi.NULL)
    ssl.SSL_set_bio(ssl_ptr, rbio, wbio)  # the SSL object owns both from now on


def bios_of(ssl_ptr: Any) -> tuple[Any, Any]:
    """(read BIO, write BIO)."""
    return ssl.SSL_get_rbio(ssl_ptr), ssl.SSL_get_wbio(ssl_ptr)


def pending(bio: Any) -> int:
    """Bytes waiting in a memory BIO."""
    return int(ssl.BIO_ctrl(bio, BIO_CTRL_PENDING, 0, ffi.NULL))


def drain(bio: Any) -> bytes:
    """Everything waiting in a memory BIO (what OpenSSL wrote), taken out."""
    waiting = pending(bio)
    if waiting <= 0:
        return b""
    out = ffi.new("unsigned char[]", waiting)
    n = ssl.BIO_read(bio, out, waiting)
    return bytes(ffi.buffer(out, n)) if n > 0 else b""


def _read_buffer() -> Any:
    """One 16 KiB read buffer per thread, not per session: an idle session must stay small
    (sessions are read on the event loop, or in a handshake worker thread)."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = ffi.new("unsigned char[]", _READ_CHUNK)
    return buffer


def read_records(ssl_ptr: Any, rbio: Any) -> tuple[list[bytes], int]:
    """The plaintexts OpenSSL reads from what the read BIO holds, and the SSL error that
    stopped it (SSL_ERROR_NONE once all is read); the error queue is left for the caller."""
    records = []
    for _ in range(64):  # bounded: one datagram holds few records
        crypto.ERR_clear_error()
        buffer = _read_buffer()
        n = ssl.SSL_read(ssl_ptr, buffer, _READ_CHUNK)
        if n <= 0:
            return records, ssl.SSL_get_error(ssl_ptr, n)
        records.append(bytes(ffi.buffer(buffer, n)))
        # SSL_has_pending, not SSL_pending: the latter misses the further records of a
        # datagram that OpenSSL has read but not yet decrypted.
        if pending(rbio) <= 0 and not ssl.SSL_has_pending(ssl_ptr):
            break  # all read: spare the SSL_read that would only say "want read"
    return records, SSL_ERROR_NONE


def release_buffers(ssl_ptr: Any) -> bool:
    """DTLS, established: hand the record buffers back between datagrams; whether they
    were (SSL_free_buffers refuses while a record is still unread).

    OpenSSL keeps a ~17.7 KiB read buffer per DTLS connection for its lifetime
    (SSL_MODE_RELEASE_BUFFERS only works for TLS). Freed here, it comes back from malloc
    for the next datagram, so all the sessions share a few buffers in the event loop's
    arena. ``restore_buffers`` must run before OpenSSL is used again.
    """
    return _FREE_BUFFERS_IS_SAFE and bool(ssl.SSL_free_buffers(ssl_ptr) == 1)


def restore_buffers(ssl_ptr: Any) -> None:
    """The buffers ``release_buffers`` handed back, again."""
    # DTLS writes (SSL_write, alerts, a retransmitted last flight while reading) do not
    # allocate a missing write buffer themselves: they would write through NULL.
    if ssl.SSL_alloc_buffers(ssl_ptr) != 1:
        raise MemoryError("SSL_alloc_buffers failed")


def handshake_timeout(ssl_ptr: Any) -> float | None:
    """DTLS: seconds until the handshake retransmission timer fires, or None."""
    tv = ffi.new("struct timeval *")
    if ssl.SSL_ctrl(ssl_ptr, DTLS_CTRL_GET_TIMEOUT, 0, tv) <= 0:
        return None
    return float(tv.tv_sec + tv.tv_usec / 1e6)


def peer_certificate(ssl_ptr: Any) -> bytes | None:
    """The peer's certificate (DER), if it sent one."""
    x = ssl.SSL_get1_peer_certificate(ssl_ptr)
    if x == ffi.NULL:
        return None
    try:
        return der_of(x)
    finally:
        crypto.X509_free(x)


def expect_server_name(ssl_ptr: Any, name: str) -> None:
    """Client: verify the server's identity against ``name`` and send it as SNI."""
    # RFC 9132 §7.1: match the server's identity per RFC 6125, and send SNI.
    try:
        ipaddress.ip_address(name)
        param = ssl.SSL_get0_param(ssl_ptr)
        if ssl.X509_VERIFY_PARAM_set1_ip_asc(param, name.encode()) != 1:
            raise OpenSSLError(f"cannot expect IP address {name}")
    except ValueError:
        if ssl.SSL_set1_host(ssl_ptr, name.encode()) != 1:
            raise OpenSSLError(f"cannot expect host name {name}") from None
        ssl.SSL_ctrl(
            ssl_ptr,
            SSL_CTRL_SET_TLSEXT_HOSTNAME,
            TLSEXT_NAMETYPE_host_name,
            ffi.new("char[]", name.encode()),
        )


def set_resumption(ssl_ptr: Any, der: bytes) -> None:
    """Client: offer the session ``der`` (from ``session_ticket``); a stale or corrupt one
    is ignored, and the handshake is a full one."""
    buf = ffi.new("unsigned char[]", der)
    pp = ffi.new("const unsigned char **", buf)
    session = ssl.d2i_SSL_SESSION(ffi.NULL, pp, len(der))
    if session == ffi.NULL:
        crypto.ERR_clear_error()
        return
    ssl.SSL_set_session(ssl_ptr, session)
    ssl.SSL_SESSION_free(session)


def session_ticket(ssl_ptr: Any) -> bytes | None:
    """The connection's session (DER), to offer next time."""
    session = ssl.SSL_get1_session(ssl_ptr)
    if session == ffi.NULL:
        return None
    try:
        out = ffi.new("unsigned char **")
        length = ssl.i2d_SSL_SESSION(session, out)
        if length <= 0:
            return None
        try:
            return bytes(ffi.buffer(out[0], length))
        finally:
            crypto.CRYPTO_free(out[0], b"secure_session", 0)
    finally:
        ssl.SSL_SESSION_free(session)
