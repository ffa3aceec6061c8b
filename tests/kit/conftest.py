"""The kit's plugin for these tests, as an installed package's entry point provides it.

Until the package is reinstalled with this pyproject.toml (``make test`` does it when the
file changes), the venv's metadata has no ``dots_gateway`` pytest11 entry point; register
the same module here then, under the entry point's name, so a later install does not
register it twice."""

from __future__ import annotations

import pytest

PLUGIN_NAME = "dots_gateway"
PLUGIN_MODULE = "gateway.testing.pytest_plugin"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        import importlib

        config.pluginmanager.register(importlib.import_module(PLUGIN_MODULE), PLUGIN_NAME)
