"""(D)TLS contexts: credentials, cipher policy, stateless cookies and shared ticket keys.

RFC 9132 §7.1: (D)TLS 1.2 or later only; mutual authentication with X.509 or PSK with
(EC)DHE; stateless session resumption. For an anycast fleet, the cookie secret (DTLS
HelloVerifyRequest) and the session-ticket keys must be the same on every node, so both
come from files that operators distribute, with the previous secret still accepted while a
rotation rolls out. Without files, random per-process secrets are used (fine for one node).
"""

from __future__ import annotations

import enum
import functools
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.transport.openssl_ffi import (
    DTLS1_2_VERSION,
    OSSL_PARAM_OCTET_STRING,
    OSSL_PARAM_UNMODIFIED,
    OSSL_PARAM_UTF8_STRING,
    SSL_CTRL_MODE,
    SSL_CTRL_SET_GROUPS_LIST,
    SSL_CTRL_SET_MIN_PROTO_VERSION,
    SSL_CTRL_SET_SESS_CACHE_MODE,
    SSL_FILETYPE_PEM,
    SSL_MODE_RELEASE_BUFFERS,
    SSL_OP_CIPHER_SERVER_PREFERENCE,
    SSL_OP_NO_COMPRESSION,
    SSL_OP_NO_RENEGOTIATION,
    SSL_SESS_CACHE_CLIENT,
    SSL_SESS_CACHE_OFF,
    SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
    SSL_VERIFY_PEER,
    TLS1_2_VERSION,
    X509_V_ERR_INVALID_PURPOSE,
    X509_V_FLAG_CRL_CHECK,
    X509_V_FLAG_CRL_CHECK_ALL,
    OpenSSLError,
    check,
    crypto,
    der_of,
    error_queue,
    ffi,
    ssl,
)

log = logging.getLogger(__name__)

#: The verify callback's refusal on this thread (handshakes run on worker threads), for the
#: session to put in its failure reason: the endpoint logs that one line, with the peer.
_refusals = threading.local()


def take_refusal() -> str | None:
    """The certificate refusal of the last handshake step on this thread, once."""
    problem = getattr(_refusals, "problem", None)
    _refusals.problem = None
    return problem


class Kind(enum.Enum):
    DTLS = "dtls"  # CoAP over DTLS over UDP (coaps)
    TLS = "tls"  # CoAP over TLS over TCP (coaps+tcp)


# ECDHE only: forward secrecy for certificates and PSK alike (RFC 9132 §7.1, RFC 7525).
CERT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"
)
PSK_CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES128-CBC-SHA256"
#: Only for test peers such as tinydtls that cannot do (EC)DHE-PSK; never a default.
LEGACY_PSK_CIPHERS = "PSK-AES128-CCM8:PSK-AES128-CCM:PSK-AES128-GCM-SHA256"
GROUPS = b"X25519:P-256:P-384"
#: TLS 1.3 suites, SHA-256 ones first: an external PSK is bound to SHA-256 (RFC 8446 §4.2.11),
#: so a server preferring a SHA-384 suite would silently skip the client's PSK.
TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384"


# --- secrets shared across a fleet ---------------------------------------------------------------


