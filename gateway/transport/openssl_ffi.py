"""A minimal binding to OpenSSL 3 (the system's libssl.so.3 unless told), in cffi ABI mode.

Why our own binding: no Python library serves DTLS with client certificates *and* PSK,
lets us set shared session-ticket keys (RFC 9132 §7.1 wants stateless resumption, and an
anycast fleet must share the keys), or frees a connection's state when we say so. pyOpenSSL
lacks PSK and ticket-key APIs, so a prototype reached into its private internals. Here we
only call OpenSSL's *public* C API, declared below exactly as in the OpenSSL 3.0 headers.
Macros are spelled out as the ``*_ctrl`` calls they expand to, with the header's constants.

Which OpenSSL: ``DOTS_GATEWAY_OPENSSL`` may name the directory of another OpenSSL 3.x build
(its libssl and libcrypto, whatever their soname suffix). Every 3.x keeps 3.0's ABI, and the
newer ones do a full DTLS handshake with ~40% fewer instructions than Debian 12's 3.0
(tests/bench/RESULTS.md); the system's copy stays the default because it gets the
distribution's security updates. It is an environment variable, not a configuration key,
because the library is loaded once per process, before any configuration is read, and
``dots-client`` needs the same choice.

This is the only module that touches cffi; ``gateway.transport.tls_context`` and
``gateway.transport.secure_session`` build on it.
"""

from __future__ import annotations

import ctypes.util
import os
from typing import Any, NoReturn

import cffi

