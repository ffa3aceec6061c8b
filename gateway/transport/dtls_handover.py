"""The hand-over of a server's DTLS session from OpenSSL to our record layer, and the shadow
that makes it safe.

Owns, for one server DTLS session on an AEAD suite (``SUITES``): the protected records kept
during the handshake, the derivation of the connection's keys from OpenSSL (public API: the
master secret, both randoms, the suite), the shadow ``RecordProtection`` that opens every
record OpenSSL is given from the end of the handshake on, and the taking over itself, after
which the session protects its records with that same object (``secure_session``). The
shadow's replay window therefore holds exactly what OpenSSL authenticated: nothing has to
be guessed at the hand-over. It does not drive OpenSSL (``secure_session`` does) nor
protect records itself (``dtls_records``); it must not import ``secure_session``.

Key material. ``derive_records`` copies the master secret out of OpenSSL into a C buffer
that it zeroes, and into a ``bytearray`` that ``RecordProtection.from_handshake`` wipes once
the key block is derived (see ``dtls_records`` for the key block and the cipher cache).
What still holds keys: the shadow (a ``RecordProtection``), wiped by ``forget()`` when it is
dropped or the session ends, or handed to the session at the hand-over, which wipes it when
the session ends; and OpenSSL's own copy of the master secret in the SSL session, cleansed
when OpenSSL frees the SSL object (at once, or by a handshake worker on the server).
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.transport.dtls_records import (
    HANDSHAKE,
    SUITES,
    AeadSuite,
    Record,
    RecordProtection,
    split_incoming,
)
from gateway.transport.openssl_ffi import ffi, ssl

log = logging.getLogger(__name__)

#: RFC 6347 §4.1: the epoch of the keys of the first handshake (we never renegotiate).
_FIRST_EPOCH = 1
#: Protected records kept during a handshake for the replay window (a client's Finished and
#: its retransmissions); beyond that the session stays on OpenSSL.
_MAX_EARLY_RECORDS = 8
_MAX_EARLY_BYTES = 4096


class HandOver:
    """What a server DTLS session needs to leave OpenSSL: the records of its handshake,
    then the shadow; ``take_over`` gives the shadow to the session."""

    __slots__ = ("_early", "_shadow")

    def __init__(self) -> None:
        # The protected records fed during the handshake (bounded), None once too many.
        self._early: list[Record] | None = []
        self._shadow: RecordProtection | None = None

    @property
    def following(self) -> bool:
        """Whether the shadow runs beside OpenSSL (and has agreed with it so far)."""
        return self._shadow is not None

    def keep_early_records(self, datagram: bytes) -> None:
        """Handshake: keep the datagram's protected records for the shadow window."""
        if self._early is None:
            return
        self._early.extend(r for r in split_incoming(datagram) if r[1] > 0)
        if len(self._early) > _MAX_EARLY_RECORDS \
                or sum(len(r[4]) for r in self._early) > _MAX_EARLY_BYTES:
            self._early = None  # more than a handshake sends: this session stays on OpenSSL

    def start_shadow(self, ssl_ptr: Any, cipher: str, datagram: bytes) -> list[Record]:
        """The handshake ended with ``datagram``. AEAD suite: derive the keys and mark in a
        fresh replay window what OpenSSL authenticated of epoch 1 so far. Returns the
        records of ``datagram`` that OpenSSL reads after the handshake, for ``follow``.

        During the handshake OpenSSL processes the protected handshake records (the
        client's Finished; those that come before the ChangeCipherSpec are buffered and
        processed after it). Any other protected record may or may not have been processed,
        depending on where OpenSSL's read epoch was when it came: if one of those is
        authentic, the window is not known and the session stays on OpenSSL.
        """
        early, self._early = self._early, None
        if cipher not in SUITES or early is None:
            return []
        this = [r for r in split_incoming(datagram) if r[1] > 0]
        last_handshake = max((i for i, r in enumerate(this) if r[0] == HANDSHAKE), default=-1)
        during = early[: len(early) - len(this)] + this[: last_handshake + 1]
        shadow = derive_records(ssl_ptr, SUITES[cipher])
        if shadow is None:
            return []
        if any(r[0] != HANDSHAKE and shadow.authentic(r) for r in during):
            shadow.forget()
            return []
        shadow.open_records([r for r in during if r[0] == HANDSHAKE])
        self._shadow = shadow
        return this[last_handshake + 1 :]

    def follow(self, records: list[Record], delivered: list[bytes], *,
               established: bool) -> None:
        """The shadow opens what OpenSSL was given; should they ever disagree, OpenSSL
        keeps the session (our window would not be OpenSSL's)."""
        assert self._shadow is not None
        opened = self._shadow.open_records(records)
        if not established:
            self.forget()
        elif opened.application_data != delivered:
            log.warning("record protection disagrees with OpenSSL (%d vs %d records): the "
                        "session stays on OpenSSL", len(opened.application_data), len(delivered))
            self.forget()

    def take_over(self, write_epoch: int, last_write: int) -> RecordProtection | None:
        """The shadow, to protect the session's records from now on, writing after
        OpenSSL's last record; None (and no more shadow) if OpenSSL last wrote in another
        epoch."""
        shadow, self._shadow = self._shadow, None
        assert shadow is not None
        if write_epoch != shadow.epoch:
            shadow.forget()
            return None
        shadow.start_writing_at(last_write + 1)
        return shadow

    def forget(self) -> None:
        """No hand-over: the shadow's keys are wiped."""
        self._early = None
        if self._shadow is not None:
            self._shadow.forget()
            self._shadow = None


def derive_records(ssl_ptr: Any, suite: AeadSuite) -> RecordProtection | None:
    """Our record protection for this connection's keys (no records sealed yet)."""
    session = ssl.SSL_get_session(ssl_ptr)
    secret = ffi.new("unsigned char[]", 48)
    client_random = ffi.new("unsigned char[]", 32)
    server_random = ffi.new("unsigned char[]", 32)
    try:
        if (
            session == ffi.NULL
            or ssl.SSL_SESSION_get_master_key(session, secret, 48) != 48
            or ssl.SSL_get_client_random(ssl_ptr, client_random, 32) != 32
            or ssl.SSL_get_server_random(ssl_ptr, server_random, 32) != 32
        ):
            return None
        return RecordProtection.from_handshake(
            suite,
            master_secret=bytearray(ffi.buffer(secret, 48)),  # wiped by from_handshake
            client_random=bytes(ffi.buffer(client_random, 32)),
            server_random=bytes(ffi.buffer(server_random, 32)),
            is_server=True,
            epoch=_FIRST_EPOCH,
            next_write_sequence=0,  # set at the hand-over
        )
    finally:
        ffi.memmove(secret, bytes(48), 48)  # the C copy
