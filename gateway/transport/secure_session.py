"""One (D)TLS connection on memory BIOs: bytes in, plaintext and bytes out, no sockets.

The endpoint owns sockets and timers; a ``SecureSession`` only transforms bytes. Its OpenSSL
state (~100 KiB during a handshake, less once established with RELEASE_BUFFERS) is freed
the moment ``free()`` is called, which endpoints do on close, so nothing outlives a session
(the prototype kept closed sessions alive for 247 s in a CoAP library cache).
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.transport.dtls_records import (
    ALERT,
    ALERT_FATAL,
    ALERT_WARNING,
    APPLICATION_DATA,
    CLOSE_NOTIFY,
    HANDSHAKE,
    NO_RENEGOTIATION,
    SUITES,
    RecordProtection,
    split_records,
)
from gateway.transport.openssl_ffi import (
    BIO_C_SET_BUF_MEM_EOF_RETURN,
    BIO_CTRL_PENDING,
    DTLS_CTRL_GET_TIMEOUT,
    DTLS_CTRL_HANDLE_TIMEOUT,
    SSL_CTRL_SET_MAX_SEND_FRAGMENT,
    SSL_CTRL_SET_MTU,
    SSL_CTRL_SET_TLSEXT_HOSTNAME,
    SSL_ERROR_SSL,
    SSL_ERROR_SYSCALL,
    SSL_ERROR_WANT_READ,
    SSL_ERROR_WANT_WRITE,
    SSL_ERROR_ZERO_RETURN,
    SSL_OP_NO_QUERY_MTU,
    X509_V_OK,
    OpenSSLError,
    TLSEXT_NAMETYPE_host_name,
    crypto,
    der_of,
    error_queue,
    ffi,
    ssl,
)
from gateway.transport.tls_context import (
    ClientContext,
    Kind,
    ServerContext,
    leaf_problem,
    ssl_address,
)

log = logging.getLogger(__name__)

#: Datagram payload we allow for DTLS: the IPv6 minimum MTU less IPv6 and UDP headers
#: (RFC 9132 §7.3: assume 1280 when the PMTU is unknown).
DEFAULT_DATAGRAM_SIZE = 1280 - 40 - 8
#: Room for the DTLS record header, explicit nonce and AEAD tag around one CoAP message.
_DTLS_OVERHEAD = 64
#: OpenSSL's floor for max_send_fragment.
_MIN_SEND_FRAGMENT = 512
_READ_CHUNK = 16 * 1024 + 512
#: SSL_free_buffers is safe from 3.0.14 on (CVE-2024-4741: it freed a buffer still in use).
_SAFE_FREE_BUFFERS = 0x300000E0
#: RFC 6347 §4.1: the epoch of the keys of the first handshake (we never renegotiate).
_FIRST_EPOCH = 1
#: Protected records kept during a handshake for the replay window (a client's Finished and
#: its retransmissions); beyond that the session stays on OpenSSL.
_MAX_EARLY_RECORDS = 8
_MAX_EARLY_BYTES = 4096


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"  # orderly close_notify, either side
    FAILED = "failed"  # handshake or record error; the peer got an alert if possible


class HandshakeFailed(Exception):
    """The handshake was refused (bad certificate, unknown PSK, no shared cipher...)."""


@dataclass(frozen=True, slots=True)
class PeerCredential:
    """What authenticated the peer: the certificate (DER) or the PSK identity."""

    certificate: bytes | None = None
    psk_identity: bytes | None = None


class SecureSession:
    """A (D)TLS connection driven by ``feed()``; outputs are pulled with ``take_output()``."""

    def __init__(
        self,
        context: ServerContext | ClientContext,
        *,
        ssl_ptr: Any = None,
        datagram_size: int = DEFAULT_DATAGRAM_SIZE,
        server_name: str | None = None,
        resume: bytes | None = None,
        dispose: Callable[[Any], None] | None = None,
    ) -> None:
        self.kind = context.kind
        #: What takes the SSL object when this session is done with it; by default it is
        #: freed at once (a server endpoint leaves it to its handshake workers instead).
        self._dispose = dispose or ssl.SSL_free
        self.context = context  # keeps the SSL_CTX (and its callbacks) alive
        self.is_server = isinstance(context, ServerContext)
        self.datagram_size = datagram_size
        self.state = State.HANDSHAKING
        self.failure: str | None = None
        self.peer: PeerCredential | None = None
        self._buffers_released = False
        # After the hand-over (server, DTLS, AEAD suite, see dtls_records) the SSL object
        # is gone and these protect the records; until then, what OpenSSL last wrote.
        self._records: RecordProtection | None = None
        self._sealed: list[bytes] = []
        self._last_written: tuple[int, int] | None = None
        self._described: tuple[str, str, bool] | None = None
        self._may_protect_records = False
        # Server, DTLS: the protected records fed during the handshake (bounded), and from
        # the end of the handshake our own record protection run beside OpenSSL's as a
        # shadow: it opens every record OpenSSL is given, so that its replay window holds
        # exactly what OpenSSL authenticated when it takes over (see _hand_over).
        self._early: list[tuple[int, int, int, bytes, bytes]] | None = (
            [] if self.is_server and self.kind is Kind.DTLS else None
        )
        self._shadow: RecordProtection | None = None
        if ssl_ptr is None:
            ssl_ptr = ssl.SSL_new(context.ptr)
            if ssl_ptr == ffi.NULL:
                raise OpenSSLError("SSL_new failed: " + error_queue())
            attach_memory_bios(ssl_ptr)
            if self.is_server:
                ssl.SSL_set_accept_state(ssl_ptr)
            else:
                ssl.SSL_set_connect_state(ssl_ptr)
        self._ssl = ssl_ptr
        self._rbio, self._wbio = _bios_of(ssl_ptr)
        if self.kind is Kind.DTLS:
            ssl.SSL_set_options(ssl_ptr, SSL_OP_NO_QUERY_MTU)
            ssl.SSL_ctrl(ssl_ptr, SSL_CTRL_SET_MTU, datagram_size, ffi.NULL)
            # A DTLS record never exceeds the datagram, so the write buffer need not be
            # sized for 16 KiB records: measured 14 KiB less heap per session.
            ssl.SSL_ctrl(ssl_ptr, SSL_CTRL_SET_MAX_SEND_FRAGMENT,
                         max(_MIN_SEND_FRAGMENT, datagram_size - _DTLS_OVERHEAD), ffi.NULL)
        if server_name is not None and not self.is_server:
            self._expect_server_name(server_name)
        if resume is not None and not self.is_server:
            self._set_resumption(resume)

    # --- inputs ------------------------------------------------------------------------------

    def start(self) -> None:
        """Client side: produce the ClientHello."""
        self._progress()

    def feed(self, data: bytes) -> list[bytes]:
        """Bytes from the network (one datagram for DTLS); returns application data."""
        if self.state in (State.CLOSED, State.FAILED):
            return []
        if self._records is not None:
            return self._open(data)
        if self._ssl is None:
            return []
        if data and ssl.BIO_write(self._rbio, data, len(data)) != len(data):
            self._fail("BIO_write failed")
            return []
        after_handshake = None
        if self.state is State.HANDSHAKING:
            if self._early is not None:
                self._keep_early_records(data)
            self._progress()
            if self.state is not State.ESTABLISHED:
                return []
            after_handshake = self._start_shadow(data)
        self._restore_buffers()
        records = self._read_application_data()
        if self._shadow is not None:
            self._follow(split_records(data) if after_handshake is None else after_handshake,
                         records)
        if records and self._may_hand_over():
            self._hand_over()
        else:
            self._release_buffers()
        return records

    def send(self, plaintext: bytes) -> None:
        """Encrypt application data (one CoAP message); output via ``take_output()``."""
        if self.state is not State.ESTABLISHED or (self._ssl is None and self._records is None):
            raise OpenSSLError(f"cannot send in state {self.state.value}")
        if self.kind is Kind.DTLS and len(plaintext) + _DTLS_OVERHEAD > self.datagram_size:
            # A record must fit one datagram (RFC 9132 §7.3); callers use Block-wise transfer.
            raise OpenSSLError(f"{len(plaintext)} bytes do not fit one DTLS datagram")
        if self._records is not None:
            if not self._seal(APPLICATION_DATA, plaintext):
                raise OpenSSLError(self.failure or "cannot send")
            return
        crypto.ERR_clear_error()
        self._restore_buffers()
        written = ssl.SSL_write(self._ssl, plaintext, len(plaintext))
        self._release_buffers()
        if written != len(plaintext):
            self._fail("SSL_write failed: " + error_queue())
            raise OpenSSLError(self.failure or "SSL_write failed")

    def timeout(self) -> float | None:
        """Seconds until the DTLS handshake retransmission timer fires, or None."""
        if self.kind is not Kind.DTLS or self.state is not State.HANDSHAKING or self._ssl is None:
            return None
        tv = ffi.new("struct timeval *")
        if ssl.SSL_ctrl(self._ssl, DTLS_CTRL_GET_TIMEOUT, 0, tv) <= 0:
            return None
        return tv.tv_sec + tv.tv_usec / 1e6

    def handle_timeout(self) -> None:
        """Retransmit the last handshake flight if its timer expired (RFC 6347 §4.2.4)."""
        if self.kind is Kind.DTLS and self.state is State.HANDSHAKING and self._ssl is not None:
            if ssl.SSL_ctrl(self._ssl, DTLS_CTRL_HANDLE_TIMEOUT, 0, ffi.NULL) < 0:
                self._fail("handshake timed out: " + error_queue())

    def close(self) -> None:
        """Send close_notify (if established) and move to CLOSED; call ``free()`` after
        taking the output."""
        if self._records is not None and self.state is State.ESTABLISHED:
            self._seal(ALERT, bytes((ALERT_WARNING, CLOSE_NOTIFY)))
        elif self._ssl is not None and self.state is State.ESTABLISHED:
            crypto.ERR_clear_error()
            self._restore_buffers()
            ssl.SSL_shutdown(self._ssl)
        if self.state is not State.FAILED:
            self.state = State.CLOSED

    def free(self) -> None:
        """Release the OpenSSL state now (the BIOs go with the SSL object)."""
        if self._ssl is not None:
            self._take_psk_identity()
            self._dispose(self._ssl)
            self._ssl = None
            self._rbio = self._wbio = None
        if self._records is not None:
            self._records.forget()
            self._records = None
        self._drop_shadow()
        self._early = None
        if self.state in (State.HANDSHAKING, State.ESTABLISHED):
            self.state = State.CLOSED

    # --- outputs -----------------------------------------------------------------------------

    def take_output(self) -> list[bytes]:
        """Bytes to send: datagrams (DTLS, records packed up to the datagram size) or one
        stream chunk (TLS)."""
        if self._sealed:
            sealed, self._sealed = self._sealed, []
            if len(sealed) == 1:
                return sealed  # one record, and send() made sure it fits a datagram
            return pack_records(sealed, self.datagram_size)
        if self._wbio is None:
            return []
        pending = ssl.BIO_ctrl(self._wbio, BIO_CTRL_PENDING, 0, ffi.NULL)
        if pending <= 0:
            return []
        out = ffi.new("unsigned char[]", pending)
        n = ssl.BIO_read(self._wbio, out, pending)
        data = bytes(ffi.buffer(out, n)) if n > 0 else b""
        if self.kind is Kind.TLS:
            return [data] if data else []
        records = split_records(data)
        if self.is_server and records:
            _, epoch, seq, _, _ = records[-1]
            self._last_written = (epoch, seq)
        return pack_records([header + fragment for _, _, _, header, fragment in records],
                            self.datagram_size)

    @property
    def cipher(self) -> str:
        if self._described is not None:
            return self._described[0]
        if self._ssl is None:
            return ""
        c = ssl.SSL_get_current_cipher(self._ssl)
        return "" if c == ffi.NULL else ffi.string(ssl.SSL_CIPHER_get_name(c)).decode()

    @property
    def version(self) -> str:
        if self._described is not None:
            return self._described[1]
        return "" if self._ssl is None else ffi.string(ssl.SSL_get_version(self._ssl)).decode()

    @property
    def protects_records(self) -> bool:
        """Whether the records are protected here (dtls_records), OpenSSL's state freed."""
        return self._records is not None

    @property
    def resumed(self) -> bool:
        if self._described is not None:
            return self._described[2]
        return self._ssl is not None and bool(ssl.SSL_session_reused(self._ssl))

    def session_ticket(self) -> bytes | None:
        """Client side: the session to offer next time (DER), for resumption."""
        if self._ssl is None or self.state is not State.ESTABLISHED:
            return None
        session = ssl.SSL_get1_session(self._ssl)
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

    # --- internals ---------------------------------------------------------------------------

    def _progress(self) -> None:
        crypto.ERR_clear_error()
        result = ssl.SSL_do_handshake(self._ssl)
        if result == 1:
            self._established()
            return
        error = ssl.SSL_get_error(self._ssl, result)
        if error in (SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE):
            return
        self._fail("handshake failed: " + (error_queue() or f"SSL error {error}"))

    def _established(self) -> None:
        certificate = None
        x = ssl.SSL_get1_peer_certificate(self._ssl)
        if x != ffi.NULL:
            try:
                certificate = der_of(x)
            finally:
                crypto.X509_free(x)
        psk_identity = self._take_psk_identity()
        if certificate is not None:
            verify = ssl.SSL_get_verify_result(self._ssl)
            if verify != X509_V_OK:
                self._fail(f"peer certificate not verified (X509 error {verify})")
                return
            # The end-entity policy already ran in the verify callback (tls_context), where
            # a refusal still reaches the peer as an alert; check again in case a context
            # was built without it.
            problem = leaf_problem(certificate, client=self.is_server)
            if problem is not None:
                self._fail(problem)
                return
        elif psk_identity is None and self.is_server:
            self._fail("peer presented neither a certificate nor a PSK identity")
            return
        self.peer = PeerCredential(certificate, psk_identity)
        self.state = State.ESTABLISHED
        self._may_protect_records = (
            self.is_server and self.kind is Kind.DTLS and self.cipher in SUITES
        )

    def _may_hand_over(self) -> bool:
        """Server, DTLS, an AEAD suite, a shadow that agreed with OpenSSL on every record,
        and nothing left inside OpenSSL: not a byte to read or to send. Application data
        from the client proves it verified our Finished, so the handshake will not be
        retransmitted (RFC 6347 §4.2.4)."""
        return (
            self._shadow is not None
            and self.state is State.ESTABLISHED
            and self._last_written is not None
            and ssl.BIO_ctrl(self._rbio, BIO_CTRL_PENDING, 0, ffi.NULL) <= 0
            and ssl.BIO_ctrl(self._wbio, BIO_CTRL_PENDING, 0, ffi.NULL) <= 0
            and not ssl.SSL_has_pending(self._ssl)
        )

    def _keep_early_records(self, datagram: bytes) -> None:
        """Handshake: keep the datagram's protected records for the shadow window."""
        assert self._early is not None
        self._early.extend(r for r in split_records(datagram) if r[1] > 0)
        if len(self._early) > _MAX_EARLY_RECORDS \
                or sum(len(r[4]) for r in self._early) > _MAX_EARLY_BYTES:
            self._early = None  # more than a handshake sends: this session stays on OpenSSL

    def _start_shadow(self, datagram: bytes) -> list[tuple[int, int, int, bytes, bytes]]:
        """The handshake ended with ``datagram``. Server, DTLS, AEAD suite: derive the keys
        and mark in a fresh replay window what OpenSSL authenticated of epoch 1 so far.
        Returns the records of ``datagram`` that OpenSSL reads after the handshake, for
        ``_follow``.

        During the handshake OpenSSL processes the protected handshake records (the
        client's Finished; those that come before the ChangeCipherSpec are buffered and
        processed after it). Any other protected record may or may not have been processed,
        depending on where OpenSSL's read epoch was when it came: if one of those is
        authentic, the window is not known and the session stays on OpenSSL.
        """
        early, self._early = self._early, None
        if not self._may_protect_records or early is None:
            return []
        this = [r for r in split_records(datagram) if r[1] > 0]
        last_handshake = max((i for i, r in enumerate(this) if r[0] == HANDSHAKE), default=-1)
        during = early[: len(early) - len(this)] + this[: last_handshake + 1]
        shadow = self._derive_records()
        if shadow is None:
            return []
        if any(r[0] != HANDSHAKE and shadow.authentic(r) for r in during):
            shadow.forget()
            return []
        shadow.open_records([r for r in during if r[0] == HANDSHAKE])
        self._shadow = shadow
        return this[last_handshake + 1 :]

    def _follow(self, records: list[tuple[int, int, int, bytes, bytes]],
                delivered: list[bytes]) -> None:
        """The shadow opens what OpenSSL was given; should they ever disagree, OpenSSL
        keeps the session (our window would not be OpenSSL's)."""
        assert self._shadow is not None
        opened = self._shadow.open_records(records)
        if self.state is not State.ESTABLISHED:
            self._drop_shadow()
        elif opened.application_data != delivered:
            log.warning("record protection disagrees with OpenSSL (%d vs %d records): the "
                        "session stays on OpenSSL", len(opened.application_data), len(delivered))
            self._drop_shadow()

    def _drop_shadow(self) -> None:
        if self._shadow is not None:
            self._shadow.forget()
            self._shadow = None

    def _derive_records(self) -> RecordProtection | None:
        """Our record protection for this connection's keys (no records sealed yet)."""
        session = ssl.SSL_get_session(self._ssl)
        secret = ffi.new("unsigned char[]", 48)
        client_random = ffi.new("unsigned char[]", 32)
        server_random = ffi.new("unsigned char[]", 32)
        try:
            if (
                session == ffi.NULL
                or ssl.SSL_SESSION_get_master_key(session, secret, 48) != 48
                or ssl.SSL_get_client_random(self._ssl, client_random, 32) != 32
                or ssl.SSL_get_server_random(self._ssl, server_random, 32) != 32
            ):
                return None
            return RecordProtection.from_handshake(
                SUITES[self.cipher],
                master_secret=bytearray(ffi.buffer(secret, 48)),  # wiped by from_handshake
                client_random=bytes(ffi.buffer(client_random, 32)),
                server_random=bytes(ffi.buffer(server_random, 32)),
                is_server=True,
                epoch=_FIRST_EPOCH,
                next_write_sequence=0,  # set at the hand-over
            )
        finally:
            ffi.memmove(secret, bytes(48), 48)  # the C copy

    def _hand_over(self) -> None:
        """The shadow takes over (its window is OpenSSL's: nothing needs to be guessed);
        the SSL object is freed."""
        assert self._last_written is not None and self._shadow is not None
        write_epoch, last_write = self._last_written
        if write_epoch != self._shadow.epoch:
            self._drop_shadow()
            self._release_buffers()
            return
        self._described = (self.cipher, self.version, self.resumed)
        self._records, self._shadow = self._shadow, None
        self._records.start_writing_at(last_write + 1)
        self._take_psk_identity()
        self._dispose(self._ssl)
        self._ssl = self._rbio = self._wbio = None
        self._buffers_released = False

    def _open(self, data: bytes) -> list[bytes]:
        assert self._records is not None
        opened = self._records.open(data)
        if opened.renegotiation:
            # RFC 5246 §7.2.2: refuse with a warning; the session goes on as it was.
            self._seal(ALERT, bytes((ALERT_WARNING, NO_RENEGOTIATION)))
        if opened.alert is not None and self.state is State.ESTABLISHED:
            level, description = opened.alert
            if level == ALERT_FATAL:
                self._fail(f"peer sent fatal alert {description}")
            else:
                self.state = State.CLOSED
            self._records.forget()
            self._records = None
        return opened.application_data

    def _seal(self, content_type: int, plaintext: bytes) -> bool:
        """One record to send, protected here; False if none can be: the sequence numbers
        are exhausted, and the session has failed (the endpoint closes it)."""
        assert self._records is not None
        try:
            self._sealed.append(self._records.seal(content_type, plaintext))
        except OverflowError:
            # RFC 6347 §4.1: a sequence number is never reused, so the session has to end;
            # not even a close_notify can be sent.
            self._fail("DTLS sequence numbers exhausted")
            return False
        return True

    def _release_buffers(self) -> None:
        """DTLS, established: hand the record buffers back between datagrams.

        OpenSSL keeps a ~17.7 KiB read buffer per DTLS connection for its lifetime
        (SSL_MODE_RELEASE_BUFFERS only works for TLS). This matters for the sessions not
        handed over (a CBC suite, no application data yet). Freed here, it comes back
        from malloc for the next datagram, so all the
        sessions share a few buffers in the event loop's arena. SSL_free_buffers refuses
        (and we keep them) while a record is still unread.
        """
        if (
            self.kind is Kind.DTLS
            and not self._buffers_released
            and self.state is State.ESTABLISHED
            and self._ssl is not None
            and _FREE_BUFFERS_IS_SAFE
        ):
            self._buffers_released = ssl.SSL_free_buffers(self._ssl) == 1

    def _restore_buffers(self) -> None:
        # DTLS writes (SSL_write, alerts, a retransmitted last flight while reading) do not
        # allocate a missing write buffer themselves: they would write through NULL.
        if self._buffers_released and self._ssl is not None:
            if ssl.SSL_alloc_buffers(self._ssl) != 1:
                raise MemoryError("SSL_alloc_buffers failed")
            self._buffers_released = False

    def _take_psk_identity(self) -> bytes | None:
        if not isinstance(self.context, ServerContext) or self._ssl is None:
            return None
        return self.context.psk_identities.pop(ssl_address(self._ssl), None)

    def _read_application_data(self) -> list[bytes]:
        records = []
        for _ in range(64):  # bounded: one datagram holds few records
            crypto.ERR_clear_error()
            buffer = _read_buffer()
            n = ssl.SSL_read(self._ssl, buffer, _READ_CHUNK)
            if n > 0:
                records.append(bytes(ffi.buffer(buffer, n)))
                # SSL_has_pending, not SSL_pending: the latter misses the further records
                # of a datagram that OpenSSL has read but not yet decrypted.
                if ssl.BIO_ctrl(self._rbio, BIO_CTRL_PENDING, 0, ffi.NULL) <= 0 \
                        and not ssl.SSL_has_pending(self._ssl):
                    break  # all read: spare the SSL_read that would only say "want read"
                continue
            error = ssl.SSL_get_error(self._ssl, n)
            if error == SSL_ERROR_ZERO_RETURN:
                self.state = State.CLOSED
            elif error in (SSL_ERROR_SSL, SSL_ERROR_SYSCALL):
                if self.kind is Kind.DTLS:
                    crypto.ERR_clear_error()  # a bad DTLS record is dropped, not fatal
                else:
                    self._fail("record error: " + error_queue())
            break
        return records

    def _fail(self, reason: str) -> None:
        self.state = State.FAILED
        self.failure = reason
        log.info(
            "secure session failed kind=%s role=%s reason=%s",
            self.kind.value,
            "server" if self.is_server else "client",
            reason,
        )

    def _expect_server_name(self, name: str) -> None:
        # RFC 9132 §7.1: match the server's identity per RFC 6125, and send SNI.
        try:
            ipaddress.ip_address(name)
            param = ssl.SSL_get0_param(self._ssl)
            if ssl.X509_VERIFY_PARAM_set1_ip_asc(param, name.encode()) != 1:
                raise OpenSSLError(f"cannot expect IP address {name}")
        except ValueError:
            if ssl.SSL_set1_host(self._ssl, name.encode()) != 1:
                raise OpenSSLError(f"cannot expect host name {name}") from None
            ssl.SSL_ctrl(
                self._ssl,
                SSL_CTRL_SET_TLSEXT_HOSTNAME,
                TLSEXT_NAMETYPE_host_name,
                ffi.new("char[]", name.encode()),
            )

    def _set_resumption(self, der: bytes) -> None:
        buf = ffi.new("unsigned char[]", der)
        pp = ffi.new("const unsigned char **", buf)
        session = ssl.d2i_SSL_SESSION(ffi.NULL, pp, len(der))
        if session == ffi.NULL:
            crypto.ERR_clear_error()
            return  # a stale or corrupt ticket: do a full handshake
        ssl.SSL_set_session(self._ssl, session)
        ssl.SSL_SESSION_free(session)