ffi = cffi.FFI()
ffi.cdef(
    """
    typedef ... SSL_CTX;
    typedef ... SSL;
    typedef ... SSL_METHOD;
    typedef ... SSL_CIPHER;
    typedef ... SSL_SESSION;
    typedef ... BIO;
    typedef ... BIO_METHOD;
    typedef ... BIO_ADDR;
    typedef ... X509;
    typedef ... X509_STORE_CTX;
    typedef ... X509_VERIFY_PARAM;
    typedef ... X509_STORE;
    typedef ... EVP_CIPHER;
    typedef ... EVP_CIPHER_CTX;
    typedef ... EVP_MAC_CTX;
    typedef ... ENGINE;
    typedef struct {
        const char *key;
        unsigned int data_type;
        void *data;
        size_t data_size;
        size_t return_size;
    } OSSL_PARAM;
    struct timeval { long tv_sec; long tv_usec; };

    const SSL_METHOD *DTLS_server_method(void);
    const SSL_METHOD *DTLS_client_method(void);
    const SSL_METHOD *TLS_server_method(void);
    const SSL_METHOD *TLS_client_method(void);

    SSL_CTX *SSL_CTX_new(const SSL_METHOD *meth);
    void SSL_CTX_free(SSL_CTX *ctx);
    long SSL_CTX_ctrl(SSL_CTX *ctx, int cmd, long larg, void *parg);
    uint64_t SSL_CTX_set_options(SSL_CTX *ctx, uint64_t op);
    int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file);
    int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type);
    int SSL_CTX_check_private_key(const SSL_CTX *ctx);
    int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *CAfile, const char *CApath);
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, int (*callback)(int, X509_STORE_CTX *));
    void SSL_CTX_set_verify_depth(SSL_CTX *ctx, int depth);
    void *SSL_load_client_CA_file(const char *file);
    void SSL_CTX_set_client_CA_list(SSL_CTX *ctx, void *name_list);
    int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *str);
    int SSL_CTX_set_ciphersuites(SSL_CTX *ctx, const char *str);
    int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid_ctx,
                                       unsigned int sid_ctx_len);
    void SSL_CTX_set_cookie_generate_cb(SSL_CTX *ctx,
        int (*app_gen_cookie_cb)(SSL *ssl, unsigned char *cookie, unsigned int *cookie_len));
    void SSL_CTX_set_cookie_verify_cb(SSL_CTX *ctx,
        int (*app_verify_cookie_cb)(SSL *ssl, const unsigned char *cookie,
                                    unsigned int cookie_len));
    void SSL_CTX_set_psk_server_callback(SSL_CTX *ctx,
        unsigned int (*cb)(SSL *ssl, const char *identity, unsigned char *psk,
                           unsigned int max_psk_len));
    void SSL_CTX_set_psk_client_callback(SSL_CTX *ctx,
        unsigned int (*cb)(SSL *ssl, const char *hint, char *identity,
                           unsigned int max_identity_len, unsigned char *psk,
                           unsigned int max_psk_len));
    int SSL_CTX_use_psk_identity_hint(SSL_CTX *ctx, const char *identity_hint);
    int SSL_CTX_set_tlsext_ticket_key_evp_cb(SSL_CTX *ctx,
        int (*fp)(SSL *s, unsigned char key_name[16], unsigned char iv[16],
                  EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc));

    SSL *SSL_new(SSL_CTX *ctx);
    void SSL_free(SSL *ssl);
    long SSL_ctrl(SSL *ssl, int cmd, long larg, void *parg);
    uint64_t SSL_set_options(SSL *s, uint64_t op);
    uint64_t SSL_clear_options(SSL *s, uint64_t op);
    void SSL_set_bio(SSL *s, BIO *rbio, BIO *wbio);
    BIO *SSL_get_rbio(const SSL *s);
    BIO *SSL_get_wbio(const SSL *s);
    void SSL_set_accept_state(SSL *s);
    void SSL_set_connect_state(SSL *s);
    int SSL_do_handshake(SSL *s);
    int SSL_is_init_finished(const SSL *s);
    int SSL_read(SSL *ssl, void *buf, int num);
    int SSL_has_pending(const SSL *s);
    int SSL_free_buffers(SSL *ssl);
    int SSL_alloc_buffers(SSL *ssl);
    unsigned long OpenSSL_version_num(void);
    const char *OpenSSL_version(int type);
    size_t SSL_get_client_random(const SSL *ssl, unsigned char *out, size_t outlen);
    size_t SSL_get_server_random(const SSL *ssl, unsigned char *out, size_t outlen);
    SSL_SESSION *SSL_get_session(const SSL *ssl);
    size_t SSL_SESSION_get_master_key(const SSL_SESSION *sess, unsigned char *out, size_t outlen);
    int SSL_write(SSL *ssl, const void *buf, int num);
    int SSL_get_error(const SSL *s, int ret_code);
    int SSL_shutdown(SSL *s);
    X509 *SSL_get1_peer_certificate(const SSL *s);
    long SSL_get_verify_result(const SSL *ssl);
    int SSL_session_reused(const SSL *s);
    const SSL_CIPHER *SSL_get_current_cipher(const SSL *s);
    const SSL_CIPHER *SSL_get_pending_cipher(const SSL *s);
    const char *SSL_CIPHER_get_name(const SSL_CIPHER *c);
    const char *SSL_get_version(const SSL *s);
    const char *SSL_get_psk_identity(const SSL *s);
    int SSL_set1_host(SSL *s, const char *hostname);
    X509_VERIFY_PARAM *SSL_get0_param(SSL *ssl);
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *param, const char *ipasc);
    SSL_SESSION *SSL_get1_session(SSL *ssl);
    int SSL_set_session(SSL *to, SSL_SESSION *session);
    void SSL_SESSION_free(SSL_SESSION *ses);
    int i2d_SSL_SESSION(SSL_SESSION *in, unsigned char **pp);
    SSL_SESSION *d2i_SSL_SESSION(SSL_SESSION **a, const unsigned char **pp, long length);
    int DTLSv1_listen(SSL *s, BIO_ADDR *client);

    const BIO_METHOD *BIO_s_mem(void);
    BIO *BIO_new(const BIO_METHOD *type);
    int BIO_free(BIO *a);
    int BIO_write(BIO *b, const void *data, int dlen);
    int BIO_read(BIO *b, void *data, int dlen);
    long BIO_ctrl(BIO *bp, int cmd, long larg, void *parg);
    BIO_ADDR *BIO_ADDR_new(void);
    void BIO_ADDR_free(BIO_ADDR *);

    X509_STORE *SSL_CTX_get_cert_store(const SSL_CTX *ctx);
    int X509_STORE_CTX_get_error_depth(const X509_STORE_CTX *ctx);
    X509 *X509_STORE_CTX_get_current_cert(const X509_STORE_CTX *ctx);
    void X509_STORE_CTX_set_error(X509_STORE_CTX *ctx, int s);
    int X509_STORE_CTX_get_error(const X509_STORE_CTX *ctx);
    const char *X509_verify_cert_error_string(long n);
    int X509_STORE_load_file(X509_STORE *ctx, const char *file);
    int X509_STORE_set_flags(X509_STORE *ctx, unsigned long flags);

    int i2d_X509(X509 *a, unsigned char **out);
    void X509_free(X509 *a);
    void CRYPTO_free(void *ptr, const char *file, int line);

    const EVP_CIPHER *EVP_aes_256_cbc(void);
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv);
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv);
    int EVP_MAC_CTX_set_params(EVP_MAC_CTX *ctx, const OSSL_PARAM params[]);

    unsigned long ERR_get_error(void);
    void ERR_error_string_n(unsigned long e, char *buf, size_t len);
    void ERR_clear_error(void);
    """
)

