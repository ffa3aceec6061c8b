"""The exabgp backend end to end: the real ExaBGP (the pinned test extra, or
``$DOTS_TEST_EXABGP``) runs ``dots-gateway run`` as its API process in edge1's namespace,
with the shipped deploy/exabgp files, and peers over IPv4 and IPv6 with BIRD in the router
namespace. What the gateway decides must show in the router's BIRD (``birdc show route``)
and carry a client's DTLS session.

The tests run in file order on one module-scoped lab (``anycast_lab.py``: router, client,
edge1; edge2 stays idle): announced after the rise -> a failing check withdraws, recovery
announces after the hold-down -> a killed gateway is respawned by ExaBGP and its start-up
withdraws what the dead one left -> ``dots-gateway drain`` withdraws at once, stops after
the grace period, and ExaBGP starts a fresh gateway -> a killed gateway whose successors
cannot start makes ExaBGP give up and exit, which withdraws -> (a new ExaBGP) stopping
ExaBGP withdraws first (its BGP sessions close), then the gateway serves its grace period and
stops -> (a new ExaBGP) an ExaBGP that dies takes the route and (PDEATHSIG) the gateway with
it.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.anycast_lab import (
    EDGES,
    EXABGP_GRACE,
    HOLD_DOWN,
    INTERVAL,
    RISE,
    V4,
    V6,
    AnycastLab,
    exabgp_command,
    missing_tools,
)
from tests.lab.netns import Lab, cleanup_stale, require_root

pytestmark = [pytest.mark.root, pytest.mark.lab]

BOTH = {f"{V4}/32": "e1v4", f"{V6}/128": "e1v6"}  # learned from edge1's two sessions


@pytest.fixture(scope="module")
def alab() -> Iterator[AnycastLab]:
    why = require_root() or missing_tools()
    command = exabgp_command()
    if why or command is None:
        pytest.skip(why or "exabgp not installed (pip install -e '.[test]')")
    cleanup_stale()
    lab = Lab()
    anycast = AnycastLab(lab)
    try:
        anycast.build()
        anycast.start_birds(("router",))
        anycast.start_exabgp("edge1", command)
        anycast.start_probe()
        anycast.wait_established(sessions=2)
        yield anycast
    finally:
        lab.close()  # processes newest first (ExaBGP stops its gateway), then the namespaces


def wait_routes(alab: AnycastLab, want: dict[str, str], timeout: float) -> float:
    """Seconds until the router's BIRD holds exactly ``want``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if alab.bird_routes() == want:
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"router BIRD has {alab.bird_routes()}, wanted {want} "
                         f"(after {timeout} s)\n" + alab.gateway_log("edge1")[-3000:])


