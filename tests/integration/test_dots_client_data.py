"""``dots-client data ...`` end to end: the command as a subprocess against a real
``dots-gateway server`` process (dev PKI found in ``--state-dir``/pki); JSON out, exit codes
0 success, 2 usage, 3 error answer (status and error-tag on stderr), 4 network."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.peers import free_port
from tests.support import rfc8783 as rfc
from tests.support.daemon import serving

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    directory = tmp_path_factory.mktemp("daemon")
    port = free_port()
    config = directory / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{directory / "state"}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_port()}\ntransports = ["udp"]\n'
        f'[data_channel]\naddresses = ["127.0.0.1"]\nport = {port}\n')
    with serving("server", config, directory / "daemon.log"):
        yield directory / "state", port


def data(daemon: tuple[Path, int], *args: str, port: int | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    state, data_port = daemon
    argv = [sys.executable, "-m", "gateway.client.cli", "data", *args, "--state-dir",
            str(state), "--server", f"https://127.0.0.1:{port or data_port}", "--timeout", "10"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def answer(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return dict(json.loads(done.stdout)["response"])


def test_a_session_of_commands(daemon: tuple[Path, int]) -> None:
    done = data(daemon, "register")
    assert done.returncode == 0, done.stderr
    assert answer(done)["status"] == 201
    done = data(daemon, "register")
    assert done.returncode == 3 and "409 data-exists" in done.stderr
    done = data(daemon, "alias", "create", "web", "--target-prefix", "2001:db8:6401::/48",
                "--protocol", "6", "--port", "443", "8080-8090")
    assert done.returncode == 0, done.stderr
    listed = answer(data(daemon, "alias", "list"))["body"]
    (alias,) = listed["ietf-dots-data-channel:aliases"]["alias"]
    assert alias["target-port-range"] == [{"lower-port": 443},
                                          {"lower-port": 8080, "upper-port": 8090}]
    done = data(daemon, "acl", "create", "block-dns", "--destination", "198.51.100.0/24",
                "--protocol", "17", "--destination-port", "53", "--activation-type", "immediate")
    assert done.returncode == 0, done.stderr
    done = data(daemon, "acl", "create", "--json", "-", stdin=json.dumps(rfc.ACL_IPV6_UDP))
    assert done.returncode == 0, done.stderr
    acl = answer(data(daemon, "acl", "list", "block-dns"))["body"][
        "ietf-dots-data-channel:acls"]["acl"][0]
    assert acl["activation-type"] == "immediate"
    assert acl["aces"]["ace"][0]["matches"]["udp"] == {
        "destination-port-range-or-operator": {"operator": "eq", "port": 53}}
    assert data(daemon, "acl", "delete", "block-dns").returncode == 0
    done = data(daemon, "acl", "delete", "block-dns")
    assert done.returncode == 3 and "404" in done.stderr
    caps = answer(data(daemon, "capabilities"))["body"]["ietf-dots-data-channel:capabilities"]
    assert caps["rate-limit"] is True
    tree = answer(data(daemon, "get"))["body"]["ietf-dots-data-channel:dots-data"]
    assert [a["name"] for a in tree["dots-client"][0]["acls"]["acl"]] == ["test-acl-ipv6-udp"]
    assert data(daemon, "unregister").returncode == 0
    assert data(daemon, "alias", "list").returncode == 3


def test_usage_and_network_errors(daemon: tuple[Path, int]) -> None:
    done = data(daemon, "alias", "create", "nothing")
    assert done.returncode == 2 and "--target-prefix" in done.stderr
    done = data(daemon, "acl", "create", "x", "--destination-port", "53")
    assert done.returncode == 2 and "--protocol" in done.stderr
    done = data(daemon, "capabilities", "--psk-identity", "a", "--psk", "b")
    assert done.returncode == 2 and "certificate" in done.stderr
    done = data(daemon, "capabilities", port=free_port())
    assert done.returncode == 4 and "network failure" in done.stderr
    assert "Traceback" not in done.stderr