# Constants from the OpenSSL 3.0 headers (ssl.h, tls1.h, dtls1.h, bio.h, x509_vfy.h, params.h).
SSL_FILETYPE_PEM = 1
SSL_VERIFY_NONE = 0x00
SSL_VERIFY_PEER = 0x01
SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
SSL_ERROR_NONE = 0
SSL_ERROR_SSL = 1
SSL_ERROR_WANT_READ = 2
SSL_ERROR_WANT_WRITE = 3
SSL_ERROR_SYSCALL = 5
SSL_ERROR_ZERO_RETURN = 6
SSL_OP_NO_QUERY_MTU = 0x00001000
SSL_OP_COOKIE_EXCHANGE = 0x00002000
SSL_OP_NO_TICKET = 0x00004000
SSL_OP_NO_RENEGOTIATION = 0x40000000
SSL_OP_CIPHER_SERVER_PREFERENCE = 0x00400000
SSL_OP_NO_COMPRESSION = 0x00020000
SSL_MODE_RELEASE_BUFFERS = 0x00000010
SSL_CTRL_SET_MTU = 17
SSL_CTRL_SET_MAX_SEND_FRAGMENT = 52
SSL_CTRL_MODE = 33
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
SSL_CTRL_SET_GROUPS_LIST = 92
SSL_CTRL_SET_MIN_PROTO_VERSION = 123
SSL_CTRL_SET_MAX_PROTO_VERSION = 124
DTLS_CTRL_GET_TIMEOUT = 73
DTLS_CTRL_HANDLE_TIMEOUT = 74
DTLS_CTRL_SET_LINK_MTU = 120
SSL_SESS_CACHE_OFF = 0x0000
SSL_SESS_CACHE_CLIENT = 0x0001
TLSEXT_NAMETYPE_host_name = 0
TLS1_2_VERSION = 0x0303
TLS1_3_VERSION = 0x0304
DTLS1_2_VERSION = 0xFEFD
BIO_CTRL_PENDING = 10
BIO_C_SET_BUF_MEM_EOF_RETURN = 130
X509_V_OK = 0
X509_V_ERR_INVALID_PURPOSE = 26
X509_V_FLAG_CRL_CHECK = 0x4
X509_V_FLAG_CRL_CHECK_ALL = 0x8
OSSL_PARAM_UTF8_STRING = 4
OSSL_PARAM_OCTET_STRING = 5
OSSL_PARAM_UNMODIFIED = 2**64 - 1

#: The OpenSSL we bind by default; Debian 12 ships 3.0.x as libssl3, which ``make`` makes
#: sure exists.
LIBSSL_NAME = "libssl.so.3"
LIBCRYPTO_NAME = "libcrypto.so.3"
#: The directory of another OpenSSL 3.x build to load instead (see the module's docstring).
OPENSSL_DIR_VARIABLE = "DOTS_GATEWAY_OPENSSL"
_OPENSSL_VERSION = 0  # OpenSSL_version()'s OPENSSL_VERSION: "OpenSSL 3.5.9 29 Sep 2026"


def _load(name: str) -> Any:
    try:
        return ffi.dlopen(name)
    except OSError:
        found = ctypes.util.find_library(name.split(".")[0].removeprefix("lib"))
        if found is None:
            raise
        return ffi.dlopen(found)


