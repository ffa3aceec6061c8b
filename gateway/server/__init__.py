"""The DOTS server role: sessions from DOTS clients answered by this node.

Owns the asyncio server role on the endpoints: ``role`` (the wiring to the endpoints: sessions
opened and closed, answers, heartbeats, redirects, bad-input answers, timers), ``session``
(one signal-channel session and the request values it hands the core), ``observe``
(Observe registrations and notification pacing), ``blocks`` (Block2 and ETag); the mitigator
backends that carry accepted requests out of the process (``mitigator``: ``log`` and
``command``) and the SQLite store that keeps mitigations across restarts (``persistence``).

May import: ``gateway.dots``, ``gateway.coap``, ``gateway.transport``, ``gateway.config``,
``gateway.credentials``, ``gateway.ops`` (control providers, metrics), ``certs`` and
``redirect``. Not the client role, the relay or the daemon.
"""
