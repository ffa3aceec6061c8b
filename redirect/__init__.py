"""Signal-channel redirect (RFC 9132 §4.6): server-side policy, client-side following rules.

Not yet implemented; the wire format (``redirected-signal``) lives in ``gateway.dots.model``.
"""