def _refuse(directory: str, reason: str) -> NoReturn:
    # An exit with the message, not an exception: this runs at import time in every command,
    # and an operator's wrong path deserves one line naming the variable, not a traceback.
    raise SystemExit(f"{OPENSSL_DIR_VARIABLE}={directory}: {reason}")


def _library_in(directory: str, stem: str) -> str:
    """The one ``stem*.so.3`` in ``directory`` (wheels bundle e.g. libssl-8b66dd34.so.3)."""
    try:
        names = sorted(n for n in os.listdir(directory)
                       if n.startswith(stem) and n.endswith(".so.3"))
    except OSError as exc:
        _refuse(directory, f"cannot read the directory ({exc.strerror})")
    if len(names) != 1:
        _refuse(directory, f"expected exactly one {stem}*.so.3 there, found "
                           f"{', '.join(names) or 'none'}")
    return os.path.join(directory, names[0])


def _load_chosen(directory: str) -> tuple[Any, Any]:
    crypto_path = _library_in(directory, "libcrypto")
    ssl_path = _library_in(directory, "libssl")
    try:
        # By full path: a build whose libcrypto has another soname loads beside the
        # system's copy (which Python's own _ssl/_hashlib may hold) without mixing with it.
        chosen_crypto, chosen_ssl = ffi.dlopen(crypto_path), ffi.dlopen(ssl_path)
    except OSError as exc:
        _refuse(directory, f"cannot load it: {exc}")
    # libssl finds its libcrypto by its own soname and rpath: it must be this one, or keys and
    # objects would cross between two copies of OpenSSL.
    if (ffi.cast("void *", ffi.addressof(chosen_ssl, "OpenSSL_version_num"))
            != ffi.cast("void *", ffi.addressof(chosen_crypto, "OpenSSL_version_num"))):
        _refuse(directory, f"its libssl uses another libcrypto than {crypto_path}")
    if chosen_crypto.OpenSSL_version_num() >> 28 != 3:
        _refuse(directory, "not an OpenSSL 3.x build (the binding follows the 3.x ABI)")
    return chosen_crypto, chosen_ssl


if os.environ.get(OPENSSL_DIR_VARIABLE):
    crypto, ssl = _load_chosen(os.environ[OPENSSL_DIR_VARIABLE])
else:
    # libcrypto first so libssl's dependency resolves to the same copy.
    crypto = _load(LIBCRYPTO_NAME)
    ssl = _load(LIBSSL_NAME)


def openssl_version() -> str:
    """The loaded OpenSSL's own version line, e.g. ``OpenSSL 3.0.13 30 Jan 2024``."""
    return ffi.string(crypto.OpenSSL_version(_OPENSSL_VERSION)).decode("ascii", "replace")


def openssl_version_number() -> str:
    """``3.0.13``: the version as a metric label or log field carries it."""
    number = crypto.OpenSSL_version_num()
    return f"{number >> 28}.{(number >> 20) & 0xFF}.{(number >> 4) & 0xFF}"


class OpenSSLError(Exception):
    """An OpenSSL call failed; the message carries OpenSSL's error queue."""


def error_queue() -> str:
    """Drain OpenSSL's thread-local error queue into one readable string."""
    messages = []
    buf = ffi.new("char[256]")
    for _ in range(16):  # the queue is short; bound the loop anyway
        code = crypto.ERR_get_error()
        if not code:
            break
        crypto.ERR_error_string_n(code, buf, 256)
        messages.append(ffi.string(buf).decode("ascii", "replace"))
    return "; ".join(messages)


def check(ok: int, what: str) -> None:
    if ok != 1:
        raise OpenSSLError(f"{what} failed: {error_queue() or 'no detail'}")


def der_of(x509: Any) -> bytes:
    """DER bytes of an ``X509*`` (the caller still owns and frees it)."""
    out = ffi.new("unsigned char **")
    length = crypto.i2d_X509(x509, out)
    if length <= 0:
        raise OpenSSLError("i2d_X509 failed: " + error_queue())
    try:
        return bytes(ffi.buffer(out[0], length))
    finally:
        crypto.CRYPTO_free(out[0], b"openssl_ffi", 0)
