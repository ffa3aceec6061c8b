"""Secure transports: DTLS and TLS on the system OpenSSL, UDP/TCP endpoints, PKTINFO.

Owns the cffi binding to libssl (``openssl_ffi``), one (D)TLS connection on memory BIOs
(``secure_session`` driving ``openssl_connection``; ``dtls_handover`` and ``dtls_records``,
our own DTLS 1.2 record layer once the handshake is done), the contexts and credentials
(``tls_context``), the DTLS server (``dtls_server``: sockets, cookies and admission with
``dtls_admission``; ``dtls_sessions``: handshake steps and established sessions;
``dtls_ssl_objects``: the pool of listener objects), the DTLS client (``dtls_client``), TLS
over TCP (``tls_stream``), handshake worker threads (``endpoint``) and UDP sockets with
PKTINFO and FREEBIND (``udp``).

May import: the standard library, cffi and ``cryptography`` (certificates, and the AEAD after
the hand-over). Nothing else of this project: no CoAP, DOTS, roles,
the configuration or the daemon: endpoints hand established sessions to a callback.
"""
