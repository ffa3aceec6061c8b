"""Secure transports: DTLS and TLS on the system OpenSSL, UDP/TCP endpoints, PKTINFO."""
