"""Anycast timing in the netns lab (root, bird2): failover and drain. Numbers, not pass/fail.

    .venv/bin/python tests/bench/bench_anycast.py [--rounds 5] [--sessions 1000] [--results F]

Failover, per round: edge1's operator check starts failing -> (a) the router's FIB forwards
to edge2, (b) a new DTLS session from the client lands on edge2; then edge1 recovers (after
its damped hold-down). The check interval is 0.1 s with fall 2, so detection alone is up to
~0.2-0.3 s; "withdrawal logged -> router on edge2" isolates the withdraw itself (the
gateway's log timestamp, ms resolution, against the router's FIB polled every ~1 ms).

Drain: edge1 stays failed so that edge2 alone carries the anycast address (the lab test's
drain scene). A load generator in the client namespace (pinned to CPU 1; the gateway to
CPU 0) opens N DTLS sessions to 192.0.2.46, and each one creates a mitigation (its own
/32, its own mid) and observes it, as a DOTS client under attack does. Then ``dots-gateway
drain`` runs on edge2: the route is withdrawn, every observer gets a 5.03 notification
redirecting it to edge1's unicast address, the node serves for the grace period and stops.
Recorded: drain command -> route gone at the router, -> all N redirects received, -> exit.
Every phase is bounded (a couple of minutes in all). Part of ``make bench``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cbor2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certs.devpki import init_dev_pki  # noqa: E402
from certs.identity import cuid_from_certificate  # noqa: E402
from gateway.coap.codes import MessageType  # noqa: E402
from gateway.coap.message import CoapMessage  # noqa: E402
from gateway.coap.udp_codec import decode_udp, encode_udp  # noqa: E402
from gateway.transport.secure_session import SecureSession  # noqa: E402
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind  # noqa: E402
from tests.bench.bench_transport import Client, Generator, establish  # noqa: E402
from tests.bench.results import machine_lines, update_section  # noqa: E402
from tests.lab.anycast_lab import (  # noqa: E402
    EDGES,
    FALL,
    GRACE,
    INTERVAL,
    V4,
    V6,
    AnycastLab,
    missing_tools,
)
from tests.lab.netns import Lab, cleanup_stale, require_root  # noqa: E402

PORT = 4646
CONTENT_DOTS = 271
SERVICE_UNAVAILABLE = 163  # 5.03
SESSION_SETUP_LIMIT = 120.0  # seconds for all handshakes, mitigations and observations
REDIRECT_WAIT = 30.0  # seconds the load generator waits for the redirects

# Each edge redirects drained sessions to the other edge's unicast address; everything else
# stays on anycast (mode "keep"), so the sessions under test are served until the drain.
REDIRECT = """\
[redirect]
mode = "keep"
name = "{me}.example"
addresses = ["{me_v4}"]
[[redirect.pool]]
name = "{other}.example"
addresses = ["{other_v4}"]
"""


def edge_extra(edge: str, cuid: str) -> str:
    other = "edge2" if edge == "edge1" else "edge1"
    return (REDIRECT.format(me=edge, me_v4=EDGES[edge][1], other=other,
                            other_v4=EDGES[other][1])
            + "[limits]\nhandshakes_per_source = 1000000\nmax_handshakes_per_source = 1000000\n"
            + f'[[clients]]\nname = "bench"\ncuid = "{cuid}"\nprefixes = ["198.18.0.0/15"]\n')


# --- the router's FIB, polled through netlink -------------------------------------------------

class RouterWatch:
    """Which edge the router's kernel forwards each anycast address to (one netlink request
    on a socket opened in the router's namespace: well under a millisecond a look)."""

    def __init__(self, namespace: str) -> None:
        import pyroute2
        from pyroute2 import IPRoute

        pyroute2.config.disable_mp_signal = True  # its netns helper must not signal us
        self.ipr = IPRoute(netns=namespace, flags=0)
        self.by_gateway = {hop: edge for edge, (_, e4, _, e6) in EDGES.items()
                           for hop in (e4, e6)}

    def next_hop(self, dst: str) -> str | None:
        try:
            routes = self.ipr.route("get", dst=dst)
        except Exception:  # noqa: BLE001 - NetlinkError: unreachable, no route at all
            return None
        for route in routes:
            gateway = route.get("RTA_GATEWAY")
            if gateway is not None:
                return self.by_gateway.get(gateway)
        return None

    def both(self) -> tuple[str | None, str | None]:
        return self.next_hop(V4), self.next_hop(V6)

    def wait(self, condition: Callable[[tuple[str | None, str | None]], bool],
             timeout: float) -> float:
        """Monotonic time at which ``condition(both())`` first held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.both()):
                return time.monotonic()
            time.sleep(0.0005)
        raise TimeoutError(f"router FIB still {self.both()}")

    def close(self) -> None:
        self.ipr.close()


#: The structured log's event of a withdrawn route (``anycast.manager``).
ROUTE_WITHDRAWN = ("event=anycast.route ", "action=withdrawn")


def log_times(log: str, *needles: str) -> list[float]:
    """Wall-clock times (s) of the gateway log lines containing every one of ``needles``."""
    out = []
    for line in log.splitlines():
        if line.startswith("ts=") and all(needle in line for needle in needles):
            stamp = line[3:].split(" ", 1)[0].rstrip("Z")
            out.append(datetime.datetime.fromisoformat(stamp)
                       .replace(tzinfo=datetime.UTC).timestamp())
    return out


def to_monotonic(wall: float) -> float:
    return wall - (time.time() - time.monotonic())


# --- failover ---------------------------------------------------------------------------------

def failover(alab: AnycastLab, watch: RouterWatch, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"check": [], "withdraw": [], "session": []}
    for number in range(rounds):
        alab.wait_next_hop("edge1", timeout=60.0)  # the previous round's damped hold-down
        t0 = time.monotonic()
        alab.fail_flag("edge1").touch()
        moved = watch.wait(lambda hops: hops == ("edge2", "edge2"), timeout=5.0)
        out["check"].append(moved - t0)
        time.sleep(0.2)  # the log line is written after the netlink call; CPUs are shared
        withdrawn = [to_monotonic(t) for t in
                     log_times(alab.gateway_log("edge1"), *ROUTE_WITHDRAWN)]
        withdrawn = [t for t in withdrawn if t >= t0 - 0.002]  # this round's (ms stamps)
        if withdrawn:
            out["withdraw"].append(moved - withdrawn[0])
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            answer = alab.hb("udp", 4, timeout=0.3)
            if answer["ok"] and answer["edge"] == "edge2":
                out["session"].append(time.monotonic() - t0)
                break
        if number < rounds - 1:  # the last round leaves edge1 out, for the drain
            alab.fail_flag("edge1").unlink()
    return out


# --- drain: the load generator (runs in the client namespace) ----------------------------------

class TargetGenerator(Generator):
    """bench_transport's generator, aimed at any address (it only knows 127.0.0.1)."""

    def __init__(self, ctx: ClientContext, host: str, port: int) -> None:
        super().__init__(ctx, port)
        self.host = host

    def open(self, now: float) -> Client:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((self.host, self.port))  # connected: replies from elsewhere never land
        client = Client(SecureSession(self.ctx), sock, now)
        client.session.start()
        self._flush(client)
        self.sel.register(sock, selectors.EVENT_READ, client)
        return client


