"""The DOTS client role: sessions to DOTS servers and the ``dots-client`` command.

Owns connecting (Happy Eyeballs over DTLS and TLS, ``connect``), the per-session CoAP
message layer (``session``), request/answer helpers (``messages``), Block2 reassembly
(``blocks``), the signal channel's parts: sending requests with their pacing
(``transmission``), heartbeats both ways, loss detection and the channel's timer
(``heartbeats``), following redirects (``redirect``), and the channel that composes them
with session establishment, resumption and back-off (``channel``); the persisted client
state (``state``), the library API ``DotsClient`` (``role``) and the ``dots-client`` CLI
(``cli``); the data channel's client (RFC 8783, HTTPS on aiohttp: ``data``) and its
``dots-client data`` commands (``data_cli``).

May import: ``gateway.dots``, ``gateway.coap``, ``gateway.transport``, ``certs``,
``redirect`` and ``gateway.ops.logsetup`` (the CLI's log format). Nothing of the server
role, the relay or the daemon: the gateway's upstream side uses this package, not the
other way round.
"""