def one_gateway(alab: AnycastLab, timeout: float = 5.0) -> int:
    """The PID of the one gateway ExaBGP runs (waits out a respawn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = alab.gateway_pids("edge1")
        if len(pids) == 1:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"gateways in edge1: {alab.gateway_pids('edge1')}")


def gone(pid: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return time.monotonic() - started
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} still runs after {timeout} s")


def test_routes_announced_through_exabgp_reach_bird_and_carry_sessions(
        alab: AnycastLab) -> None:
    took = wait_routes(alab, BOTH, timeout=15.0)
    print(f"\nExaBGP sessions up -> both routes at the router's BIRD after {took:.2f} s")
    detail = alab.birdc("router", "show", "route", "all", f"{V4}/32")
    assert "BGP.as_path: 65046" in detail and f"BGP.next_hop: {EDGES['edge1'][1]}" in detail
    assert "exabgp command: announce route 192.0.2.46/32 next-hop self" in \
        alab.gateway_log("edge1")
    for family in (4, 6):
        answer = alab.hb("udp", family)
        assert answer["ok"] and answer["code"] == "2.04", answer
        assert answer["edge"] == "edge1"


def test_a_failing_check_withdraws_and_recovery_waits_for_the_hold_down(
        alab: AnycastLab) -> None:
    wait_routes(alab, BOTH, timeout=5.0)
    alab.fail_flag("edge1").touch()
    try:
        took = wait_routes(alab, {}, timeout=3.0)
        print(f"\ncheck fails -> both routes gone from BIRD after {1000 * took:.0f} ms "
              f"(check every {INTERVAL} s, fall 2)")
        assert took < 1.0
    finally:
        alab.fail_flag("edge1").unlink()
    back = wait_routes(alab, BOTH, timeout=HOLD_DOWN + 5.0)
    print(f"check passes again -> announced after {back:.2f} s (hold-down {HOLD_DOWN} s)")
    assert back >= HOLD_DOWN - 0.5


def test_a_killed_gateway_is_respawned_and_withdraws_what_it_left(alab: AnycastLab) -> None:
    wait_routes(alab, BOTH, timeout=5.0)
    old = one_gateway(alab)
    alab.fail_flag("edge1").touch()  # so the successor cannot announce again at once
    try:
        alab.lab.run(alab.ns["edge1"], "kill", "-KILL", str(old))
        # ExaBGP still holds the dead gateway's routes: only the successor clears them.
        took = wait_routes(alab, {}, timeout=10.0)
        new = one_gateway(alab)
        assert new != old
        print(f"\ngateway SIGKILLed -> respawned by ExaBGP, its start-up withdrew after "
              f"{took:.2f} s")
    finally:
        alab.fail_flag("edge1").unlink()
    wait_routes(alab, BOTH, timeout=5.0)  # a fresh gateway: rise only, no hold-down


def test_drain_withdraws_at_once_then_exabgp_starts_a_fresh_gateway(alab: AnycastLab) -> None:
    wait_routes(alab, BOTH, timeout=5.0)
    old = one_gateway(alab)
    started = time.monotonic()
    drain = alab.drain("edge1")
    assert drain.returncode == 0, drain.stderr
    withdrawn = wait_routes(alab, {}, timeout=2.0)
    gone(old, EXABGP_GRACE + 5.0)
    stopped = time.monotonic() - started
    back = wait_routes(alab, BOTH, timeout=10.0)
    print(f"\ndrain: withdrawn at BIRD {1000 * withdrawn:.0f} ms after the command, old "
          f"gateway gone {stopped:.2f} s after it (grace {EXABGP_GRACE} s); the respawned one "
          f"announced {back:.2f} s later (rise {RISE} x {INTERVAL} s)")
    assert withdrawn < 1.0
    assert stopped >= EXABGP_GRACE - 0.3
    assert one_gateway(alab) != old


def test_a_gateway_that_cannot_start_again_makes_exabgp_give_up(alab: AnycastLab) -> None:
    wait_routes(alab, BOTH, timeout=5.0)
    exabgp = alab.gateways["edge1"]
    alab.config("edge1").write_text("[general]\nbroken = true\n")  # every restart fails
    started = time.monotonic()
    alab.lab.run(alab.ns["edge1"], "kill", "-KILL", str(one_gateway(alab)))
    # ExaBGP holds the dead gateway's routes while it respawns it, until too many deaths.
    exabgp.wait(15.0)
    wait_routes(alab, {}, timeout=2.0)
    gone_after = time.monotonic() - started
    print(f"\ngateway SIGKILLed, its successors fail at start-up -> ExaBGP gave up and the "
          f"routes were gone {gone_after:.2f} s later")
    assert "Too many death" in alab.gateway_log("edge1")


def running_exabgp(alab: AnycastLab) -> None:
    """ExaBGP again (the previous test ended it), with a fresh gateway config and log."""
    if alab.gateways["edge1"].poll() is not None:
        command = exabgp_command()
        assert command is not None
        alab.start_exabgp("edge1", command)
    wait_routes(alab, BOTH, timeout=15.0)


def test_stopping_exabgp_withdraws_first_then_the_gateway_drains(alab: AnycastLab) -> None:
    running_exabgp(alab)
    gateway = one_gateway(alab)
    exabgp = alab.gateways["edge1"]
    started = time.monotonic()
    exabgp.send_signal(signal.SIGTERM)  # what `systemctl stop exabgp` does
    took = wait_routes(alab, {}, timeout=2.0)
    exabgp.wait(EXABGP_GRACE + 5.0)  # ExaBGP waits for its API process
    stopped = time.monotonic() - started
    print(f"\nExaBGP SIGTERM -> routes gone from BIRD after {1000 * took:.0f} ms (BGP "
          f"sessions closed first); ExaBGP and the gateway stopped after {stopped:.2f} s")
    assert took < 1.0 and exabgp.returncode == 0
    assert stopped >= EXABGP_GRACE - 0.3
    gone(gateway, 1.0)
    log = alab.gateway_log("edge1")
    assert "SIGTERM: withdrawing the anycast route, then stopping" in log
    assert "anycast addresses removed from anycast0" in log


def test_exabgp_dying_takes_the_route_and_the_gateway_with_it(alab: AnycastLab) -> None:
    running_exabgp(alab)
    gateway = one_gateway(alab)
    exabgp = alab.gateways["edge1"]
    exabgp.send_signal(signal.SIGKILL)  # `ip netns exec` exec'd: this is ExaBGP's PID
    exabgp.wait(5)
    took = wait_routes(alab, {}, timeout=3.0)
    # PR_SET_PDEATHSIG: SIGTERM -> drain (nothing left to withdraw through) -> grace -> exit
    stopped = gone(gateway, EXABGP_GRACE + 5.0)
    print(f"\nExaBGP SIGKILLed -> routes gone from BIRD after {1000 * took:.0f} ms "
          f"(TCP closed by the kernel); the gateway stopped {stopped:.2f} s later")
    assert took < 1.0
    log = alab.gateway_log("edge1")
    assert "ExaBGP closed the API pipe" in log
    assert "event=anycast.route_failed" not in log  # no error retried every check
    assert "anycast addresses removed from anycast0" in log
    assert "Traceback" not in log
    # The addresses are gone; the interface stays when a respawned gateway adopted the one
    # its killed predecessor made (adopted links are never deleted).
    addresses = subprocess.run(["ip", "-n", alab.ns["edge1"], "addr", "show"],
                               capture_output=True, text=True, timeout=5).stdout
    assert V4 not in addresses and V6 not in addresses
