"""The demo's story, step by step (``dots-gateway demo``; see ``gateway.demo``).

Each step acts, waits (bounded) for what it expects, and narrates what happened and why.
``run()`` owns the clean-up: whatever happens (a failed wait, Ctrl-C, SIGTERM), the
processes are stopped and the namespaces and temporary files removed before it returns.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from gateway.demo.netns import Lab, cleanup_stale, namespaces, require_root
from gateway.demo.timeline import Sampler, Timeline, daemon_view
from gateway.demo.topology import (
    CLIENT_V4,
    CLIENT_V6,
    EDGES,
    GRACE,
    PROTECTED,
    PROVIDER_V4,
    SERVICE_NAME,
    V4,
    Network,
    last_line,
    missing_tools,
)

#: Namespace and temp-dir prefix of the demo (the lab tests use ``dgl``).
PREFIX = "dgd"
#: Bounds of the waits: generous, for a busy machine; the demo normally takes ~40 s.
START_TIMEOUT = 40.0
MOVE_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30.0
#: Seconds each state is held before the next act, so that a viewer can follow the
#: narration and the picture shows every state.
PACE = 2.0
CLIENT = (CLIENT_V4, CLIENT_V6)


class DemoFailed(Exception):
    """A step did not see what it expected; the message says which and why."""


class Client:
    """The enterprise client (``gateway.demo.client``) in the client namespace."""

    def __init__(self, net: Network) -> None:
        self.net = net
        state = net.lab.dir / "client"
        state.mkdir()
        log = open(net.lab.dir / "client.log", "wb")  # noqa: SIM115 - closed below
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", net.ns["client"], sys.executable, "-m",
             "gateway.demo.client", str(net.pki), str(state)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True)
        log.close()
        net.lab.processes.append(self.process)  # stopped by lab.close() at the latest

    def ask(self, timeout: float = REQUEST_TIMEOUT, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            raise DemoFailed(f"the client gave no answer to {command['op']} within "
                             f"{timeout:g} s (client.log)")
        answer = dict(json.loads(line))
        if not answer["ok"]:
            raise DemoFailed(f"the client failed on {command['op']}: {answer['error']} "
                             "(client.log)")
        return answer


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled as Ctrl-C is (clean up, then exit 128 + the signal number)."""

    signum = signal.SIGTERM


def _on_terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def run(output: Path, out: TextIO = sys.stdout) -> int:
    """The whole demo; 0 when every step saw what it expected. The timeline goes to ``out``
    and ``output/timeline.txt``, the picture to ``output/timeline.png``."""
    why = require_root("dots-gateway demo")
    missing = missing_tools()
    if why or missing:
        print(why or f"dots-gateway demo: missing {', '.join(missing)} (`make demo` installs "
              "them)", file=sys.stderr)
        return 1
    output.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _on_terminate)
    cleanup_stale(PREFIX)
    timeline = Timeline(out)
    lab = Lab(PREFIX)
    net = Network(lab)
    sampler: Sampler | None = None
    status = 1
    try:
        sampler = Sampler(timeline, net.next_hop,
                          {n: net.control_socket(n) for n in ("provider", *EDGES)},
                          CLIENT, active_only={"provider"})
        _story(net, timeline, sampler)
        status = 0
    except (DemoFailed, TimeoutError, RuntimeError) as exc:
        timeline.step("failed", _one_line(str(exc), output))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        # A command that failed or a daemon's unexpected answer: said in one line; the
        # logs in output/logs tell the rest.
        timeline.step("failed", _one_line(f"{type(exc).__name__}: {exc}", output))
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        timeline.step("stopped", f"interrupted ({signal.Signals(signum).name}): cleaning up "
                      "(bounded; another Ctrl-C waits)")
        status = 128 + signum
    finally:
        # A second Ctrl-C must not leave half the lab behind: the clean-up is bounded
        # (every process gets SIGTERM, then SIGKILL after 3 s), so it runs to the end.
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if sampler is not None:
                sampler.stop()
            _keep_logs(lab, output / "logs")
            lab.close()
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, previous)
    left = namespaces(lab.prefix)
    timeline.step("cleanup", "namespaces, processes and temporary files removed"
                  if not left and not lab.dir.exists() else f"left behind: {left}")
    timeline.save(output / "timeline.txt")
    if timeline.samples:
        try:
            from gateway.demo.picture import draw

            draw(timeline, list(EDGES), output / "timeline.png")
            timeline.step("picture", f"{output / 'timeline.png'}: routes, the client's "
                          "session and mitigations over time")
        except ImportError:
            timeline.step("picture", "matplotlib is missing: `make demo` installs it "
                          "(pip install '.[demo]')")
            status = status or 1
    timeline.save(output / "timeline.txt")
    return status


