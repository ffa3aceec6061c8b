"""Upstream reconnection as an operator meets it (issue 20 §7), with real daemons: the
gateway is ``dots-gateway run`` and its upstream ``dots-gateway server``, both processes;
``status`` and ``reconnect`` are the operator's commands on the control socket.

Before: after a failed attempt the next one was ``reconnect_interval`` (300 s) plus up to
10 % away (327 s seen), ``status`` showed no per-upstream error nor when the next attempt
runs, and nothing could make the gateway try at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.test_client_role import free_port
from tests.integration.test_gateway import Pkis, gateway_config, upstream_server
from tests.integration.test_gateway_upstream_faults import pkis as pkis  # noqa: F401, fixture
from tests.support.daemon import ROOT, serving


def command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def status(config: Path) -> dict[str, object]:
    result = command("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_shows_why_and_when_and_reconnect_tries_at_once(pkis: Pkis,  # noqa: F811
                                                                tmp_path: Path) -> None:
    port, up_port = free_port(), free_port()
    # The back-off's floor and cap at 60 s: without `reconnect` the next attempt is a
    # minute away, longer than this test waits for the gateway to connect.
    config = gateway_config(tmp_path, pkis, port, [f"127.0.0.1:{up_port}"],
                            extra="reconnect_interval = 60\nreconnect_max_interval = 60\n")
    with serving("run", config, tmp_path / "gateway.log"):
        deadline = time.monotonic() + 30
        while True:
            upstreams = status(config)["upstreams"]
            if upstreams["next_attempt_in"] is not None:  # type: ignore[index]
                break
            assert time.monotonic() < deadline, upstreams
            time.sleep(0.2)
        assert upstreams["connected"] is False  # type: ignore[index]
        assert 30 < upstreams["next_attempt_in"] <= 60  # type: ignore[index, operator]
        assert upstreams["next_attempt_at"].endswith("Z")  # type: ignore[index, union-attr]
        (row,) = upstreams["list"]  # type: ignore[index]
        assert row["name"] == "up0" and row["in_use"] is False
        assert row["next_attempt_at"] == upstreams["next_attempt_at"]  # type: ignore[index]
        assert row["last_error"].startswith(f"coaps://127.0.0.1:{up_port}")
        text = command("status", "--config", str(config))
        assert "next_attempt_at" in text.stdout and "up0" in text.stdout

        unknown = command("reconnect", "nosuch", "--config", str(config))
        assert unknown.returncode == 1
        assert "no upstream named 'nosuch'; configured: up0" in unknown.stderr

        with upstream_server(tmp_path / "up", pkis, up_port):
            started = time.monotonic()
            result = command("reconnect", "up0", "--config", str(config))
            elapsed = time.monotonic() - started
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout.startswith("reconnect: attempting now; connected to ")
            assert elapsed < 30  # not the minute the back-off asked for
            upstreams = status(config)["upstreams"]
            assert upstreams["connected"] is True and upstreams["next_attempt_in"] is None
            assert upstreams["list"][0]["in_use"] is True  # type: ignore[index]
            again = command("reconnect", "--config", str(config), "--json")
            assert again.returncode == 0
            assert json.loads(again.stdout)["action"].endswith("nothing to do")