def _read_secret_lines(path: Path, length: int, what: str) -> list[bytes]:
    lines = [
        ln.strip()
        for ln in path.read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    keys = []
    for number, line in enumerate(lines, 1):
        try:
            key = bytes.fromhex(line)
        except ValueError:
            raise ValueError(f"{path}: line {number}: {what} is not hex") from None
        if len(key) != length:
            raise ValueError(
                f"{path}: line {number}: {what} must be {length} bytes "
                f"({2 * length} hex digits), got {len(key)}"
            )
        keys.append(key)
    if not keys:
        raise ValueError(f"{path}: no {what} found")
    return keys


def write_secret_file(path: Path, length: int) -> None:
    """Create a secret file (one hex line) with mode 0600, for ``dots-gateway`` tooling."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_bytes(length).hex() + "\n")


def rotate_secret_file(path: Path, length: int, what: str, keep: int = 1) -> int:
    """Put a new secret on the first line of ``path`` and keep the ``keep`` previous ones
    below it (the first signs or encrypts, all verify or decrypt, so what the fleet issued
    before stays valid until the next rotation). The file is replaced atomically with mode
    0600. Returns how many older secrets were dropped; ValueError for a file that is not a
    secret file of this kind, OSError for one that cannot be read or written."""
    if keep < 1:
        raise ValueError("keep at least the previous secret (keep >= 1)")
    previous = _read_secret_lines(path, length, what)
    lines = [secrets.token_bytes(length).hex(), *(k.hex() for k in previous[:keep])]
    temporary = path.with_name(f".{path.name}.rotating")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"# {what}s, newest first: the first is used, all are accepted\n")
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return max(0, len(previous) - keep)


class CookieSecrets:
    """HMAC secrets for DTLS HelloVerifyRequest cookies (RFC 6347 §4.2.1).

    The cookie binds the client's address and port; the first secret signs, every secret
    verifies, so a fleet can roll a new secret out without failing handshakes in flight.
    """

    LENGTH = 32

    def __init__(self, keys: list[bytes] | None = None) -> None:
        self.keys = keys or [secrets.token_bytes(self.LENGTH)]

    @classmethod
    def from_file(cls, path: Path) -> CookieSecrets:
        return cls(_read_secret_lines(path, cls.LENGTH, "cookie secret"))

    def generate(self, peer: bytes) -> bytes:
        return hmac.digest(self.keys[0], peer, "sha256")[:16]

    def verify(self, peer: bytes, cookie: bytes) -> bool:
        return any(
            hmac.compare_digest(hmac.digest(k, peer, "sha256")[:16], cookie)
            for k in self.keys
        )


@dataclass(frozen=True, slots=True)
class TicketKey:
    name: bytes  # 16, sent in the clear inside the ticket to find the key again
    hmac_key: bytes  # 32
    aes_key: bytes  # 32

    LENGTH = 80

    @classmethod
    def from_bytes(cls, raw: bytes) -> TicketKey:
        return cls(raw[:16], raw[16:48], raw[48:80])


class TicketKeyRing:
    """Session-ticket keys: the first encrypts new tickets, all of them decrypt.

    RFC 9132 §7.1 asks for stateless resumption (RFC 5077); with one key file on every
    node a client can resume on whichever node anycast routes it to, or after a restart.
    """

    def __init__(self, keys: list[TicketKey] | None = None) -> None:
        self.keys = keys or [TicketKey.from_bytes(secrets.token_bytes(TicketKey.LENGTH))]

    @classmethod
    def from_file(cls, path: Path) -> TicketKeyRing:
        raw = _read_secret_lines(path, TicketKey.LENGTH, "ticket key")
        return cls([TicketKey.from_bytes(k) for k in raw])

    def find(self, name: bytes) -> tuple[TicketKey | None, bool]:
        """The key with this name, and whether it is the current one."""
        for index, key in enumerate(self.keys):
            if key.name == name:
                return key, index == 0
        return None, False


# --- credentials -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerCredentials:
    cert_chain: Path | None = None
    private_key: Path | None = None
    #: CAs whose clients are accepted (all of them are announced to clients).
    client_ca: Path | None = None
    #: PSK identity -> key (RFC 9132 §7.1 PSK with ECDHE).
    psk: Mapping[bytes, bytes] = field(default_factory=dict)
    allow_legacy_psk: bool = False
    #: A CRL (PEM) for client certificates; the whole chain is checked when set.
    crl: Path | None = None


@dataclass(frozen=True)
class ClientCredentials:
    cert_chain: Path | None = None
    private_key: Path | None = None
    #: CAs trusted to sign the server's certificate.
    server_ca: Path | None = None
    psk_identity: bytes | None = None
    psk_key: bytes | None = None
    allow_legacy_psk: bool = False


# --- contexts ----------------------------------------------------------------------------------


class _Context:
    """Owns one ``SSL_CTX`` and the callbacks that must outlive it."""

    def __init__(self, kind: Kind, method: Any) -> None:
        self.kind = kind
        ctx = ssl.SSL_CTX_new(method)
        if ctx == ffi.NULL:
            raise OpenSSLError("SSL_CTX_new failed: " + error_queue())
        self._ptr = ffi.gc(ctx, ssl.SSL_CTX_free)
        self._callbacks: list[Any] = []
        min_version = DTLS1_2_VERSION if kind is Kind.DTLS else TLS1_2_VERSION
        # RFC 9132 §7.1: (D)TLS 1.2 or later only.
        check(
            ssl.SSL_CTX_ctrl(self._ptr, SSL_CTRL_SET_MIN_PROTO_VERSION, min_version, ffi.NULL),
            "setting the minimum protocol version",
        )
        check(
            ssl.SSL_CTX_ctrl(self._ptr, SSL_CTRL_SET_GROUPS_LIST, 0, ffi.new("char[]", GROUPS)),
            "setting ECDHE groups",
        )
        # RELEASE_BUFFERS: ~10 KiB less per idle session (measured in the prototype).
        ssl.SSL_CTX_ctrl(self._ptr, SSL_CTRL_MODE, SSL_MODE_RELEASE_BUFFERS, ffi.NULL)
        ssl.SSL_CTX_set_options(self._ptr, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION)
        if kind is Kind.TLS:
            check(ssl.SSL_CTX_set_ciphersuites(self._ptr, TLS13_SUITES), "setting TLS 1.3 suites")

    @property
    def ptr(self) -> Any:
        return self._ptr

    def _end_entity_check(self, *, client: bool) -> Any:
        """A verify callback applying ``leaf_problem`` to the peer's certificate, so that a
        refusal happens inside the handshake and the peer gets an alert (after the handshake
        it could only be dropped silently, and the peer would believe it is connected)."""

        @ffi.callback("int(int, X509_STORE_CTX *)")
        def verify(preverify_ok: int, store: Any) -> int:
            if not preverify_ok:
                # OpenSSL's own verdict (unknown CA, expired, wrong purpose...): the error
                # queue only says "certificate verify failed", so keep why for the log line.
                code = crypto.X509_STORE_CTX_get_error(store)
                _refusals.problem = ffi.string(
                    crypto.X509_verify_cert_error_string(code)).decode("ascii", "replace")
                return 0
            try:
                if crypto.X509_STORE_CTX_get_error_depth(store) != 0:
                    return 1
                problem = leaf_problem(der_of(crypto.X509_STORE_CTX_get_current_cert(store)),
                                       client=client)
            except Exception:  # never unwind through OpenSSL
                log.exception("certificate check failed")
                problem = "certificate check failed"
            if problem is None:
                return 1
            log.debug("peer certificate refused: %s", problem)
            _refusals.problem = problem  # in the handshake's failure reason (take_refusal)
            crypto.X509_STORE_CTX_set_error(store, X509_V_ERR_INVALID_PURPOSE)
            return 0

        self._callbacks.append(verify)
        return verify

    def _set_ciphers(self, *, certificates: bool, psk: bool, legacy_psk: bool) -> None:
        parts = ([CERT_CIPHERS] if certificates else []) + ([PSK_CIPHERS] if psk else [])
        if psk and legacy_psk:
            parts.append(LEGACY_PSK_CIPHERS)
        spec = ":".join(parts)
        if legacy_psk:
            spec += ":@SECLEVEL=0"  # CCM8 sits below OpenSSL's default security level
        check(ssl.SSL_CTX_set_cipher_list(self._ptr, spec.encode()), "setting the cipher list")

    def _load_chain(self, chain: Path, key: Path) -> None:
        check(
            ssl.SSL_CTX_use_certificate_chain_file(self._ptr, bytes(chain)),
            f"loading certificate chain {chain}",
        )
        check(
            ssl.SSL_CTX_use_PrivateKey_file(self._ptr, bytes(key), SSL_FILETYPE_PEM),
            f"loading private key {key}",
        )
        check(ssl.SSL_CTX_check_private_key(self._ptr), f"matching {key} with {chain}")


class ServerContext(_Context):
    """A server ``SSL_CTX``: certificates and/or PSK, cookies (DTLS), shared ticket keys."""

    def __init__(
        self,
        kind: Kind,
        credentials: ServerCredentials,
        *,
        cookies: CookieSecrets | None = None,
        tickets: TicketKeyRing | None = None,
    ) -> None:
        super().__init__(
            kind, ssl.DTLS_server_method() if kind is Kind.DTLS else ssl.TLS_server_method()
        )
        self.credentials = credentials
        self.cookies = cookies or CookieSecrets()
        self.tickets = tickets or TicketKeyRing()
        #: The client address a cookie binds: the listener's current datagram source, or,
        #: for sessions adopted after DTLSv1_listen (possibly running in a worker thread),
        #: their own address registered in ``peers``.
        self.current_peer = b""
        self.peers: dict[int, bytes] = {}
        #: PSK identity chosen during a handshake, by SSL* address. TLS 1.3 does not expose
        #: it through SSL_get_psk_identity, so the callback records it; sessions pop it.
        self.psk_identities: dict[int, bytes] = {}
        has_certs = credentials.cert_chain is not None
        if has_certs:
            assert credentials.private_key is not None
            self._load_chain(credentials.cert_chain, credentials.private_key)  # type: ignore[arg-type]
        if credentials.client_ca is not None:
            check(
                ssl.SSL_CTX_load_verify_locations(
                    self._ptr, bytes(credentials.client_ca), ffi.NULL
                ),
                "loading client CAs",
            )
            names = ssl.SSL_load_client_CA_file(bytes(credentials.client_ca))
            if names == ffi.NULL:
                raise OpenSSLError(f"reading CA names from {credentials.client_ca}")
            ssl.SSL_CTX_set_client_CA_list(self._ptr, names)  # every CA is announced
            if credentials.crl is not None:
                store = ssl.SSL_CTX_get_cert_store(self._ptr)
                check(
                    crypto.X509_STORE_load_file(store, bytes(credentials.crl)),
                    f"loading CRL {credentials.crl}",
                )
                crypto.X509_STORE_set_flags(
                    store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL
                )
            ssl.SSL_CTX_set_verify(
                self._ptr,
                SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                self._end_entity_check(client=True),
            )
        if not has_certs and not credentials.psk:
            raise ValueError("a server needs a certificate, PSKs, or both")
        self._set_ciphers(
            certificates=has_certs,
            psk=bool(credentials.psk),
            legacy_psk=credentials.allow_legacy_psk,
        )
        ssl.SSL_CTX_set_options(self._ptr, SSL_OP_CIPHER_SERVER_PREFERENCE)
        sid_context = b"dots-gateway"
        check(
            ssl.SSL_CTX_set_session_id_context(self._ptr, sid_context, len(sid_context)),
            "setting the session id context",
        )
        # Stateless resumption only: no server-side session cache to grow with clients.
        ssl.SSL_CTX_ctrl(self._ptr, SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF, ffi.NULL)
        if credentials.psk:
            self._install_psk()
        if kind is Kind.DTLS:
            self._install_cookies()
        self._install_tickets()

    def _install_psk(self) -> None:
        table = dict(self.credentials.psk)

        @ffi.callback("unsigned int(SSL *, const char *, unsigned char *, unsigned int)")
        def psk_server(ssl_ptr: Any, identity: Any, psk: Any, max_len: int) -> int:
            if identity == ffi.NULL:
                return 0
            name = ffi.string(identity)
            key = table.get(name)
            if key is None or len(key) > max_len:
                return 0  # OpenSSL answers unknown_psk_identity
            self.psk_identities[ssl_address(ssl_ptr)] = name
            ffi.memmove(psk, key, len(key))
            return len(key)

        ssl.SSL_CTX_set_psk_server_callback(self._ptr, psk_server)
        self._callbacks.append(psk_server)

    def peer_of(self, ssl_ptr: Any) -> bytes:
        return self.peers.get(ssl_address(ssl_ptr), self.current_peer)

    def _install_cookies(self) -> None:
        @ffi.callback("int(SSL *, unsigned char *, unsigned int *)")
        def generate(ssl_ptr: Any, cookie: Any, length: Any) -> int:
            value = self.cookies.generate(self.peer_of(ssl_ptr))
            ffi.memmove(cookie, value, len(value))
            length[0] = len(value)
            return 1

        @ffi.callback("int(SSL *, const unsigned char *, unsigned int)")
        def verify(ssl_ptr: Any, cookie: Any, length: int) -> int:
            peer = self.peer_of(ssl_ptr)
            return int(self.cookies.verify(peer, bytes(ffi.buffer(cookie, length))))

        ssl.SSL_CTX_set_cookie_generate_cb(self._ptr, generate)
        ssl.SSL_CTX_set_cookie_verify_cb(self._ptr, verify)
        self._callbacks += [generate, verify]

    def _install_tickets(self) -> None:
        digest = ffi.new("char[]", b"SHA256")
        names = {"key": ffi.new("char[]", b"key"), "digest": ffi.new("char[]", b"digest")}
        keep: list[Any] = [digest, names]

        @ffi.callback(
            "int(SSL *, unsigned char *, unsigned char *, EVP_CIPHER_CTX *, EVP_MAC_CTX *, int)"
        )
        def ticket_key(_ssl: Any, key_name: Any, iv: Any, cctx: Any, mctx: Any, enc: int) -> int:
            try:
                if enc:
                    key, current = self.tickets.keys[0], True
                    ffi.memmove(key_name, key.name, 16)
                    ffi.memmove(iv, os.urandom(16), 16)
                else:
                    found, current = self.tickets.find(bytes(ffi.buffer(key_name, 16)))
                    if found is None:
                        return 0  # unknown key: fall back to a full handshake
                    key = found
                init = crypto.EVP_EncryptInit_ex if enc else crypto.EVP_DecryptInit_ex
                if init(cctx, crypto.EVP_aes_256_cbc(), ffi.NULL, key.aes_key, iv) != 1:
                    return -1
                params = ffi.new("OSSL_PARAM[3]")
                hmac_key = ffi.new("unsigned char[]", key.hmac_key)
                params[0] = (
                    names["key"],
                    OSSL_PARAM_OCTET_STRING,
                    hmac_key,
                    32,
                    OSSL_PARAM_UNMODIFIED,
                )
                params[1] = (
                    names["digest"],
                    OSSL_PARAM_UTF8_STRING,
                    digest,
                    6,
                    OSSL_PARAM_UNMODIFIED,
                )
                params[2] = (ffi.NULL, 0, ffi.NULL, 0, 0)
                if crypto.EVP_MAC_CTX_set_params(mctx, params) != 1:
                    return -1
                return 1 if enc or current else 2  # 2: accept, and issue a fresh ticket
            except Exception:  # an exception must not unwind through OpenSSL
                log.exception("session ticket callback failed")
                return -1

        check(
            ssl.SSL_CTX_set_tlsext_ticket_key_evp_cb(self._ptr, ticket_key),
            "installing the ticket key callback",
        )
        self._callbacks += [ticket_key, keep]


class ClientContext(_Context):
    """A client ``SSL_CTX``: our certificate or PSK, and the CAs we trust for servers."""

    def __init__(self, kind: Kind, credentials: ClientCredentials) -> None:
        super().__init__(
            kind, ssl.DTLS_client_method() if kind is Kind.DTLS else ssl.TLS_client_method()
        )
        self.credentials = credentials
        has_certs = credentials.cert_chain is not None
        has_psk = credentials.psk_identity is not None
        if has_certs:
            assert credentials.private_key is not None
            self._load_chain(credentials.cert_chain, credentials.private_key)  # type: ignore[arg-type]
        if credentials.server_ca is not None:
            check(
                ssl.SSL_CTX_load_verify_locations(
                    self._ptr, bytes(credentials.server_ca), ffi.NULL
                ),
                "loading server CAs",
            )
            ssl.SSL_CTX_set_verify(self._ptr, SSL_VERIFY_PEER,
                                   self._end_entity_check(client=False))
        elif not has_psk:
            raise ValueError("a certificate client needs the CA that signs the server")
        self._set_ciphers(
            certificates=not has_psk, psk=has_psk, legacy_psk=credentials.allow_legacy_psk
        )
        ssl.SSL_CTX_ctrl(self._ptr, SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_CLIENT, ffi.NULL)
        if has_psk:
            self._install_psk()

    def _install_psk(self) -> None:
        identity = self.credentials.psk_identity or b""
        key = self.credentials.psk_key or b""

        @ffi.callback(
            "unsigned int(SSL *, const char *, char *, unsigned int, unsigned char *, unsigned int)"
        )
        def psk_client(
            _ssl: Any, _hint: Any, out_identity: Any, max_identity: int, out_psk: Any, max_psk: int
        ) -> int:
            if len(identity) + 1 > max_identity or len(key) > max_psk:
                return 0
            ffi.memmove(out_identity, identity + b"\0", len(identity) + 1)
            ffi.memmove(out_psk, key, len(key))
            return len(key)

        ssl.SSL_CTX_set_psk_client_callback(self._ptr, psk_client)
        self._callbacks.append(psk_client)


def ssl_address(ssl_ptr: Any) -> int:
    return int(ffi.cast("uintptr_t", ssl_ptr))




@functools.lru_cache(maxsize=4096)
def leaf_problem(der: bytes, *, client: bool) -> str | None:
    """Why a verified peer certificate may still not identify a DOTS agent, or None.

    OpenSSL accepts a trust anchor presented as the peer certificate; the prototype saw the
    CA certificate itself accepted as a client identity. A DOTS agent is an end entity whose
    EKU, when present, allows its role.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return f"unparsable peer certificate: {exc}"
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            return "peer certificate is a CA certificate, not an end entity"
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    wanted = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    if wanted not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
        role = "clientAuth" if client else "serverAuth"
        return f"peer certificate's extended key usage does not allow {role}"
    return None