@dataclass
class Step:
    mid: int  # the DOTS mid (also this session's index + 1)
    stage: str = "put"  # put -> observe -> ready -> redirected
    token: bytes = b""
    sent_at: float = 0.0
    redirected_at: float = 0.0


def _send(gen: Generator, client: Client, message: CoapMessage, step: Step) -> None:
    client.session.send(encode_udp(message))
    gen._flush(client)
    step.sent_at = time.monotonic()


def _request(gen: Generator, client: Client, step: Step, cuid: str) -> None:
    path = (".well-known", "dots", "mitigate", f"cuid={cuid}", f"mid={step.mid}")
    # A fresh message ID, after the ones establish() used: a reused one is a duplicate to
    # the server (RFC 7252 §4.5), answered from its cache.
    client.mid = (client.mid + 1) & 0xFFFF
    if step.stage == "put":
        prefix = f"198.18.{(step.mid >> 8) & 0xFF}.{step.mid & 0xFF}/32"
        body = cbor2.dumps({1: {2: [{6: [prefix], 14: 3600}]}})  # scope: target, lifetime
        base = CoapMessage.request(3, path, content_format=CONTENT_DOTS, payload=body)
    else:  # observe the mitigation (RFC 9132 §4.4.2.1)
        base = CoapMessage.request(1, path, observe=0)
    step.token = step.mid.to_bytes(4, "big") + (b"P" if step.stage == "put" else b"O")
    _send(gen, client, CoapMessage(MessageType.CON, base.code, client.mid, step.token,
                                   base.options, base.payload), step)


