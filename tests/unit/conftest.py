"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from certs.devpki import init_dev_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev PKI (certs init): CA, server and client certificates, a PSK."""
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory
