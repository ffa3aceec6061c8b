"""The DOTS server role: sessions from DOTS clients answered by this node.

Owns the asyncio server role on the endpoints: ``role`` (the wiring to the endpoints: sessions
opened and closed, answers, heartbeats, redirects, bad-input answers, timers), ``session``
(one signal-channel session and the request values it hands the core), ``observe``
(Observe registrations and notification pacing), ``blocks`` (Block2 and ETag); the mitigator
backends that carry accepted requests out of the process (``mitigator``: ``log`` and
``command``) and the SQLite store that keeps mitigations across restarts (``persistence``);
the DOTS data channel (RFC 8783): its HTTPS listener on aiohttp (``data_http``) and its
SQLite store of registrations, aliases and ACLs, also the signal channel's ACL catalog
(``data_store``); the resources themselves are the pure ``gateway.dots.data_channel``.

May import: ``gateway.dots``, ``gateway.coap``, ``gateway.transport``, ``gateway.config``,
``gateway.credentials``, ``gateway.ops`` (control providers, metrics), ``certs`` and
``redirect``. Not the client role, the relay or the daemon.
"""
