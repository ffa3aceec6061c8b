"""``dots-gateway discover`` cut short by ``--timeout`` on this machine's network (issue 20
item 11): the configured upstream (``manual``) is found at once, the mDNS browse outlasts
the deadline; the command shows the progress on stderr, prints what it found, marks mDNS
cut short and exits 3. The old code printed "no candidates" and exited 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import ROOT


def up_ipv4_interface() -> str | None:
    from gateway.discovery.interfaces import list_interfaces, slots_for

    slots, _ = slots_for(list_interfaces(), (), (4,))
    return slots[0].interface if slots else None


def test_discover_keeps_the_upstream_found_before_the_deadline(tmp_path: Path) -> None:
    interface = up_ipv4_interface()
    if interface is None:
        pytest.skip("no IPv4 interface that is up besides loopback")
    config = tmp_path / "discover.toml"
    config.write_text('[[upstream]]\nname = "up1"\naddress = "192.0.2.10"\n'
                      'reference_identifier = "dots.example.net"\n'
                      '[discovery.mdns]\nbrowse_time = 60\n')
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "discover", "--config", str(config),
         "--interface", interface, "--family", "4", "--mechanism", "manual",
         "--mechanism", "mdns", "--collect-all", "--timeout", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    report = done.stdout + done.stderr
    assert done.returncode == 3, report
    assert f"discover: {interface}/ipv4 manual: 1 candidate(s) (" in done.stderr
    assert "  mdns     cut short - no answer within --timeout 2 s" in done.stdout
    assert "192.0.2.10" in done.stdout and "[[upstream]] up1" in done.stdout
    assert "Traceback" not in report
