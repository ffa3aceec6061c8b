"""One (D)TLS connection on memory BIOs: bytes in, plaintext and bytes out, no sockets.

The endpoint owns sockets and timers; a ``SecureSession`` only transforms bytes. It owns
the session's state, the peer's credential and the driving of OpenSSL (handshake, reads,
writes, close, buffers), and decides when the records are handed over to our own record
layer (``dtls_handover`` runs its shadow until then; ``openssl_connection`` holds the
stateless operations on the SSL object). It must not import sockets or asyncio. Its OpenSSL
state (~100 KiB during a handshake, less once established with RELEASE_BUFFERS) is freed
the moment ``free()`` is called, which endpoints do on close, so nothing outlives a session
(the prototype kept closed sessions alive for 247 s in a CoAP library cache).

Bad DTLS records. What cannot authenticate is discarded and the session goes on (RFC 6347
§4.1.2.7): OpenSSL drops an unauthentic record silently, except one too short for the
negotiated suite, which OpenSSL 3.0 takes for an internal error that ends its connection;
``feed`` keeps those from it (``dtls_records.discard_short_records``; the server knows its
suite from the ClientHello on, a client from the ServerHello, before which only what no suite
could authenticate is discarded). Whatever error OpenSSL still reports on a read is fatal for
its connection (a fatal alert either way, or a forged record on a CBC suite with
encrypt-then-MAC: OpenSSL 3.0 answers it with a fatal bad_record_mac), so the session
fails: its endpoint closes it and tells its user, and no session is left "established"
that can no longer read.

Key material: after the hand-over the session's ``RecordProtection`` (``_records``) holds
the connection's keys; ``free()`` wipes them (and a shadow's, if one runs). Until then
OpenSSL holds them, in the SSL object that ``free()`` disposes of.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.transport import dtls_records
from gateway.transport.dtls_handover import HandOver
from gateway.transport.dtls_records import (
    ALERT,
    ALERT_FATAL,
    ALERT_WARNING,
    APPLICATION_DATA,
    CLOSE_NOTIFY,
    NO_RENEGOTIATION,
    RecordProtection,
    discard_short_records,
    pack_records,
    shortest_fragment,
    split_incoming,
    split_records,
)
from gateway.transport.openssl_connection import (
    attach_memory_bios,
    bios_of,
    drain,
    expect_server_name,
    handshake_timeout,
    peer_certificate,
    pending,
    read_records,
    release_buffers,
    restore_buffers,
    session_ticket,
    set_resumption,
)
from gateway.transport.openssl_ffi import (
    DTLS_CTRL_HANDLE_TIMEOUT,
    SSL_CTRL_SET_MAX_SEND_FRAGMENT,
    SSL_CTRL_SET_MTU,
    SSL_ERROR_SSL,
    SSL_ERROR_SYSCALL,
    SSL_ERROR_WANT_READ,
    SSL_ERROR_WANT_WRITE,
    SSL_ERROR_ZERO_RETURN,
    SSL_OP_NO_QUERY_MTU,
    X509_V_OK,
    OpenSSLError,
    crypto,
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
    take_refusal,
)

log = logging.getLogger(__name__)

#: Datagram payload we allow for DTLS: the IPv6 minimum MTU less IPv6 and UDP headers
#: (RFC 9132 §7.3: assume 1280 when the PMTU is unknown).
DEFAULT_DATAGRAM_SIZE = 1280 - 40 - 8
#: Room for the DTLS record header, explicit nonce and AEAD tag around one CoAP message.
_DTLS_OVERHEAD = 64
#: OpenSSL's floor for max_send_fragment.
_MIN_SEND_FRAGMENT = 512


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"  # orderly close_notify, either side
    FAILED = "failed"  # handshake or record error; the peer got an alert if possible


# Members as plain globals for the per-record paths: in Python 3.11 every ``State.X``
# goes through EnumType.__getattr__'s slot (~0.1-0.2 us each, measured).
_ESTABLISHED, _ENDED = State.ESTABLISHED, (State.CLOSED, State.FAILED)
_DTLS = Kind.DTLS


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
        #: DTLS, established: the shortest record of the negotiated suite (dtls_records).
        self._shortest: int | None = None
        # Server, DTLS: the records of the handshake, then our record protection run beside
        # OpenSSL's as a shadow until it takes over (dtls_handover).
        self._handover = (HandOver() if self.is_server and self.kind is Kind.DTLS
                          and dtls_records.FRAMING is not None else None)
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
        self._rbio, self._wbio = bios_of(ssl_ptr)
        if self.kind is Kind.DTLS:
            ssl.SSL_set_options(ssl_ptr, SSL_OP_NO_QUERY_MTU)
            ssl.SSL_ctrl(ssl_ptr, SSL_CTRL_SET_MTU, datagram_size, ffi.NULL)
            # A DTLS record never exceeds the datagram, so the write buffer need not be
            # sized for 16 KiB records: measured 14 KiB less heap per session.
            ssl.SSL_ctrl(ssl_ptr, SSL_CTRL_SET_MAX_SEND_FRAGMENT,
                         max(_MIN_SEND_FRAGMENT, datagram_size - _DTLS_OVERHEAD), ffi.NULL)
        if server_name is not None and not self.is_server:
            expect_server_name(ssl_ptr, server_name)
        if resume is not None and not self.is_server:
            self._set_resumption(resume)

    # --- inputs ------------------------------------------------------------------------------

    def start(self) -> None:
        """Client side: produce the ClientHello."""
        self._progress()

    def feed(self, data: bytes) -> list[bytes]:
        """Bytes from the network (one datagram for DTLS); returns application data."""
        if self.state in _ENDED:
            return []
        if self._records is not None:
            return self._open(data)
        if self._ssl is None:
            return []
        if self.kind is Kind.DTLS:
            data = discard_short_records(data, self._shortest_fragment())
        if data and ssl.BIO_write(self._rbio, data, len(data)) != len(data):
            self._fail("BIO_write failed")
            return []
        handover = self._handover
        after_handshake = None
        if self.state is State.HANDSHAKING:
            if handover is not None:
                handover.keep_early_records(data)
            self._progress()
            if self.state is not State.ESTABLISHED:
                return []
            if handover is not None:
                after_handshake = handover.start_shadow(self._ssl, self.cipher, data)
        self._restore_buffers()
        records = self._read_application_data()
        if handover is not None and handover.following:
            handover.follow(split_incoming(data) if after_handshake is None else after_handshake,
                            records, established=self.state is State.ESTABLISHED)
        if records and self._may_hand_over():
            self._hand_over()
        else:
            self._release_buffers()
        return records

    def send(self, plaintext: bytes) -> None:
        """Encrypt application data (one CoAP message); output via ``take_output()``."""
        if self.state is not _ESTABLISHED or (self._ssl is None and self._records is None):
            raise OpenSSLError(f"cannot send in state {self.state.value}")
        if self.kind is _DTLS and len(plaintext) + _DTLS_OVERHEAD > self.datagram_size:
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
        return handshake_timeout(self._ssl)

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
        if self._handover is not None:
            self._handover.forget()
            self._handover = None
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
        data = drain(self._wbio)
        if not data:
            return []
        if self.kind is Kind.TLS:
            return [data]
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
        return session_ticket(self._ssl)

    # --- internals ---------------------------------------------------------------------------

    def _progress(self) -> None:
        crypto.ERR_clear_error()
        take_refusal()  # a refusal left by another session's step on this thread is not ours
        result = ssl.SSL_do_handshake(self._ssl)
        if result == 1:
            self._established()
            return
        error = ssl.SSL_get_error(self._ssl, result)
        if error in (SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE):
            return
        reason = "handshake failed: " + (error_queue() or f"SSL error {error}")
        refusal = take_refusal()
        self._fail(reason if refusal is None else f"{reason} ({refusal})")

    def _established(self) -> None:
        certificate = peer_certificate(self._ssl)
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

    def _may_hand_over(self) -> bool:
        """Server, DTLS, an AEAD suite, a shadow that agreed with OpenSSL on every record,
        and nothing left inside OpenSSL: not a byte to read or to send. Application data
        from the client proves it verified our Finished, so the handshake will not be
        retransmitted (RFC 6347 §4.2.4)."""
        return (
            self._handover is not None
            and self._handover.following
            and self.state is State.ESTABLISHED
            and self._last_written is not None
            and pending(self._rbio) <= 0
            and pending(self._wbio) <= 0
            and not ssl.SSL_has_pending(self._ssl)
        )

    def _hand_over(self) -> None:
        """The shadow takes over (its window is OpenSSL's: nothing needs to be guessed);
        the SSL object is freed."""
        assert self._last_written is not None and self._handover is not None
        records = self._handover.take_over(*self._last_written)
        if records is None:
            self._release_buffers()
            return
        self._described = (self.cipher, self.version, self.resumed)
        self._records, self._handover = records, None
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

    def _shortest_fragment(self) -> int:
        """The shortest record that can authenticate here (``dtls_records``): that of the
        negotiated suite once established; during the handshake, of the suite this
        handshake negotiated (the server's choice on the ClientHello, the client's on the
        ServerHello), or of any suite before that."""
        if self._shortest is not None:
            return self._shortest
        if self.state is State.ESTABLISHED:
            self._shortest = shortest_fragment(self.cipher)
            return self._shortest
        pending = ssl.SSL_get_pending_cipher(self._ssl)
        return shortest_fragment(
            "" if pending == ffi.NULL else ffi.string(ssl.SSL_CIPHER_get_name(pending)).decode()
        )

    def _release_buffers(self) -> None:
        """DTLS, established: hand the record buffers back between datagrams (this
        matters for the sessions not handed over: a CBC suite, no application data yet)."""
        if (
            self.kind is Kind.DTLS
            and not self._buffers_released
            and self.state is State.ESTABLISHED
            and self._ssl is not None
        ):
            self._buffers_released = release_buffers(self._ssl)

    def _restore_buffers(self) -> None:
        if self._buffers_released and self._ssl is not None:
            restore_buffers(self._ssl)
            self._buffers_released = False

    def _take_psk_identity(self) -> bytes | None:
        if not isinstance(self.context, ServerContext) or self._ssl is None:
            return None
        return self.context.psk_identities.pop(ssl_address(self._ssl), None)

    def _read_application_data(self) -> list[bytes]:
        records, error = read_records(self._ssl, self._rbio)
        if error == SSL_ERROR_ZERO_RETURN:
            self.state = State.CLOSED
        elif error in (SSL_ERROR_SSL, SSL_ERROR_SYSCALL):
            # OpenSSL 3.0 drops a bad DTLS record without a word (RFC 6347 §4.1.2.7); an
            # error is fatal: a fatal alert from the peer, or one OpenSSL sends (an internal
            # error, a failed encrypt-then-MAC). Its connection reads nothing more, so the
            # session fails; the endpoint closes it and tells its user.
            self._fail("record error: " + (error_queue() or f"SSL error {error}"))
        return records

    def _fail(self, reason: str) -> None:
        self.state = State.FAILED
        self.failure = reason
        # Debug only: the endpoint that owns the session logs the event once (a server's
        # handshake.failed, a client's HandshakeError), with the peer's address.
        log.debug(
            "secure session failed kind=%s role=%s reason=%s",
            self.kind.value,
            "server" if self.is_server else "client",
            reason,
        )

    def _set_resumption(self, der: bytes) -> None:
        set_resumption(self._ssl, der)

