"""DTLS 1.2 record protection for an established session whose handshake OpenSSL did.

Why this exists: an established OpenSSL DTLS connection keeps its 16 KiB handshake message
buffer for its whole life (OpenSSL 3.0 frees ``init_buf`` at the end of a handshake for TLS
but not for DTLS over UDP, in case the peer retransmits its last flight), next to the SSL
object, the peer certificate and the cipher contexts: ~47 KiB per idle session, measured
with OpenSSL's own allocation hooks. Once the peer has sent application data it has
verified our Finished and will never retransmit, so the handshake state has no further use:
the server takes the connection's keys (the master secret, both randoms and the negotiated
AEAD suite, all public API) and protects the records itself (RFC 6347 §4.1, RFC 5246
§6.2.3.3, RFC 5288 GCM, RFC 6655/7251 CCM, RFC 7905 ChaCha20-Poly1305); the SSL object
is freed. What an idle session keeps is then a few hundred bytes of keys and counters.

Sans-I/O: bytes in, bytes out. Only AEAD suites are handled; a connection with another
suite (the CBC ECDHE-PSK suite) simply stays on OpenSSL.

What a peer sends is framed as the loaded OpenSSL frames it (``split_incoming``, measured
against 3.0.19 and 3.5.9 in our binding; ``FRAMING``), so that a session delivers the same
whether OpenSSL or we open its records. On a release series not measured, no session is
taken over. Records too short to authenticate under the session's suite (``shortest_fragment``)
are the exception: OpenSSL 3.0 takes one of epoch 1 for an internal error and its connection
reads nothing more, so a session OpenSSL holds (before the hand-over, a CBC suite, a client)
is given its datagrams without them (``discard_short_records``), and our record layer drops
them as unauthentic: either way the session goes on (RFC 6347 §4.1.2.7).

Key material. The master secret reaches us in a ``bytearray`` (dtls_handover zeroes its C
buffer) and is wiped once the key block is derived; the key block is wiped once split.
What still holds keys while a session lives: its ``RecordProtection`` (keys and fixed IVs
in ``bytearray``s, wiped by ``forget()`` when the session ends) and the AEAD objects of the
cipher cache (OpenSSL cipher contexts with the expanded key; ``AESCCM`` also keeps a
reference to our key buffer), dropped by ``forget()`` or when the cache is cleared, after
which OpenSSL cleanses the context. Not wiped: the PRF's intermediate HMAC outputs, which
CPython returns as immutable ``bytes`` (freed at once, not overwritten), and OpenSSL's own
copy of the master secret in the SSL session, cleansed when OpenSSL frees it.
"""

from __future__ import annotations

import hmac
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from gateway.transport import openssl_ffi

DTLS_1_2 = b"\xfe\xfd"
RECORD_HEADER = 13
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA = 20, 21, 22, 23
ALERT_WARNING, ALERT_FATAL = 1, 2
CLOSE_NOTIFY = 0
NO_RENEGOTIATION = 100
#: RFC 6347 §4.1.2.6: a 64-record anti-replay window.
REPLAY_WINDOW = 64
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
#: RFC 5246 §6.2.3: a protected fragment is at most 2^14 + 2048 bytes.
_MAX_FRAGMENT = 2**14 + 2048
_MAX_SEQUENCE = 2**48 - 1
_HEADER = struct.Struct("!B2sH6sH")


class Framing(NamedTuple):
    """How a release series of OpenSSL frames the datagrams of an established session."""

    #: A record header whose length field exceeds this is discarded alone, and the datagram
    #: is read on from the end of that header.
    longest_record: int
    #: What OpenSSL takes from a memory BIO at once (its read buffer less the alignment):
    #: a longer datagram is framed as consecutive datagrams of this size.
    read_size: int