_FREE_BUFFERS_IS_SAFE = ssl.OpenSSL_version_num() >= _SAFE_FREE_BUFFERS

_buffers = threading.local()


def _read_buffer() -> Any:
    """One 16 KiB read buffer per thread, not per session: an idle session must stay small
    (sessions are read on the event loop, or in a handshake worker thread)."""
    buffer = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = ffi.new("unsigned char[]", _READ_CHUNK)
    return buffer


def attach_memory_bios(ssl_ptr: Any) -> None:
    rbio = ssl.BIO_new(ssl.BIO_s_mem())
    wbio = ssl.BIO_new(ssl.BIO_s_mem())
    if rbio == ffi.NULL or wbio == ffi.NULL:
        raise OpenSSLError("BIO_new failed")
    # An empty read BIO means "no data yet" (retry), not end of file.
    ssl.BIO_ctrl(rbio, BIO_C_SET_BUF_MEM_EOF_RETURN, -1, ffi.NULL)
    ssl.SSL_set_bio(ssl_ptr, rbio, wbio)  # the SSL object owns both from now on


def _bios_of(ssl_ptr: Any) -> tuple[Any, Any]:
    return ssl.SSL_get_rbio(ssl_ptr), ssl.SSL_get_wbio(ssl_ptr)


def pack_records(records: list[bytes], datagram_size: int) -> list[bytes]:
    """Pack whole DTLS records into as few datagrams as the datagram size allows."""
    datagrams: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > datagram_size:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams
