"""Gateway mode with no upstream server: refuse to start, unless told to fall back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.test_bad_input import free_udp_port
from tests.support.daemon import ROOT, serving


def gateway_without_upstream(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "gateway.toml"
    # Only the anycast mechanism, with no anycast address configured: discovery ends at once
    # with nothing, as it would on a network that offers no DOTS server.
    config.write_text(
        f'[general]\nmode = "gateway"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_udp_port()}\ntransports = ["udp"]\n'
        f'[discovery]\nmechanisms = ["anycast"]\n{extra}')
    return config


def test_gateway_mode_with_no_upstream_refuses_to_start(tmp_path: Path) -> None:
    config = gateway_without_upstream(tmp_path)
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "dots-gateway serving" not in result.stdout
    assert "Traceback" not in result.stderr
    refusal = [line for line in result.stderr.splitlines() if line.startswith("dots-gateway:")]
    assert len(refusal) == 1, result.stderr
    assert "no upstream DOTS server" in refusal[0]
    assert "gateway.fallback_to_terminal = true" in refusal[0]


def test_the_fallback_to_terminal_mode_is_explicit_and_visible(tmp_path: Path) -> None:
    config = gateway_without_upstream(tmp_path, "[gateway]\nfallback_to_terminal = true\n")
    with serving("run", config, tmp_path / "gateway.log"):
        status = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "status", "--json", "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(status.stdout)["daemon"]["mode"] == (
            "terminal (gateway fallback: no upstream)")
    assert "gateway.fallback_to_terminal" in (tmp_path / "gateway.log").read_text()