#: Measured against each release in our binding (contexts without compression), with the
#: differential tests of tests/unit/transport/test_dtls_records.py. 3.0.19: 17,728 is read
#: as a record and 17,729 is not (SSL3_RT_MAX_ENCRYPTED_LENGTH with the compression
#: allowance), reads of 16,717. 3.5.9 (the record layer rewritten in 3.2): 16,704 and 16,705
#: (no compression allowance), reads of 16,721.
FRAMING_BY_SERIES = {
    (3, 0): Framing(longest_record=2**14 + 1024 + 320, read_size=16717),
    (3, 5): Framing(longest_record=2**14 + 320, read_size=16721),
}


def _series() -> tuple[int, int]:
    number = openssl_ffi.crypto.OpenSSL_version_num()
    return number >> 28, (number >> 20) & 0xFF


#: The framing of the OpenSSL this process runs on, or None for a series not measured: then
#: our record layer never takes a session over (dtls_handover), and OpenSSL keeps every one.
FRAMING: Framing | None = FRAMING_BY_SERIES.get(_series())
#: What ``split_incoming`` frames by; a series not measured still gets 3.0's, so the shadow
#: that runs beside OpenSSL before a hand-over has something to compare with.
_FRAMING = FRAMING or FRAMING_BY_SERIES[(3, 0)]

#: (type, epoch, sequence, header, fragment), as ``split_records`` and ``split_incoming``
#: give them.
Record = tuple[int, int, int, bytes, bytes]


@dataclass(frozen=True, slots=True)
class AeadSuite:
    """How one TLS 1.2 AEAD cipher suite protects a record."""

    name: str
    cipher: _CipherCache
    key_length: int
    #: The implicit part of the nonce from the key block (the salt; the whole IV for ChaCha).
    fixed_iv_length: int
    #: The nonce part sent in each record (0: derived from the sequence number, RFC 7905).
    explicit_nonce_length: int
    tag_length: int
    prf_hash: str


class _CipherCache:
    """The AEAD objects of the most recently used keys, by the key's handle (the keys are
    ``bytearray``s, to be wiped, so not dictionary keys themselves).

    An AEAD object holds an OpenSSL cipher context once used (~1-2 KiB), too much to keep
    for every idle session; building one costs ~0.7 us, a few percent of a request. The
    busy sessions of the moment hit this cache; idle ones keep only their key bytes.
    """

    def __init__(self, factory: Callable[[bytearray], Any], size: int = 512) -> None:
        self._factory = factory
        self._size = size
        self._objects: dict[int, Any] = {}

    def __call__(self, handle: int, key: bytearray) -> Any:
        cipher = self._objects.get(handle)
        if cipher is None:
            if len(self._objects) >= self._size:
                self._objects.clear()  # cheaper than LRU bookkeeping on every record
            cipher = self._objects[handle] = self._factory(key)
        return cipher

    def forget(self, handle: int) -> None:
        self._objects.pop(handle, None)


#: Handles of keys in the cipher caches (itertools.count is atomic under the GIL: keys are
#: derived in handshake worker threads too).
_handles = itertools.count()


def wipe(secret: bytearray) -> None:
    """Overwrite a secret in place."""
    secret[:] = bytes(len(secret))


_gcm = _CipherCache(AESGCM)
_ccm = _CipherCache(lambda key: AESCCM(key, tag_length=16))
_ccm8 = _CipherCache(lambda key: AESCCM(key, tag_length=8))
_chacha = _CipherCache(ChaCha20Poly1305)


