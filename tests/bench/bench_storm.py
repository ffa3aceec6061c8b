"""The failover storm (issue 21 §1): an anycast edge dies and all of its clients arrive at the
other one at once. Root, bird2; numbers, not pass/fail.

    .venv/bin/python tests/bench/bench_storm.py [--sessions 20000] [--results ...]

The anycast lab (tests/lab/anycast_lab.py: client -- router -- {edge1, edge2}, BIRD on each)
with both edges in gateway mode, sharing the cookie secret and the session-ticket keys
(``dots-gateway tls-secrets``), relaying to one upstream ``dots-gateway server`` (in the
router's namespace, reached over each edge's uplink; its own dev PKI, as a provider's).

1. Load-generator processes in the client namespace open SESSIONS DTLS sessions to the
   anycast address (all land on edge1, the router's preferred edge) and create one
   mitigation per session (its own mid and /32), relayed and persisted at edge1 and upstream.
   Each session keeps the session ticket edge1 issued.
2. edge1 dies: ``kill -9`` of its gateway and of its BIRD (the router's BGP session closes
   and the route moves to edge2; nothing is withdrawn gracefully).
3. The moment the router's FIB points at edge2 the clients are told (the best case of loss
   detection, which a real client bounds with its heartbeat settings) and reconnect at once,
   each offering its ticket: resumed where edge2 accepts it, a full handshake otherwise.
   A session counts as working again when a GET of its mitigation is answered 2.05 with it.

Reported: time from the route moving until every client works again (target 10 s), p50/p99,
the share resumed, the resumed-handshake rate against the full-handshake rate of step 1,
sessions not working again after the move (target 0), and the surviving edge's CPU, handshake
counters and profile.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certs.devpki import init_dev_pki  # noqa: E402
from certs.identity import cuid_from_certificate  # noqa: E402
from gateway.coap.codes import MessageType  # noqa: E402
from gateway.coap.message import CoapMessage  # noqa: E402
from gateway.coap.udp_codec import decode_udp, encode_udp  # noqa: E402
from gateway.transport.secure_session import SecureSession, State  # noqa: E402
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind  # noqa: E402
from tests.bench import plots, spy  # noqa: E402
from tests.bench.bench_anycast import RouterWatch, edge_extra  # noqa: E402
from tests.bench.bench_transport import pct  # noqa: E402
from tests.bench.results import machine_lines, update_section  # noqa: E402
from tests.lab.anycast_lab import EDGES, INTERVAL, V4, AnycastLab, missing_tools  # noqa: E402
from tests.lab.netns import Lab, cleanup_stale, require_root  # noqa: E402

PORT = 4646
HEALTH_INTERVAL = 1.0  # seconds: the configuration's default
UPSTREAM_PORT = 4646
CONTENT_DOTS = 271
CREATED, CHANGED, CONTENT, SERVICE_UNAVAILABLE = 65, 68, 69, 163
#: Handshakes or requests one generator keeps outstanding. In the storm all of a dead
#: edge's clients come back at once: at 128 per generator the edge sat partly idle (the rate
#: measured was the generator's pacing), at 512 it is saturated. The setup is no
#: measurement: at 512 its full handshakes and relayed, persisted PUTs queued past the 3 s
#: resend and the resends buried the edge (one 20,000-session setup still running after
#: 11 minutes, against ~190 s at 128).
STORM_IN_FLIGHT = 512
SETUP_IN_FLIGHT = 128
RESEND_AFTER = 3.0  # a CON without its answer (RFC 7252 §4.2 would say 2-3 s)
#: Seconds for all sessions and mitigations: each PUT is made durable twice (the edge's relay
#: state and the upstream server's store), one fsync each.
SETUP_LIMIT = 120.0
SETUP_PER_SESSION = 0.1
#: Seconds for the move: the bench's window, not the target. At ~150 sessions/s 20,000 take
#: ~130 s; a window shorter than that reports queued sessions as not back.
STORM_LIMIT = 240.0
TARGET_SECONDS = 10.0
#: Sessions per generator process: its sockets stay under the open-files limit.
PER_PROCESS = 9_000


# --- the generator (in the client namespace) ---------------------------------------------------


@dataclass(eq=False)
class Session:
    index: int  # the DOTS mid is index + 1
    session: SecureSession
    sock: socket.socket
    ticket: bytes | None = None
    stage: str = "handshake"  # handshake -> put -> ready; after the move: handshake -> get -> ok
    token: bytes = b""
    mid: int = 0
    sent_at: float = 0.0
    tries: int = 1
    done_at: float = 0.0
    resumed: bool = False


@dataclass
class Tally:
    codes: dict[str, int] = field(default_factory=dict)
    failed_handshakes: int = 0
    #: Sessions the server ended (an alert) after their handshake, before the answer.
    closed: int = 0
    #: Why those sessions ended, as the client saw it (state: failure), counted.
    closed_why: dict[str, int] = field(default_factory=dict)
    resent: int = 0

    def code(self, stage: str, code: int) -> None:
        key = f"{stage} {code >> 5}.{code & 31:02d}"
        self.codes[key] = self.codes.get(key, 0) + 1


class StormClient:
    def __init__(self, pki: Path, first: int, count: int) -> None:
        self.ctx = ClientContext(Kind.DTLS, ClientCredentials(pki / "client.pem",
                                                              pki / "client.key", pki / "ca.pem"))
        self.cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
        self.first, self.count = first, count
        self.poller = select.epoll()
        self.by_fd: dict[int, Session] = {}
        self.tally = Tally()

    # sockets and DTLS

    def open(self, index: int, resume: bytes | None, tries: int = 1) -> Session:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((V4, PORT))
        s = Session(index, SecureSession(self.ctx, server_name="localhost", resume=resume),
                    sock, ticket=resume, tries=tries)
        s.session.start()
        self.flush(s)
        self.poller.register(sock.fileno(), select.EPOLLIN)
        self.by_fd[sock.fileno()] = s
        return s

    def drop(self, s: Session) -> None:
        self.poller.unregister(s.sock.fileno())
        del self.by_fd[s.sock.fileno()]
        s.session.free()
        s.sock.close()

    def flush(self, s: Session) -> None:
        for datagram in s.session.take_output():
            try:
                s.sock.send(datagram)
            except (BlockingIOError, ConnectionRefusedError):
                pass

    def readable(self, timeout: float) -> list[tuple[Session, list[bytes]]]:
        out = []
        for fd, _ in self.poller.poll(timeout):
            s = self.by_fd.get(fd)
            if s is None:
                continue
            records: list[bytes] = []
            for _ in range(16):
                try:
                    data = s.sock.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                records += s.session.feed(data)
            self.flush(s)
            out.append((s, records))
        return out

    # DOTS

    def request(self, s: Session, now: float) -> None:
        mid = s.index + 1
        path = (".well-known", "dots", "mitigate", f"cuid={self.cuid}", f"mid={mid}")
        if s.stage == "put":
            prefix = f"198.18.{(mid >> 8) & 0xFF}.{mid & 0xFF}/32"
            body = cbor2.dumps({1: {2: [{6: [prefix], 14: 3600}]}})  # target, lifetime
            base = CoapMessage.request(3, path, content_format=CONTENT_DOTS, payload=body)
        else:
            base = CoapMessage.request(1, path)
        s.mid = (s.mid + 1) & 0xFFFF
        s.token = s.mid.to_bytes(2, "big") + mid.to_bytes(4, "big")
        s.session.send(encode_udp(CoapMessage(MessageType.CON, base.code, s.mid, s.token,
                                              base.options, base.payload)))
        self.flush(s)
        s.sent_at = now

    def answer_heartbeat(self, s: Session, message: CoapMessage) -> None:
        if s.session.state is not State.ESTABLISHED:
            return
        if message.mtype is MessageType.CON:  # RFC 9132 §4.7: 2.04, piggybacked
            reply = CoapMessage(MessageType.ACK, 68, message.mid, message.token)
        else:
            # The server's heartbeats are NON (RFC 9132 §4.7): answered 2.04 NON. Left
            # unanswered, the gateway took every session for lost after its missed
            # heartbeats and spent the setup of 20,000 sessions on signal loss.
            s.mid = (s.mid + 1) & 0xFFFF
            reply = CoapMessage(MessageType.NON, 68, s.mid, message.token)
        s.session.send(encode_udp(reply))
        self.flush(s)

    def run(self, phase: str, tickets: dict[int, bytes | None], deadline: float
            ) -> list[Session]:
        """Drive a session per index of ``tickets`` from a handshake (resuming with its
        ticket) to its request's answer: ``put`` creates the mitigation, ``get`` finds it
        again. Returns the sessions answered, successfully or not."""
        finished: list[Session] = []
        active: set[Session] = set()
        todo = sorted(tickets, reverse=True)
        in_flight = SETUP_IN_FLIGHT if phase == "put" else STORM_IN_FLIGHT
        while (todo or active) and time.monotonic() < deadline:
            while todo and len(active) < in_flight:
                index = todo.pop()
                active.add(self.open(index, tickets.get(index)))
            now = time.monotonic()
            for s, records in self.readable(0.02):
                if s not in active:
                    continue
                for record in records:
                    self.handle(phase, s, record, now, active, finished)
            now = time.monotonic()
            for s in list(active):
                if s.stage == "handshake":
                    if s.session.state is State.ESTABLISHED:
                        s.resumed = s.session.resumed
                        if phase == "put":
                            s.ticket = s.session.session_ticket()
                        s.stage = phase
                        self.request(s, now)
                    elif s.session.state is State.HANDSHAKING:
                        timeout = s.session.timeout()
                        if timeout is not None and timeout <= 0:
                            s.session.handle_timeout()
                            self.flush(s)
                    else:  # refused: a full handshake next (a ticket edge2 cannot read)
                        self.tally.failed_handshakes += 1
                        active.discard(s)
                        self.drop(s)
                        if s.tries < 3:
                            retry = self.open(s.index, None, s.tries + 1)
                            active.add(retry)
                elif s.session.state is not State.ESTABLISHED:
                    # The server ended it before answering (an alert): start over, as a
                    # client whose session is gone does, resuming if it can.
                    self.tally.closed += 1
                    why = f"{s.session.state.value}: {s.session.failure or 'peer closed'}"
                    self.tally.closed_why[why] = self.tally.closed_why.get(why, 0) + 1
                    active.discard(s)
                    self.drop(s)
                    if s.tries < 3:
                        active.add(self.open(s.index, tickets.get(s.index), s.tries + 1))
                elif now - s.sent_at > RESEND_AFTER:
                    self.tally.resent += 1
                    self.request(s, now)
        return finished

    def handle(self, phase: str, s: Session, record: bytes, now: float, active: set[Session],
               finished: list[Session]) -> None:
        try:
            message = decode_udp(record)
        except ValueError:
            return
        if 1 <= message.code < 32:
            self.answer_heartbeat(s, message)
            return
        if message.code < 64 or message.token != s.token or s.stage != phase:
            return
        if message.code == SERVICE_UNAVAILABLE:  # the gateway has no upstream yet: again
            self.tally.code(phase, message.code)
            s.sent_at = now - RESEND_AFTER + 0.5
            return
        self.tally.code(phase, message.code)
        # A PUT sent again after its answer was late finds its own mitigation: 2.04.
        good = (CREATED, CHANGED) if phase == "put" else (CONTENT,)
        if message.code in good and (phase == "put" or _holds(message.payload, s.index + 1)):
            s.stage = "ready" if phase == "put" else "ok"
            s.done_at = now
        active.discard(s)
        finished.append(s)


def _holds(payload: bytes, mid: int) -> bool:
    try:
        scopes = cbor2.loads(payload)[1][2]
    except (ValueError, KeyError, IndexError, TypeError, cbor2.CBORDecodeError):
        return False
    return any(scope.get(5) == mid for scope in scopes)


def storm_client(pki: Path, first: int, count: int) -> None:
    """The generator process: JSON lines on stdout, "go" on stdin."""
    os.sched_setaffinity(0, {1})
    client = StormClient(pki, first, count)
    started = time.monotonic()
    ready = client.run("put", dict.fromkeys(range(first, first + count)),
                       started + SETUP_LIMIT + SETUP_PER_SESSION * count)
    setup_s = time.monotonic() - started
    good = [s for s in ready if s.stage == "ready"]
    print(json.dumps({"ready": len(good), "setup_s": setup_s,
                      "with_ticket": sum(s.ticket is not None for s in good),
                      "codes": client.tally.codes, "failed_handshakes":
                      client.tally.failed_handshakes, "closed": client.tally.closed}),
          flush=True)
    for s in ready:  # edge1 is gone: the sockets go without a word
        client.drop(s)
    if sys.stdin.readline().strip() != "go":
        return
    client.tally = Tally()
    started = time.monotonic()
    after = client.run("get", {s.index: s.ticket for s in good}, started + STORM_LIMIT)
    ok = [s for s in after if s.stage == "ok"]
    print(json.dumps({
        "ok": sorted(s.done_at for s in ok),
        "resumed": sum(s.resumed for s in ok),
        "missing": len(good) - len(ok),
        # Of those: answered, but not with their mitigation (lost), or not answered at all
        # when the bench's window closed (still queued).
        "without_mitigation": len(after) - len(ok),
        "unfinished": len(good) - len(after),
        "codes": client.tally.codes, "failed_handshakes": client.tally.failed_handshakes,
        "closed": client.tally.closed, "closed_why": client.tally.closed_why,
        "resent": client.tally.resent, "started": started}),
        flush=True)
    for s in after:
        client.drop(s)


# --- the lab -----------------------------------------------------------------------------------


def upstream_config(alab: AnycastLab, pki_up: Path) -> Path:
    gateway_cuid = cuid_from_certificate((pki_up / "client.pem").read_bytes())
    addresses = ", ".join(f'"{r4}"' for r4, _, _, _ in EDGES.values())
    path = alab.lab.dir / "upstream.toml"
    path.write_text(
        f'[general]\nstate_dir = "{alab.lab.dir / "upstream"}"\nnode_name = "provider"\n'
        f'[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = [{addresses}]\nport = {UPSTREAM_PORT}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki_up}/ca.pem"\ncert = "{pki_up}/server.pem"\n'
        f'key = "{pki_up}/server.key"\n'
        f'[trusted_gateways]\nidentities = ["{gateway_cuid}"]\n'
        f'[[clients]]\nname = "edges"\ncuid = "{gateway_cuid}"\nprefixes = ["0.0.0.0/0"]\n'
        "allow_any_cuid = true\n" + LIMITS)
    return path


LIMITS = ("[limits]\nmax_sessions = 100000\nmax_handshakes = 4096\n"
          "handshakes_per_source = 1000000\nmax_handshakes_per_source = 1000000\n"
          "[mitigation]\nmax_requests_per_client = 1000000\n")


def edge_config(alab: AnycastLab, edge: str, pki_up: Path, secrets: Path) -> None:
    cuid = cuid_from_certificate((alab.pki / "client.pem").read_bytes())
    r4 = EDGES[edge][0]
    extra = (edge_extra(edge, cuid).replace(
        "[limits]\nhandshakes_per_source = 1000000\nmax_handshakes_per_source = 1000000\n",
        LIMITS)
        + f'[gateway]\ncert = "{pki_up}/client.pem"\nkey = "{pki_up}/client.key"\n'
        f'ca = "{pki_up}/ca.pem"\n'
        f'[[upstream]]\nname = "provider"\naddress = "{r4}"\nport = {UPSTREAM_PORT}\n'
        'reference_identifier = "localhost"\n')
    alab.write_gateway_config(edge, extra=extra)
    path = alab.config(edge)
    text = path.read_text()
    # Gateway mode, and the fleet's shared secrets in [tls] (tables cannot be reopened).
    text = text.replace("[general]\n", '[general]\nmode = "gateway"\n', 1)
    text = text.replace("[tls]\n", f'[tls]\ncookie_secret_file = "{secrets}/cookie.secret"\n'
                        f'ticket_key_file = "{secrets}/ticket.keys"\n', 1)
    # The default health-check interval (1 s), not the lab's 0.1 s made for failover tests:
    # the route moves with the BGP session here, and ten checks a second (each a command
    # and a state file written with the session count) are no part of an edge's storm.
    health = f"[anycast.health]\ninterval = {INTERVAL}\n"
    assert health in text, "the lab's health section changed"
    text = text.replace(health, f"[anycast.health]\ninterval = {HEALTH_INTERVAL}\n", 1)
    path.write_text(text + '[logging]\nlevel = "warning"\n'
                    f'[metrics]\nlisten = "127.0.0.1:{METRICS_PORT}"\n')


#: Each edge's metrics, on the loopback of its own namespace.
METRICS_PORT = 9464
#: The survivor's counters the storm section reports: (metric line prefix, what it says).
EDGE_COUNTERS = {
    'dots_gateway_handshakes_total{side="downstream",transport="dtls",result="completed"}':
        "handshakes completed",
    'dots_gateway_datagrams_dropped_total{reason="resend"}':
        "flights the clients sent again while the first copy waited for the workers (dropped)",
    'dots_gateway_handshake_deadlines_extended_total{transport="dtls"}':
        "handshake deadlines extended (the next step waited for the workers)",
    'dots_gateway_handshakes_total{side="downstream",transport="dtls",result="timed_out"}':
        "handshakes timed out",
}


def edge_counters(alab: AnycastLab, edge: str) -> dict[str, float]:
    """The ``EDGE_COUNTERS`` of ``edge``, scraped from its metrics endpoint ({} if none)."""
    fetch = ("import urllib.request; print(urllib.request.urlopen("
             f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=10).read().decode())")
    try:
        text = alab.lab.run(alab.ns[edge], sys.executable, "-c", fetch, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return {}
    return parse_counters(text)


def parse_counters(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in EDGE_COUNTERS:
            found[name] = float(value)
    return found


def start(alab: AnycastLab, pki_up: Path) -> subprocess.Popen[bytes]:
    lab = alab.lab
    alab.build()
    alab.start_birds()
    init_dev_pki(alab.pki, hostnames=("localhost",), addresses=(V4,))
    init_dev_pki(pki_up, hostnames=("localhost",), addresses=())
    secrets = lab.dir / "secrets"
    subprocess.run([sys.executable, "-m", "gateway.cli", "tls-secrets", str(secrets)],
                   cwd=ROOT, check=True, capture_output=True)
    upstream = lab.popen(alab.ns["router"], [sys.executable, "-m", "gateway.cli", "server",
                                             "--config", str(upstream_config(alab, pki_up))],
                         "upstream.log")
    for edge in EDGES:
        edge_config(alab, edge, pki_up, secrets)
        alab.gateways[edge] = lab.popen(
            alab.ns[edge], [sys.executable, "-m", "gateway.cli", "run", "--config",
                            str(alab.config(edge))], f"gateway-{edge}.log")
    alab.wait_established()
    deadline = time.monotonic() + 120.0  # a busy machine starts four daemons slowly
    while time.monotonic() < deadline:  # both edges announce: the storm has somewhere to go
        routes = alab.birdc("router", "show", "route", "for", V4)
        if all(f"via {e4} " in routes for _, e4, _, _ in EDGES.values()):
            return upstream
        time.sleep(0.1)
    logs = "\n".join(f"--- {edge}:\n{alab.gateway_log(edge)[-1500:]}" for edge in EDGES)
    raise TimeoutError(f"the router does not learn the anycast route from both edges:\n"
                       f"{routes}\n{logs}")


def profile_lines(raw: str, seconds: float) -> list[str]:
    """The surviving edge's py-spy samples of the storm, as shares per bucket."""
    total, found = spy.buckets(raw)
    if not total:
        return []
    shares = ", ".join(f"{name} {count / total:.0%}" for name, count in found.most_common())
    return [f"- where the surviving edge's time went in the storm's first {seconds:g} s"
            f" (py-spy, {total:,} samples): {shares}"]