def _story(net: Network, timeline: Timeline, sampler: Sampler) -> None:
    step = timeline.step
    net.build()
    step("network", f"{len(net.ns)} network namespaces ({', '.join(net.ns)}), linked by veth "
         "pairs through the router")
    net.init_pki()
    net.write_provider_config()
    for edge in EDGES:
        net.write_edge_config(edge)
    sampler.start()

    net.start_daemon("provider")
    net.start_bird("router")
    for edge in EDGES:
        net.start_bird(edge)
    net.start_dnsmasq()
    for edge in EDGES:
        net.start_daemon(edge)
    net.wait_serving("provider", START_TIMEOUT)
    step("provider", f"the provider's DOTS server listens on {PROVIDER_V4}:4646 (the "
         "upstream of every edge; it lets the edges relay their clients' cuids)")
    for edge in EDGES:
        net.wait_serving(edge, START_TIMEOUT)
    step("edges", "edge1, edge2, edge3 serve in gateway mode: each terminates DOTS sessions "
         f"on {V4} (anycast) and its unicast address, and relays to the provider")
    net.wait(lambda: net.established() == 2 * len(EDGES), START_TIMEOUT, "BGP sessions")
    step("bgp", f"the router's BIRD has its {2 * len(EDGES)} eBGP sessions up (IPv4 and IPv6 "
         "to each edge)")
    net.wait(lambda: net.next_hop() == "edge1", START_TIMEOUT, "the anycast route")
    step("anycast", f"{V4}/32 is announced by the edges once their health checks pass (a "
         "live upstream included); the router forwards it to edge1 (lowest router id)")

    found = net.run_cli("client", "discover", "--json", "--interface", "uplink", "--family",
                        "4", "--mechanism", "dhcp", "--timeout", "15", timeout=30,
                        check=False)
    candidates = json.loads(found.stdout or "[]")
    addresses = sorted({c["address"] for c in candidates if c.get("mechanism") == "dhcp"})
    names = sorted({c.get("reference_identifier") for c in candidates} - {None})
    if not addresses:
        raise DemoFailed("DHCP discovery found no DOTS server: "
                         f"{last_line(found.stderr) or 'nothing said'} (dnsmasq.log)")
    step("dhcp", f"the client asks DHCP (dnsmasq, RFC 8973 options 147 and 148 made by "
         f"`dots-gateway dhcp-option`): DOTS server {', '.join(names)} at "
         f"{', '.join(addresses)}")

    client = Client(net)
    answer = client.ask(op="start", host=names[0] if names else SERVICE_NAME,
                        addresses=addresses)
    landed = _where_client_is(net)
    step("connect", f"the client's TLS session to {answer['state']['address']} (anycast) "
         f"lands on {landed or '?'}: the route decides which edge answers")
    time.sleep(PACE)

    created = client.ask(op="mitigate", prefix=PROTECTED, lifetime=3600)
    reply, state = created["reply"], created["state"]
    if reply["code"] != "2.01" or state["redirects_followed"] < 1:
        raise DemoFailed(f"mitigation request: expected a redirect then 2.01, got {created}")
    mid = reply["mid"]
    step("redirect", f"its mitigation request on anycast is answered 5.03 redirected-signal: "
         f"{reply['server_name']} ({reply['address']}); a session on anycast would break "
         "when the route moves, so the client goes to unicast (RFC 9132 §4.6)")
    step("mitigation", f"mitigation mid={mid} for {PROTECTED}: 2.01 from "
         f"{reply['server_name']}, relayed upstream with the client's cuid and mid")
    net.wait(lambda: _provider_active(net) >= 1, MOVE_TIMEOUT, "the mitigation upstream")
    step("upstream", f"the provider holds mitigation mid={mid} "
         f"(cuid {net.client_cuid}): active")
    time.sleep(PACE)

    victim = _edge_named(reply["server_name"])
    before = state
    net.stopped.add(victim)
    os.kill(net.birds[victim].pid, signal.SIGKILL)
    step("failure", f"{victim} fails: its BIRD is killed (SIGKILL) ...")
    took = net.wait(lambda: net.next_hop() not in (victim, None), MOVE_TIMEOUT,
                    "the route moving", interval=0.005)
    step("route", f"the router's BGP session to {victim} closed and its route was withdrawn "
         f"in {1000 * took:.0f} ms: {V4} now goes to {net.next_hop()}")
    os.kill(net.daemons[victim].pid, signal.SIGKILL)
    step("failure", f"... and its dots-gateway (SIGKILL): the client's TLS connection to "
         f"{victim} is reset")
    try:
        net.wait(lambda: client.ask(op="state")["state"]["sessions"] > before["sessions"],
                 MOVE_TIMEOUT, "the client's new session", interval=0.1)
        state = client.ask(op="state")["state"]
        step("failover", f"the client noticed the loss and re-established by itself: "
             f"{victim} is gone, so on its provisioned anycast address {state['address']}, "
             f"now served by {_where_client_is(net) or '?'}")
    except TimeoutError:
        step("failover", "the client has not re-established by itself yet: its next "
             "request will")
    time.sleep(PACE)
    before = client.ask(op="state")["state"]
    got = client.ask(op="get", mid=mid)
    reply, state = got["reply"], got["state"]
    if (reply["code"] != "2.05" or _edge_named(reply["server_name"]) == victim
            or state["redirects_followed"] <= before["redirects_followed"]):
        raise DemoFailed(f"after the failure: expected a redirect, then 2.05 from another "
                         f"edge, got {got}")
    statuses = ", ".join(f"mid={s['mid']} {s['status']}" for s in reply["scopes"])
    step("survived", f"its GET mid={mid} was redirected to {reply['server_name']} "
         f"({reply['address']}) and answered 2.05 {statuses}: the provider kept the "
         f"mitigation while {victim} died")
    time.sleep(PACE)

    drained = _edge_named(reply["server_name"])
    result = net.run_cli(drained, "drain", "--config", str(net.config(drained)), check=False)
    if result.returncode != 0:
        raise DemoFailed(f"dots-gateway drain on {drained}: {result.stderr.strip()}")
    step("drain", f"operator: `dots-gateway drain` on {drained}: withdraw the route, "
         f"redirect its sessions to the next edge of its pool, serve {GRACE:g} s, stop")
    net.stopped.add(drained)
    net.wait(lambda: net.next_hop() not in (drained, None), MOVE_TIMEOUT, "the drained route")
    step("route", f"{V4} now goes to {net.next_hop()}: {drained} withdrew it")
    got = client.ask(op="get", mid=mid)
    reply = got["reply"]
    if (reply["code"] != "2.05" or _edge_named(reply["server_name"]) in (victim, drained)
            or got["state"]["redirects_followed"] <= state["redirects_followed"]):
        raise DemoFailed(f"after the drain: expected a redirect, then 2.05 from the next "
                         f"edge, got {got}")
    statuses = ", ".join(f"mid={s['mid']} {s['status']}" for s in reply["scopes"])
    step("moved", f"the client's next request got 5.03 redirected-signal from {drained} and "
         f"went to {reply['server_name']} ({reply['address']}): GET mid={mid}: {statuses}")
    net.wait(lambda: net.daemons[drained].poll() is not None, GRACE + MOVE_TIMEOUT,
             f"{drained} stopping")
    step("stopped", f"{drained} stopped after its grace period; the provider still holds "
         f"{_provider_active(net)} active mitigation")
    time.sleep(PACE)
    client.ask(op="stop", timeout=10.0)


def _edge_named(server_name: str | None) -> str:
    for edge in EDGES.values():
        if server_name == edge.unicast_name:
            return edge.name
    return str(server_name)


def _where_client_is(net: Network, timeout: float = 5.0) -> str | None:
    """The edge that has the client's session (it may list it a moment after the client
    saw the handshake end), or None."""
    deadline = time.monotonic() + timeout
    while True:
        for edge in EDGES:
            view = daemon_view(net.control_socket(edge), CLIENT)
            if view is not None and view[0] is not None:
                return edge
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _provider_active(net: Network) -> int:
    view = daemon_view(net.control_socket("provider"), CLIENT, active=True)
    return 0 if view is None else view[1]


def _one_line(message: str, output: Path) -> str:
    return " ".join(message.split()) + f" [logs: {output / 'logs'}]"


def _keep_logs(lab: Lab, directory: Path) -> None:
    """Every daemon's and the client's log, for a look after the run (the lab directory
    itself is removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in lab.dir.glob("*.log"):
        try:
            (directory / path.name).write_bytes(path.read_bytes())
        except OSError:
            pass
