"""The DOTS server role: sessions from DOTS clients answered by this node.

Owns the asyncio server role on the endpoints (``role``: sessions, heartbeats, Observe,
Block2, redirects, bad-input answers), the mitigator backends that carry accepted requests
out of the process (``mitigator``: ``log`` and ``command``) and the SQLite store that keeps
mitigations across restarts (``persistence``).

May import: ``gateway.dots``, ``gateway.coap``, ``gateway.transport``, ``gateway.config``,
``gateway.credentials``, ``gateway.ops`` (control providers, metrics), ``certs`` and
``redirect``. Not the client role, the relay or the daemon.
"""