def pin(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` on ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except ProcessLookupError:
            pass  # a thread that ended meanwhile


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill_edge(alab: AnycastLab, edge: str) -> None:
    alab.gateways[edge].send_signal(signal.SIGKILL)
    conf = str(alab.lab.dir / f"{edge}.conf")
    for process in alab.lab.processes:
        if conf in process.args:  # type: ignore[operator]
            process.send_signal(signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--results", type=Path, default=ROOT / "tests/bench/RESULTS.md")
    parser.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                        help="sample the surviving edge with py-spy for the storm's first"
                             " SECONDS and report where its time went")
    parser.add_argument("--openssl", type=Path, default=None,
                        help="run every process on this OpenSSL 3.x build (DOTS_GATEWAY_OPENSSL)")
    args = parser.parse_args()
    if args.openssl is not None:
        os.environ["DOTS_GATEWAY_OPENSSL"] = str(args.openssl.resolve())  # children inherit
    why = require_root() or missing_tools()
    if why:
        print(f"skipped: {why}")
        return 0
    cleanup_stale()
    lab = Lab()
    alab = AnycastLab(lab)
    pki_up = lab.dir / "pki-up"
    watch: RouterWatch | None = None
    clients: list[subprocess.Popen[str]] = []
    profile: list[str] = []
    edge_cpu = 0.0
    counters: dict[str, float] = {}
    try:
        upstream = start(alab, pki_up)
        # The arrangement: an edge's core to itself, the generators (and the
        # upstream server) on the other one. Threads started later inherit the mask.
        for edge in EDGES:
            pin(alab.gateways[edge].pid, 0)
        pin(upstream.pid, 1)
        watch = RouterWatch(alab.ns["router"])
        shares = [(first, min(PER_PROCESS, args.sessions - first))
                  for first in range(0, args.sessions, PER_PROCESS)]
        for first, count in shares:
            clients.append(subprocess.Popen(
                ["ip", "netns", "exec", alab.ns["client"], sys.executable, __file__,
                 "--storm-client", str(alab.pki), str(first), str(count)], cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                start_new_session=True))
            lab.processes.append(clients[-1])  # type: ignore[arg-type]
        setups = [json.loads(c.stdout.readline() or "{}") for c in clients]  # type: ignore[union-attr]
        ready = sum(s.get("ready", 0) for s in setups)
        setup_s = max(s.get("setup_s", 0.0) for s in setups)
        print(f"setup: {ready} of {args.sessions} sessions with a mitigation in {setup_s:.0f} s;"
              f" {[s.get('codes') for s in setups]}", flush=True)
        if ready < args.sessions:
            raise RuntimeError(f"setup incomplete: {setups}\n"
                               + lab.log("upstream.log")[-2000:])
        victim = watch.next_hop(V4)  # the router's preferred edge holds every session
        survivor = next(edge for edge in EDGES if edge != victim)
        killed = time.monotonic()
        kill_edge(alab, victim or "edge1")
        moved = watch.wait(lambda hops: hops[0] == survivor, timeout=30.0)
        for c in clients:
            c.stdin.write("go\n")  # type: ignore[union-attr]
            c.stdin.flush()  # type: ignore[union-attr]
        edge_cpu = cpu_seconds(alab.gateways[survivor].pid)
        sampler = (spy.record(alab.gateways[survivor].pid, args.profile, lab.dir / "storm.spy")
                   if args.profile > 0 else None)
        storms = [json.loads(c.stdout.readline() or "{}") for c in clients]  # type: ignore[union-attr]
        edge_cpu = cpu_seconds(alab.gateways[survivor].pid) - edge_cpu
        counters = edge_counters(alab, survivor)
        if sampler is not None and sampler.wait(args.profile + 30) == 0:
            profile = profile_lines((lab.dir / "storm.spy").read_text(), args.profile)
            # The stacks themselves, for a closer look than the buckets (not committed).
            shutil.copy(lab.dir / "storm.spy", Path(tempfile.gettempdir()) / "storm.spy.txt")
    finally:
        if watch is not None:
            watch.close()
        for process in alab.gateways.values():
            if process.poll() is None:
                process.terminate()
                time.sleep(0.05)
                process.terminate()
        lab.close()
    result = Storm(args.sessions, ready, setup_s, setups, moved - killed, moved, storms,
                   edge_cpu, counters)
    lines = result.lines() + profile
    print("\n".join(lines))
    openssl = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "version"], cwd=ROOT, capture_output=True,
        text=True, check=False).stdout.strip()
    link = plots.drawn("failover storm", args.results.parent / STORM_PNG, result.draw)
    update_section(args.results, "Failover storm (tests/bench/bench_storm.py)",
                   [*machine_lines(), f"- every process on: {openssl}", *lines, "", link, "",
                    *FINDINGS])
    return 0


STORM_PNG = "storm.png"

#: What profiling and the edge's counters showed; written with every run's figures. Dated:
#: measure again when it changes.
FINDINGS = [
    "Where the time goes (2026-12-07 and 2026-12-08):",
    "",
    "- The storm used to collapse: clients whose sessions the surviving edge had just"
    " resumed died with `no renegotiation` (3,410-3,535 of 4,000 with 512 outstanding per"
    " generator). Our nice-19 handshake workers fell behind, our retransmission timer sent"
    " our flight again, and the OpenSSL client answered by sending its CCS + Finished again"
    " (RFC 6347 §4.2.4), which our record layer, holding the session already, took for a"
    " renegotiation. A Finished sent again is now dropped, as OpenSSL drops it (differential"
    " test in tests/unit/transport/test_dtls_records.py); since then no session ends.",
    "- The edge's core is the limit: ~95% busy for the whole storm. At 4,000 sessions it"
    " spent 2.25 ms of CPU per session back (433/s, the last back 9.4 s after the move); at"
    " 20,000, 4.9-6.3 ms in four runs, at a rate flat from the first seconds (storm.png),"
    " so not the sessions already held. The target needs 2,000/s, <= 0.5 ms per session.",
    "- Resends are not the gap (2026-12-08): while a client waited in the edge's worker"
    " queue its DTLS timer resent its flight, 27,424 times for 20,000 sessions (1.37 per"
    " session, the edge's `datagrams_dropped_total{reason=\"resend\"}`). Each copy used to"
    " cost a worker step of its own; it is now dropped on arrival. The CPU per session"
    " stayed where it was (5.59 ms, against 5.59 and 6.27 ms in the two runs before).",
    "- Where it goes (py-spy, the storm's first 10 s, by thread rather than by the innermost"
    " frame as in the buckets above): 71% of the samples in the handshake workers, 28% in"
    " the loop. In the workers: the `SSL_do_handshake` call 30%, deriving"
    " our record layer's keys for the hand-over (the TLS PRF in Python) 8%, making listener"
    " SSL objects 4%, the ticket-key callback 3%, and a dozen small OpenSSL calls (cipher"
    " name, timers, output) at 2-3% each. perf put OpenSSL's own work (libcrypto + libssl)"
    " at ~9% of the edge's CPU and the interpreter at ~66%. Each cffi call gives the GIL up"
    " and takes it back, and the loop holds it on the same core: the per-handshake hand-offs"
    " the issue's strace counted. The lever is fewer Python-to-C crossings per handshake"
    " step (one compiled step per datagram), not OpenSSL.",
    "- The generators keep 512 resumptions or GETs outstanding per process in the storm"
    " (128 left the edge partly idle) and 128 in the setup (at 512 the setup's relayed,"
    " persisted PUTs queued past the 3 s resend). The edges run the default 1 s"
    " health-check interval, not the lab's 0.1 s.",
]


@dataclass
class Storm:
    sessions: int
    ready: int
    setup_s: float
    setups: list[dict[str, Any]]
    kill_to_move_s: float
    moved: float
    storms: list[dict[str, Any]]
    #: CPU seconds the surviving edge used from the clients' start until the last answer.
    edge_cpu_s: float = 0.0
    #: The surviving edge's ``EDGE_COUNTERS`` after the storm (it held no session before).
    edge_counters: dict[str, float] = field(default_factory=dict)

    def recovered(self) -> list[float]:
        """Seconds from the route moving until each session worked again, in order (the
        generators' clocks are the system's monotonic clock, like ``moved``)."""
        return sorted(t - self.moved for s in self.storms for t in s.get("ok", []))

    def draw(self, path: Path) -> None:
        plots.recovery_timeline(
            path, f"failover storm: {self.ready:,} sessions move to the other edge\n(resumed"
            " with the shared ticket keys, else a full handshake)", self.recovered(),
            self.ready, TARGET_SECONDS, "clients working again", "the route moved")

    def lines(self) -> list[str]:
        ok = self.recovered()
        resumed = sum(s.get("resumed", 0) for s in self.storms)
        missing = sum(s.get("missing", 0) for s in self.storms)
        lost = sum(s.get("without_mitigation", 0) for s in self.storms)
        unfinished = sum(s.get("unfinished", 0) for s in self.storms)
        failed = sum(s.get("failed_handshakes", 0) for s in self.storms)
        closed = sum(s.get("closed", 0) for s in self.storms)
        started = min((s.get("started", self.moved) for s in self.storms), default=self.moved)
        span = (ok[-1] + self.moved - started) if ok else 0.0
        full_rate = self.ready / self.setup_s if self.setup_s else 0.0
        last = ok[-1] if ok else float("nan")
        codes: dict[str, int] = {}
        why: dict[str, int] = {}
        for s in self.storms:
            for k, v in s.get("codes", {}).items():
                codes[k] = codes.get(k, 0) + v
            for k, v in s.get("closed_why", {}).items():
                why[k] = why.get(k, 0) + v
        verdict = "met" if ok and len(ok) == self.ready and last <= TARGET_SECONDS else "MISSED"
        return [
            f"- {self.sessions:,} DTLS sessions on one edge (gateway mode, one mitigation each,"
            f" relayed to the upstream server and persisted), set up in {self.setup_s:.0f} s"
            f" ({full_rate:.0f} sessions/s including the PUT: full handshakes)",
            f"- edges on the default health-check interval ({HEALTH_INTERVAL:g} s); that edge"
            f" killed (-9, gateway and BIRD): the router's FIB moved to the other"
            f" {1000 * self.kill_to_move_s:.0f} ms later; the clients were told at that moment",
            "- working again on the other edge (handshake + GET of its mitigation answered 2.05"
            " with it):"
            f" {len(ok):,} of {self.ready:,}; the last {last:.2f} s after the move (target"
            f" {TARGET_SECONDS:g} s: {verdict}); p50 {pct(ok, 50):.2f} s, p99 {pct(ok, 99):.2f} s",
            f"- resumed with the shared ticket keys: {resumed:,} ({resumed / max(len(ok), 1):.1%});"
            f" handshakes refused and done again in full: {failed}; sessions ended by the"
            f" server before their answer and opened again: {closed}"
            f"{' ' + str(why) if why else ''}; "
            f"{len(ok) / span if span else 0:.0f} sessions/s during the storm (resumption + GET)"
            f" against {full_rate:.0f}/s at setup (full handshake + PUT)",
            f"- the surviving edge (its own core) used {self.edge_cpu_s:.1f} s of CPU in the"
            f" {span:.1f} s of the storm ({self.edge_cpu_s / span if span else 0:.0%} of its"
            f" core): {1000 * self.edge_cpu_s / max(len(ok), 1):.2f} ms per session back"
            f" (resumed handshake + relayed GET); at that cost one core brings back"
            f" {len(ok) / self.edge_cpu_s if self.edge_cpu_s else 0:.0f} sessions/s, the target"
            f" needs {self.ready / TARGET_SECONDS:.0f}/s",
            f"- not working again after the move: {missing} (target 0): answered without their"
            f" mitigation {lost}, not answered when the bench's {STORM_LIMIT:g} s window"
            f" closed {unfinished}; answers: {codes}",
            *self.counter_lines(len(ok)),
        ]

    def counter_lines(self, back: int) -> list[str]:
        if not self.edge_counters:
            return ["- the surviving edge's counters: not read (its metrics did not answer)"]
        parts = [f"{what} {self.edge_counters.get(name, 0):,.0f}"
                 f" ({self.edge_counters.get(name, 0) / max(back, 1):.2f} per session back)"
                 for name, what in EDGE_COUNTERS.items()]
        return ["- the surviving edge's counters after the storm: " + "; ".join(parts)]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--storm-client":
        storm_client(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())
