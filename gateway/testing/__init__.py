"""The testing kit: a real DOTS server inside a test, for people who test their DOTS clients.

``EmbeddedServer`` (``gateway.testing.embedded``) runs ``dots-gateway server`` (terminal
mode) in the caller's event loop on 127.0.0.1, ephemeral ports, with its own dev PKI in a
temporary directory and credentials ready for aiocoap and libcoap's coap-client; the
mitigations it holds can be read and awaited. ``gateway.testing.pytest_plugin`` (entry point
``dots_gateway`` in ``pytest11``) provides the ``dots_server`` fixture built on it.

It sits on top of the layers (it starts ``gateway.daemon``'s server) and imports no client
library: aiocoap is the user's, never imported here; pytest only by the plugin module.
Nothing of the gateway is imported until a name is used: pytest loads the plugin (and so
this package) before pytest-cov starts measuring, and the suite's coverage of the core must
not lose the lines that run at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.testing.embedded import EmbeddedServer, KitCredentials

__all__ = ["EmbeddedServer", "KitCredentials"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gateway.testing import embedded

        return getattr(embedded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
