"""dots-gateway: DOTS server, client and relay roles, transports, discovery, operations.

Layers, from the bottom up (an arrow only ever points down; ``tests/unit/test_layers.py``
checks that no import cycle exists):

* ``gateway.dots``, ``gateway.coap``: the pure protocol cores (no I/O, no clock).
* ``gateway.transport``: DTLS/TLS on the system OpenSSL, UDP/TCP endpoints.
* ``gateway.discovery``: finding upstream DOTS servers.
* ``gateway.ops``: control socket, metrics, log formats.
* ``gateway.config``: TOML settings; ``core_settings`` and ``credentials`` turn them into
  core objects and (D)TLS contexts.
* ``gateway.client``, ``gateway.server``: the two DOTS roles.
* ``gateway.relay``: gateway mode, built from both roles.
* ``gateway.daemon`` (the process) and ``gateway.cli`` (``dots-gateway``): the entry points.
* ``gateway.testing``: the testing kit (the daemon's server inside a test, a pytest plugin).
"""

__version__ = "0.1.0"
