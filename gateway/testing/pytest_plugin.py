"""The pytest plugin of the testing kit (entry point ``dots_gateway`` in ``pytest11``).

``dots_server``: an ``EmbeddedServer`` started for the test and stopped after it. Options
come from the test's ``@pytest.mark.dots_server(...)`` marker (the ``EmbeddedServer``
keyword arguments: ``host``, ``transports``, ``config``). The fixture is a pytest-asyncio
fixture (strict or auto mode), so it runs in the test's event loop, where the aiocoap client
of the test runs too; without pytest-asyncio it fails with a message saying so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

# The server is imported by the fixture, not here: see gateway.testing (coverage).
if TYPE_CHECKING:
    from gateway.testing.embedded import EmbeddedServer

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - pytest-asyncio is in the test extra
    pytest_asyncio = None  # type: ignore[assignment]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "dots_server(host=..., transports=..., config=...): options of the "
        "dots_server fixture (gateway.testing.EmbeddedServer keyword arguments)")


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("dots_server")
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError("@pytest.mark.dots_server takes keyword arguments only")
    return dict(marker.kwargs)


if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def dots_server(request: pytest.FixtureRequest) -> AsyncIterator[EmbeddedServer]:
        """A terminal-mode DOTS server on 127.0.0.1 (coaps and coaps+tcp, ephemeral
        ports, its own dev PKI) for this test; see ``gateway.testing.EmbeddedServer``."""
        from gateway.testing.embedded import EmbeddedServer

        async with EmbeddedServer(**_options(request)) as server:
            yield server

else:  # pragma: no cover

    @pytest.fixture
    def dots_server() -> None:
        pytest.fail("the dots_server fixture needs pytest-asyncio (pip install pytest-asyncio)")