#: The AEAD suites our contexts offer, by OpenSSL name.
SUITES: dict[str, AeadSuite] = {
    s.name: s
    for s in (
        AeadSuite("ECDHE-ECDSA-AES128-GCM-SHA256", _gcm, 16, 4, 8, 16, "sha256"),
        AeadSuite("ECDHE-ECDSA-AES256-GCM-SHA384", _gcm, 32, 4, 8, 16, "sha384"),
        AeadSuite("ECDHE-RSA-AES128-GCM-SHA256", _gcm, 16, 4, 8, 16, "sha256"),
        AeadSuite("ECDHE-RSA-AES256-GCM-SHA384", _gcm, 32, 4, 8, 16, "sha384"),
        AeadSuite("ECDHE-ECDSA-CHACHA20-POLY1305", _chacha, 32, 12, 0, 16, "sha256"),
        AeadSuite("ECDHE-RSA-CHACHA20-POLY1305", _chacha, 32, 12, 0, 16, "sha256"),
        AeadSuite("ECDHE-PSK-CHACHA20-POLY1305", _chacha, 32, 12, 0, 16, "sha256"),
        AeadSuite("PSK-AES128-GCM-SHA256", _gcm, 16, 4, 8, 16, "sha256"),
        AeadSuite("PSK-AES128-CCM", _ccm, 16, 4, 8, 16, "sha256"),
        AeadSuite("PSK-AES128-CCM8", _ccm8, 16, 4, 8, 8, "sha256"),
    )
}
_SHORTEST_OF_ALL = min(s.explicit_nonce_length + s.tag_length for s in SUITES.values())
#: HandshakeType finished (RFC 5246 §7.4), the first byte of a DTLS handshake header.
_FINISHED = b"\x14"
#: The epoch of the keys of the first handshake, the only one with keys (no renegotiation).
_KEYED_EPOCH = 1
#: An epoch OpenSSL reads as no one's (``discard_short_records``).
_NO_EPOCH = b"\xff\xff"


#: The CBC suites our contexts offer (they stay on OpenSSL): (IV and block size, MAC size).
_CBC_SUITES = {"ECDHE-PSK-AES128-CBC-SHA256": (16, 32)}


def shortest_fragment(cipher: str) -> int:
    """The shortest protected fragment a genuine record of ``cipher`` (an OpenSSL suite
    name) can have: explicit nonce + tag for GCM and CCM, the tag alone for
    ChaCha20-Poly1305 (RFC 7905), IV + one block + MAC for CBC (RFC 5246 §6.2.3.2; with
    encrypt-then-MAC, RFC 7366, as without). For a suite we do not know (or none yet), the
    least over every suite we know: a record shorter than that cannot be genuine at all."""
    suite = SUITES.get(cipher)
    if suite is not None:
        return suite.explicit_nonce_length + suite.tag_length
    cbc = _CBC_SUITES.get(cipher)
    if cbc is not None:
        block, mac = cbc
        return 2 * block + mac
    return _SHORTEST_OF_ALL


def discard_short_records(datagram: bytes, shortest: int) -> bytes:
    """``datagram`` as OpenSSL may be given it: each record of epoch 1 (the only epoch with
    keys: we never renegotiate) that OpenSSL would open but that is shorter than
    ``shortest`` (``shortest_fragment``), and so cannot authenticate, is discarded.

    OpenSSL 3.0 does not discard those (measured on 3.0.19 through our binding, every
    content type, epoch 1): one of 1 to 23 bytes (GCM, CCM), 1 to 15 (ChaCha20-Poly1305,
    CCM8) or 1 to 63 (AES128-CBC-SHA256 with encrypt-then-MAC) puts its connection in an
    internal (or decode) error, after which it reads nothing more; needing no key, anyone
    who knows the 4-tuple could end a session with one. RFC 6347 §4.1.2.7: an invalid
    record is silently discarded, and the association goes on.

    The record is discarded by relabelling its epoch as 0xFFFF, which is neither
    OpenSSL's current read epoch nor the next (0 or 1, then 1 or 2): OpenSSL drops it
    unopened (``dtls1_get_bitmap``), its replay window untouched, and reads the rest of the
    datagram exactly as it would have (cutting the record out would move the 16,717-byte
    boundaries at which OpenSSL reads a long datagram). Everything else reaches OpenSSL
    unchanged; without such a record, the datagram itself.
    """
    short = [
        start for start, (_, epoch, _, _, fragment) in _incoming_with_offsets(datagram)
        if epoch == _KEYED_EPOCH and len(fragment) < shortest
    ]
    if not short:
        return datagram
    relabelled = bytearray(datagram)
    for start in short:
        relabelled[start + 3 : start + 5] = _NO_EPOCH
    return bytes(relabelled)


