"""dots-gateway: DOTS server, client and relay roles, transports, discovery, operations.

The pure protocol core lives in ``gateway.dots`` and must not import I/O modules.
"""

__version__ = "0.1.0"