def _ack(gen: Generator, client: Client, request: CoapMessage, step: Step) -> None:
    """Answer the server's heartbeats (RFC 9132 §4.7) so the session is never lost."""
    if request.mtype is MessageType.CON:
        _send(gen, client, CoapMessage(MessageType.ACK, 68, request.mid, request.token), step)


def drain_client(pki: Path, count: int) -> None:
    """Open ``count`` sessions with one observed mitigation each, say so on stdout, then
    report when each session received its redirect. JSON lines on stdout."""
    os.sched_setaffinity(0, {1})
    ctx = ClientContext(Kind.DTLS, ClientCredentials(pki / "client.pem", pki / "client.key",
                                                     pki / "ca.pem"))
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    gen = TargetGenerator(ctx, V4, PORT)
    started = time.monotonic()
    clients = establish(gen, count, seconds=SESSION_SETUP_LIMIT / 2)
    handshakes = time.monotonic() - started
    steps = {id(c): Step(i + 1) for i, c in enumerate(clients)}
    by_id = {id(c): c for c in clients}
    queue = list(clients)
    active: set[int] = set()
    deadline = started + SESSION_SETUP_LIMIT
    ready = resent = 0
    unexpected: dict[str, int] = {}
    while ready < len(clients) and time.monotonic() < deadline:
        while queue and len(active) < 64:  # a window: the server persists each PUT
            client = queue.pop()
            active.add(id(client))
            _request(gen, client, steps[id(client)], cuid)
        for client, records in gen.poll(0.05):
            step = steps[id(client)]
            for record in records:
                message = decode_udp(record)
                if 1 <= message.code < 32:
                    _ack(gen, client, message, step)
                elif message.token == step.token and message.code >= 64:
                    if step.stage == "put" and message.code == 65:  # 2.01 Created
                        step.stage = "observe"
                        _request(gen, client, step, cuid)
                    elif step.stage == "observe" and message.observe is not None:
                        step.stage = "ready"
                        active.discard(id(client))
                        ready += 1
                    else:
                        what = f"{step.stage} {message.code >> 5}.{message.code & 31:02d}"
                        unexpected[what] = unexpected.get(what, 0) + 1
        now = time.monotonic()
        for key in list(active):  # a lost request or answer: send it again
            if now - steps[key].sent_at > 3.0:
                resent += 1
                _request(gen, by_id[key], steps[key], cuid)
    print(json.dumps({"ready": ready, "sessions": len(clients), "handshakes_s": handshakes,
                      "setup_s": time.monotonic() - started, "resent": resent,
                      "unexpected": unexpected}), flush=True)
    redirected = 0
    others = 0
    wait_until = time.monotonic() + REDIRECT_WAIT
    while redirected < ready and time.monotonic() < wait_until:
        for client, records in gen.poll(0.05):
            step = steps[id(client)]
            for record in records:
                message = decode_udp(record)
                if 1 <= message.code < 32:
                    _ack(gen, client, message, step)
                elif (message.code == SERVICE_UNAVAILABLE  # the last notification: no
                      and message.token == step.token and step.stage == "ready"  # Observe
                      and b"edge1.example" in message.payload):
                    step.stage = "redirected"
                    step.redirected_at = time.monotonic()
                    redirected += 1
                elif message.code >= 64:
                    others += 1
    times = sorted(s.redirected_at for s in steps.values() if s.stage == "redirected")
    print(json.dumps({"redirected": times, "other_responses": others}), flush=True)
    for client in clients:
        gen.close(client)


# --- drain: the measurement -------------------------------------------------------------------