def prf(
    hash_name: str, secret: bytes | bytearray, label: bytes, seed: bytes, length: int
) -> bytearray:
    """The TLS 1.2 PRF, P_<hash>(secret, label + seed) (RFC 5246 §5); the caller wipes
    the result."""
    seed = label + seed
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + seed, hash_name)
    del out[length:]
    return out


class Opened(NamedTuple):
    """What one datagram carried: application data, and whether the peer closed."""

    application_data: list[bytes]
    #: (level, description) of the alert that ended the session, or None.
    alert: tuple[int, int] | None = None
    #: Records dropped: unauthentic, replayed, another epoch, or not application data.
    dropped: int = 0
    #: An authentic handshake message arrived: the peer wants to renegotiate.
    renegotiation: bool = False


def split_records(datagram: bytes) -> list[Record]:
    """(type, epoch, sequence, header, fragment) of each whole record, by their lengths; a
    truncated tail is left out. For our own (or OpenSSL's) output; what a peer sends is
    read with ``split_incoming``."""
    records = []
    offset = 0
    while offset + RECORD_HEADER <= len(datagram):
        kind, version, epoch, seq, length = _HEADER.unpack_from(datagram, offset)
        end = offset + RECORD_HEADER + length
        if end > len(datagram):
            break
        records.append((
            kind,
            epoch if version == DTLS_1_2 else -1,
            int.from_bytes(seq, "big"),
            datagram[offset : offset + RECORD_HEADER],
            datagram[offset + RECORD_HEADER : end],
        ))
        offset = end
    return records


def split_incoming(datagram: bytes) -> list[Record]:
    """The records OpenSSL reads from a datagram of an established DTLS 1.2 session
    (``dtls1_get_record`` after the first packet; 3.0 and 3.5 differ only in ``Framing``):
    our record layer must accept exactly
    what OpenSSL would, so it frames a datagram as OpenSSL does, measured against it:

    - a header of another version is discarded alone (13 bytes), and the datagram is read
      on from the start of that record's body; an alert only needs the major version
      (0xfe), and is then read as a record of ours (OpenSSL puts the session's version in
      the additional data, not the header's, so a relabelled genuine alert is authentic);
    - so is a header whose length exceeds ``Framing.longest_record``;
    - a header whose length runs past the end of the datagram, or a partial header, ends
      it: the rest is dumped (RFC 6347 §4.1.2.7);
    - a datagram longer than ``Framing.read_size`` is read as several.
    """
    longest, read_size = _FRAMING
    if RECORD_HEADER <= len(datagram) <= read_size:
        # The usual datagram, one whole record of ours (every request and heartbeat): the
        # general loop below would read it the same way, one record ending at the end.
        kind, version, epoch, seq, length = _HEADER.unpack_from(datagram)
        if version == DTLS_1_2 and length == len(datagram) - RECORD_HEADER and length <= longest:
            return [(kind, epoch, int.from_bytes(seq, "big"), datagram[:RECORD_HEADER],
                     datagram[RECORD_HEADER:])]
    return [record for _, record in _incoming_with_offsets(datagram)]


def _incoming_with_offsets(datagram: bytes) -> list[tuple[int, Record]]:
    """``split_incoming``, each record with the offset of its header in ``datagram``."""
    records = []
    longest, read_size = _FRAMING
    for start in range(0, len(datagram), read_size):
        chunk = datagram[start : start + read_size]
        offset = 0
        while offset + RECORD_HEADER <= len(chunk):
            kind, version, epoch, seq, length = _HEADER.unpack_from(chunk, offset)
            if (version != DTLS_1_2 and (kind != ALERT or version[0] != DTLS_1_2[0])) \
                    or length > longest:
                offset += RECORD_HEADER
                continue
            end = offset + RECORD_HEADER + length
            if end > len(chunk):
                break
            records.append((start + offset, (
                kind, epoch, int.from_bytes(seq, "big"),
                chunk[offset : offset + RECORD_HEADER], chunk[offset + RECORD_HEADER : end],
            )))
            offset = end
    return records


