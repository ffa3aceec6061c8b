"""Gateway mode (RFC 8811 §2.2.3): client sessions terminated here and re-originated upstream.

Owns the downstream role (``role``: the server role with mitigation requests relayed), the
relay itself (``forwarding``: per-request checks, cdid, Hop-Limit, failover), its shared
upstream observations (``observation``), re-installation after a new upstream session and
activation on downstream signal loss (``reinstall``), the gateway's own upstream DOTS
client (``upstream``), the relay table in SQLite (``store``) and the start-up wiring: mode
choice, upstream list from configuration and discovery (``startup``); the data channel's
upstream side, which relays what the gateway's own checks accepted (``data_upstream``).

May import: ``gateway.server`` (the role it extends), ``gateway.client`` (its upstream
side), ``gateway.discovery``, ``gateway.dots``, ``gateway.coap``, ``gateway.transport``,
``gateway.config``, ``gateway.ops``, ``certs``. Nothing imports it but the daemon and the CLI.
"""