def drain(alab: AnycastLab, watch: RouterWatch, sessions: int) -> dict[str, float | int]:
    edge = "edge2"
    gateway = alab.gateways[edge]
    for task in Path(f"/proc/{gateway.pid}/task").iterdir():  # every thread, not just main
        os.sched_setaffinity(int(task.name), {0})
    watch.wait(lambda hops: hops == (edge, edge), timeout=10.0)
    client = subprocess.Popen(
        ["ip", "netns", "exec", alab.ns["client"], sys.executable, __file__, "--drain-client",
         str(alab.pki), str(sessions)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    alab.lab.processes.append(client)  # type: ignore[arg-type]
    assert client.stdout is not None
    setup = json.loads(client.stdout.readline() or "{}")
    print(f"drain: {setup.get('ready')} of {sessions} sessions observe a mitigation "
          f"(handshakes {setup.get('handshakes_s', 0):.1f} s, all set up "
          f"{setup.get('setup_s', 0):.1f} s; {setup.get('resent')} requests sent again, "
          f"unexpected answers {setup.get('unexpected')})")
    if setup.get("ready", 0) < sessions:
        raise RuntimeError(f"only {setup.get('ready')} sessions ready: {setup}\n"
                           + alab.gateway_log(edge)[-3000:])
    exited: list[float] = []

    def wait_for_exit() -> None:
        gateway.wait(GRACE + 60)
        exited.append(time.monotonic())

    waiter = threading.Thread(target=wait_for_exit, daemon=True)
    waiter.start()
    t0 = time.monotonic()
    command = subprocess.run(
        ["ip", "netns", "exec", alab.ns[edge], sys.executable, "-m", "gateway.cli", "drain",
         "--config", str(alab.config(edge))], cwd=ROOT, capture_output=True, text=True,
        timeout=30)
    assert command.returncode == 0, command.stderr
    gone = watch.wait(lambda hops: hops == (None, None), timeout=10.0)
    report = json.loads(client.stdout.readline() or "{}")
    waiter.join(GRACE + 60)
    client.wait(10)
    times = report.get("redirected", [])
    log = alab.gateway_log(edge)
    requested = log_times(log, "drain requested: withdrawing the anycast route")
    withdrawn = log_times(log, *ROUTE_WITHDRAWN, "reason=drain")
    if len(times) < sessions or not exited or not requested or not withdrawn:
        raise RuntimeError(f"drain incomplete: {len(times)} redirects, exited {exited}\n"
                           + log[-3000:])
    signal_at, withdrawn_at = to_monotonic(requested[-1]), to_monotonic(withdrawn[-1])
    return {
        "sessions": sessions,
        "setup_s": setup["setup_s"],
        "command_to_signal": signal_at - t0,  # the drain CLI's own start-up, mostly
        "signal_to_withdrawn": withdrawn_at - signal_at,
        "withdrawn_to_router": gone - withdrawn_at,
        "signal_to_first": times[0] - signal_at,
        "signal_to_median": statistics.median(times) - signal_at,
        "signal_to_last": times[-1] - signal_at,
        "command_to_last": times[-1] - t0,
        "signal_to_exit": exited[0] - signal_at,
        "command_to_exit": exited[0] - t0,
        "other_responses": report.get("other_responses", 0),
    }


# --- main -------------------------------------------------------------------------------------

def stats(values: list[float], unit: float = 1000.0, fmt: str = ".0f", name: str = "ms") -> str:
    v = [unit * x for x in values]
    if not v:
        return "no data"
    return (f"median {statistics.median(v):{fmt}} {name}, min {min(v):{fmt}}, "
            f"max {max(v):{fmt}} ({len(v)} rounds)")


def main(rounds: int, sessions: int, results: Path) -> int:
    why = require_root() or missing_tools()
    if why:
        print(f"skipped: {why}")
        return 0
    cleanup_stale()
    lab = Lab()
    alab = AnycastLab(lab)
    watch: RouterWatch | None = None
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        alab.build()
        alab.start_birds()
        init_dev_pki(alab.pki, hostnames=("localhost",), addresses=(V4, V6))
        cuid = cuid_from_certificate((alab.pki / "client.pem").read_bytes())
        alab.start_gateways({edge: edge_extra(edge, cuid) for edge in EDGES})
        alab.start_probe()
        alab.wait_established()
        alab.wait_next_hop("edge1", timeout=20.0)
        print(f"lab up in {time.monotonic() - started:.2f} s")
        watch = RouterWatch(alab.ns["router"])
        moves = failover(alab, watch, rounds)
        for key, label in (("check", "check fails -> router FIB on edge2"),
                           ("withdraw", "withdrawal logged -> router FIB on edge2"),
                           ("session", "check fails -> new DTLS session on edge2")):
            print(f"{label}: {stats(moves[key])}")
        drained = {**drain(alab, watch, sessions), "load_before": load_before}
        print(json.dumps(drained, indent=1))
    finally:
        if watch is not None:
            watch.close()
        for process in alab.gateways.values():
            if process.poll() is None:  # two SIGTERMs: withdraw, then skip the grace period
                process.terminate()
                time.sleep(0.05)
                process.terminate()
        lab.close()
    print(f"bench done in {time.monotonic() - started:.0f} s")
    write(results, moves, drained)
    return 0


def write(path: Path, moves: dict[str, list[float]], d: dict[str, float | int]) -> None:
    n = d["sessions"]
    ms = lambda key: f"{1000 * float(d[key]):.0f} ms"  # noqa: E731
    update_section(path, "Anycast failover and drain (tests/bench/bench_anycast.py)", [
        *machine_lines(),
        "- netns lab: router + two edges running BIRD 2 (kernel-table backend) and "
        "`dots-gateway run`; check interval "
        f"{INTERVAL} s, fall {FALL}; the router's FIB polled over netlink every ~1 ms",
        "- 2 cores shared with other jobs on this machine (BIRDs, both gateways, the probe "
        "and the load generator run here too; load average "
        f"{float(d['load_before']):.1f} before the run): figures are noisy",
        "",
        "| failover | result |",
        "|---|---|",
        f"| check fails -> router FIB on edge2 | {stats(moves['check'])} |",
        f"| withdrawal logged -> router FIB on edge2 | {stats(moves['withdraw'])} |",
        f"| check fails -> new DTLS session on edge2 | {stats(moves['session'])} |",
        "",
        f"Drain of {n:,} live DTLS sessions on edge2 (the only node announcing), each observing "
        f"its own mitigation; `dots-gateway drain`, grace {GRACE} s; gateway on CPU 0, load "
        f"generator on CPU 1; sessions set up in {float(d['setup_s']):.1f} s:",
        "",
        "| drain | time |",
        "|---|---|",
        f"| `dots-gateway drain` -> SIGUSR2 handled (the CLI's start-up) | "
        f"{ms('command_to_signal')} |",
        f"| SIGUSR2 -> route withdrawn (netlink) | {ms('signal_to_withdrawn')} |",
        f"| route withdrawn -> gone from the router's FIB | {ms('withdrawn_to_router')} |",
        f"| SIGUSR2 -> first / median / last of {n:,} redirects received | "
        f"{ms('signal_to_first')} / {ms('signal_to_median')} / {ms('signal_to_last')} |",
        f"| **`dots-gateway drain` -> all {n:,} sessions redirected** | "
        f"**{ms('command_to_last')}** |",
        f"| SIGUSR2 -> process exit (grace {GRACE} s + closing {n:,} sessions) | "
        f"{float(d['signal_to_exit']):.2f} s |",
        f"| **`dots-gateway drain` -> process exit** | **{float(d['command_to_exit']):.2f} s** |",
        "",
        "The gateway withdraws first, then pushes the redirects (one 5.03 notification per "
        "observed mitigation, Max-Age 0, to edge1's unicast address) from one loop iteration; "
        "while it and the generator keep both cores busy the BIRDs wait for CPU, hence the "
        "slower withdrawal at the router than in the failover table.",
    ])


if __name__ == "__main__":
    os.chdir(ROOT)
    if len(sys.argv) == 4 and sys.argv[1] == "--drain-client":
        drain_client(Path(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--results", type=Path, default=ROOT / "tests/bench/RESULTS.md")
    args = parser.parse_args()
    sys.exit(main(args.rounds, args.sessions, args.results))