class RecordProtection:
    """Seals and opens the records of one established DTLS 1.2 connection (one epoch)."""

    __slots__ = (
        "suite", "epoch", "_read_key", "_read_iv", "_write_key", "_write_iv",
        "_read_handle", "_write_handle", "_next_write", "_highest_read", "_window",
    )

    def __init__(
        self,
        suite: AeadSuite,
        *,
        read_key: bytearray,
        read_iv: bytearray,
        write_key: bytearray,
        write_iv: bytearray,
        epoch: int,
        next_write_sequence: int,
    ) -> None:
        self.suite = suite
        self.epoch = epoch
        # Owned from now on: forget() wipes them.
        self._read_key, self._read_iv = read_key, read_iv
        self._write_key, self._write_iv = write_key, write_iv
        self._read_handle, self._write_handle = next(_handles), next(_handles)
        self._next_write = next_write_sequence
        # The replay window starts empty, as OpenSSL's does when the epoch changes
        # (DTLS1_BITMAP zeroed: highest 0, no bit set). Bit n stands for _highest_read - n.
        # The server keeps it from the first record of the epoch on, so that at the
        # hand-over it holds exactly what OpenSSL authenticated (dtls_handover).
        self._highest_read = 0
        self._window = 0

    @classmethod
    def from_handshake(
        cls,
        suite: AeadSuite,
        *,
        master_secret: bytearray,
        client_random: bytes,
        server_random: bytes,
        is_server: bool,
        epoch: int,
        next_write_sequence: int,
    ) -> RecordProtection:
        """Derive the keys as RFC 5246 §6.3 does (AEAD suites have no MAC keys); the
        master secret is wiped."""
        key, iv = suite.key_length, suite.fixed_iv_length
        block = prf(suite.prf_hash, master_secret, b"key expansion",
                    server_random + client_random, 2 * (key + iv))
        wipe(master_secret)
        client_key, server_key = block[:key], block[key : 2 * key]
        client_iv, server_iv = block[2 * key : 2 * key + iv], block[2 * key + iv :]
        wipe(block)
        if is_server:
            read_key, read_iv, write_key, write_iv = client_key, client_iv, server_key, server_iv
        else:
            read_key, read_iv, write_key, write_iv = server_key, server_iv, client_key, client_iv
        return cls(
            suite,
            read_key=read_key,
            read_iv=read_iv,
            write_key=write_key,
            write_iv=write_iv,
            epoch=epoch,
            next_write_sequence=next_write_sequence,
        )

    def forget(self) -> None:
        """The session ended: its keys leave the cipher cache and are wiped."""
        self.suite.cipher.forget(self._read_handle)
        self.suite.cipher.forget(self._write_handle)
        for secret in (self._read_key, self._read_iv, self._write_key, self._write_iv):
            wipe(secret)

    def seal(self, content_type: int, plaintext: bytes) -> bytes:
        """One protected record."""
        seq = self._next_write
        if seq > _MAX_SEQUENCE:
            # RFC 6347 §4.1: never reuse a sequence number; the session has to end.
            raise OverflowError("DTLS sequence numbers exhausted")
        self._next_write = seq + 1
        epoch_seq = self.epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
        aad = epoch_seq + bytes((content_type,)) + DTLS_1_2 + len(plaintext).to_bytes(2, "big")
        if self.suite.explicit_nonce_length:  # GCM, CCM: salt + epoch and sequence (_nonce)
            explicit, nonce = epoch_seq, self._write_iv + epoch_seq
        else:
            explicit, nonce = self._nonce(self._write_iv, epoch_seq, None)
        cipher = self.suite.cipher(self._write_handle, self._write_key)
        body = explicit + cipher.encrypt(nonce, plaintext, aad)
        return (
            bytes((content_type,)) + DTLS_1_2 + epoch_seq + len(body).to_bytes(2, "big") + body
        )

    def start_writing_at(self, sequence: int) -> None:
        """The next record we seal gets ``sequence`` (the one after OpenSSL's last)."""
        self._next_write = sequence

    def open(self, datagram: bytes) -> Opened:
        """Application data and alerts of one datagram; everything else is dropped."""
        return self.open_records(split_incoming(datagram))

    def open_records(self, records: list[Record]) -> Opened:
        """``open`` for records already split (``split_incoming``), in arrival order."""
        data: list[bytes] = []
        dropped = 0
        renegotiation = False
        for kind, epoch, seq, header, fragment in records:
            if epoch != self.epoch or kind not in (APPLICATION_DATA, ALERT, HANDSHAKE) \
                    or len(fragment) > _MAX_FRAGMENT or self._replayed(seq):
                dropped += 1
                continue
            plaintext = self._decrypt(kind, header[3:11], fragment)
            if plaintext is None:
                dropped += 1
                continue
            self._mark(seq)
            if kind == APPLICATION_DATA:
                if plaintext:  # an empty record carries nothing (OpenSSL skips them too)
                    data.append(plaintext)
            elif kind == HANDSHAKE:
                if plaintext[:1] == _FINISHED:
                    # The peer's Finished sent again: it finished a resumed handshake (it
                    # sends the last flight) and our flight reached it twice (RFC 6347
                    # §4.2.4). OpenSSL drops it; it starts nothing.
                    dropped += 1
                    continue
                # Any other handshake message can only start a renegotiation (the peer's
                # Finished is long verified); we do not renegotiate.
                renegotiation = True
            elif len(plaintext) == 2 and (
                plaintext[0] == ALERT_FATAL or plaintext[1] == CLOSE_NOTIFY
            ):
                return Opened(data, (plaintext[0], plaintext[1]), dropped, renegotiation)
            # other warning alerts change nothing
        return Opened(data, None, dropped, renegotiation)

    def authentic(self, record: Record) -> bool:
        """Whether a record (from ``split_incoming``) was protected with the peer's keys of
        our epoch; the replay window is neither consulted nor changed."""
        kind, epoch, _, header, fragment = record
        return epoch == self.epoch and self._decrypt(kind, header[3:11], fragment) is not None

    # --- internals ---------------------------------------------------------------------------

    def _nonce(
        self, iv: bytearray, epoch_seq: bytes, explicit: bytes | None
    ) -> tuple[bytes, bytes | bytearray]:
        """(explicit part sent in the record, full nonce)."""
        if self.suite.explicit_nonce_length == 0:
            # RFC 7905 §2: the IV XORed with the 64-bit epoch and sequence number.
            mixed = int.from_bytes(iv, "big") ^ int.from_bytes(epoch_seq, "big")
            return b"", mixed.to_bytes(len(iv), "big")
        if explicit is None:
            explicit = epoch_seq  # unique per record, as OpenSSL does too
        return explicit, iv + explicit

    def _decrypt(self, kind: int, epoch_seq: bytes, fragment: bytes) -> bytes | None:
        suite = self.suite
        explicit_length = suite.explicit_nonce_length
        if len(fragment) < explicit_length + suite.tag_length:
            return None
        if explicit_length:  # GCM, CCM: salt + the record's explicit part (_nonce)
            nonce = self._read_iv + fragment[:explicit_length]
        else:
            _, nonce = self._nonce(self._read_iv, epoch_seq, None)
        ciphertext = fragment[explicit_length:]
        plain_length = len(ciphertext) - suite.tag_length
        aad = epoch_seq + bytes((kind,)) + DTLS_1_2 + plain_length.to_bytes(2, "big")
        try:
            return suite.cipher(self._read_handle, self._read_key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            return None

    def _replayed(self, seq: int) -> bool:
        if seq > self._highest_read:
            return False
        age = self._highest_read - seq
        return age >= REPLAY_WINDOW or bool(self._window >> age & 1)

    def _mark(self, seq: int) -> None:
        if seq > self._highest_read:
            shift = seq - self._highest_read
            if shift < REPLAY_WINDOW:
                self._window = ((self._window << shift) | 1) & _WINDOW_MASK
            else:
                # RFC 6347 §4.1.2.6: a jump of the window size or more leaves nothing of the
                # old window (never shift by it: up to 2^48 bits).
                self._window = 1
            self._highest_read = seq
        else:
            self._window |= 1 << (self._highest_read - seq)


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
