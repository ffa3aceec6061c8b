"""The long-haul soak (issue 21 §2): ``make soak``; not part of ``make test`` or ``make bench``.

    .venv/bin/python tests/bench/soak.py [--sessions 50000] [--minutes 10] [--interval 30]
        [--workers 2] [--phases server,gateway] [--results tests/bench/RESULTS.md]

Phase ``server``: one ``dots-gateway server`` (alone on CPU 0) holds SESSIONS DTLS sessions
opened by load-generator processes (the other CPUs; each session its own UDP socket, sources
spread over 127.x.y.z so that ephemeral ports never run out). Each session sends a heartbeat
as soon as it is up, as a client's first request; once every session is up, each
sends a DOTS heartbeat (NON PUT /.well-known/dots/hb, RFC 9132 §4.7) every INTERVAL seconds,
start times spread evenly over the interval, and answers the heartbeats the server sends it.
Phase ``gateway``: the same with SESSIONS/2 clients on a gateway (``mode = "gateway"``, CPU 1)
that holds its own session to an upstream server; heartbeats are per hop (RFC 9132 §4.7), so
the clients' heartbeats end at the gateway.

Every 10 s the timeline records the sessions alive, the heartbeat answers and their p99 (the
time from sending to the answer, measured in the generator), heartbeats left unanswered, the
server's heartbeats answered by the clients, and the daemon's RSS and CPU. A session counts as
lost when the generator sees its DTLS session end (alert, close_notify) or when
``LOST_AFTER`` heartbeats in a row go unanswered; the generator itself never drops one.
Targets (the issue's): 0 lost, heartbeat p99 <= 50 ms in every 10 s window, RSS <= 1 GiB and
flat over the last 5 minutes (growth below ``FLAT_GROWTH``). A script, not a test: it reports
numbers against the targets and never fails on them. Results go to RESULTS.md (section
"Soak") with a PNG timeline per phase next to it.
"""

from __future__ import annotations

import argparse
import heapq
import multiprocessing
import os
import queue
import resource
import selectors
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certs.devpki import init_dev_pki  # noqa: E402
from gateway.coap.codes import MessageType  # noqa: E402
from gateway.coap.message import CoapMessage  # noqa: E402
from gateway.coap.udp_codec import decode_udp, encode_udp, encode_udp_fields  # noqa: E402
from gateway.transport.secure_session import SecureSession, State  # noqa: E402
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind  # noqa: E402
from tests.bench import plots  # noqa: E402
from tests.bench.bench_gateway import GATEWAY_CPU, Pkis, start_gateway, start_upstream  # noqa: E402
from tests.bench.bench_transport import Server, pct, start_ours  # noqa: E402
from tests.bench.results import machine_lines, update_section  # noqa: E402

HB_PAYLOAD = bytes.fromhex("a11831a11833f5")  # {heartbeat: {peer-hb-status: true}}
HB_PATH = (".well-known", "dots", "hb")
HB_OPTIONS = CoapMessage.request(3, HB_PATH, content_format=271).options
CHANGED = 68  # 2.04
TICK = 10.0  # seconds per timeline point
RAMP_TICK = 2.0  # seconds between progress reports while the sessions are opened
#: Heartbeats in a row without an answer after which a session counts as lost: the server's
#: default missing-hb-allowed is 15, but a soak that loses three in a row has already failed.
LOST_AFTER = 3
#: Handshakes one generator process keeps in flight while the sessions are opened.
HANDSHAKES_IN_FLIGHT = 64
HANDSHAKE_TRIES = 3
#: Sessions per source address: well below the 28,000 ephemeral ports of Linux's default range.
SESSIONS_PER_SOURCE = 10_000
TARGET_P99_MS = 50.0
TARGET_RSS_KIB = 1024 * 1024
#: "Flat": RSS over the last 5 minutes grows by less than this share.
FLAT_GROWTH = 0.02
CLK = os.sysconf("SC_CLK_TCK")


# --- the load generator (one per process) ------------------------------------------------------


@dataclass(eq=False)
class Peer:
    session: SecureSession
    sock: socket.socket
    tries: int = 1
    mid: int = 0
    token: bytes = b""
    sent_at: float = 0.0  # 0.0: no heartbeat waiting for its answer
    unanswered_in_a_row: int = 0
    lost: bool = False


@dataclass
class Counters:
    """What one generator saw since its last report."""

    established: int = 0
    handshake_failures: int = 0
    sent: int = 0
    answered: int = 0
    unanswered: int = 0
    server_heartbeats: int = 0  # the server's heartbeats this side answered
    lost: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def take(self) -> dict[str, Any]:
        out = dict(vars(self))
        self.__init__()  # type: ignore[misc]
        return out


class LoadGenerator:
    def __init__(self, ctx: ClientContext, port: int, sources: list[str]) -> None:
        self.ctx = ctx
        self.port = port
        self.sources = sources
        self.selector = selectors.EpollSelector()
        self.count = Counters()
        self.alive = 0
        self._opened = 0

    def open(self, tries: int = 1) -> Peer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((self.sources[self._opened // SESSIONS_PER_SOURCE % len(self.sources)], 0))
        self._opened += 1
        sock.connect(("127.0.0.1", self.port))
        peer = Peer(SecureSession(self.ctx), sock, tries)
        peer.session.start()
        self._flush(peer)
        self.selector.register(sock, selectors.EVENT_READ, peer)
        return peer

    def drop(self, peer: Peer) -> None:
        self.selector.unregister(peer.sock)
        peer.session.free()
        peer.sock.close()

    def establish(self, count: int, deadline: float, progress: Callable[[], None]
                  ) -> list[Peer]:
        """``count`` sessions, ``HANDSHAKES_IN_FLIGHT`` at a time; a failed handshake is
        tried again (``HANDSHAKE_TRIES``), so a busy server loses us none. ``progress`` is
        called every ``RAMP_TICK`` seconds."""
        ready: list[Peer] = []
        pending: set[Peer] = set()
        to_open = count
        next_progress = time.monotonic() + RAMP_TICK
        while (to_open or pending) and time.monotonic() < deadline:
            if time.monotonic() >= next_progress:
                progress()
                next_progress += RAMP_TICK
            while to_open and len(pending) < HANDSHAKES_IN_FLIGHT:
                pending.add(self.open())
                to_open -= 1
            for key, _ in self.selector.select(0.05):
                peer: Peer = key.data
                records = self._read(peer)
                if peer not in pending:  # up already: the answer to its first heartbeat
                    now = time.monotonic()
                    for record in records:
                        self._record(peer, record, now)
            for peer in list(pending):
                state = peer.session.state
                if state is State.ESTABLISHED:
                    pending.discard(peer)
                    ready.append(peer)
                    self.count.established += 1
                    # A client speaks as soon as its session is up (a heartbeat, as a DOTS
                    # client's first request would be): until then the server must keep the
                    # handshake's OpenSSL state, which a session that never spoke would
                    # hold for its whole life.
                    self.heartbeat(peer, time.monotonic())
                elif state is State.HANDSHAKING:
                    timeout = peer.session.timeout()
                    if timeout is not None and timeout <= 0:
                        peer.session.handle_timeout()
                        self._flush(peer)
                else:
                    pending.discard(peer)
                    self.drop(peer)
                    self.count.handshake_failures += 1
                    if peer.tries < HANDSHAKE_TRIES:
                        pending.add(self.open(peer.tries + 1))
        for peer in pending:
            self.drop(peer)
        self.alive = len(ready)
        return ready

    def heartbeat(self, peer: Peer, now: float) -> None:
        if peer.sent_at:
            self.count.unanswered += 1
            peer.unanswered_in_a_row += 1
            if peer.unanswered_in_a_row >= LOST_AFTER:
                self._lose(peer)
                return
        peer.mid = (peer.mid + 1) & 0xFFFF
        peer.token = peer.mid.to_bytes(2, "big")
        peer.session.send(encode_udp(CoapMessage(MessageType.NON, 3, peer.mid, peer.token,
                                                 HB_OPTIONS, HB_PAYLOAD)))
        self._flush(peer)
        peer.sent_at = now
        self.count.sent += 1

    def poll(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            peer: Peer = key.data
            now = time.monotonic()
            for record in self._read(peer):
                self._record(peer, record, now)
            if peer.session.state is not State.ESTABLISHED and not peer.lost:
                self._lose(peer)

    def _record(self, peer: Peer, record: bytes, now: float) -> None:
        try:
            msg = decode_udp(record)
        except ValueError:
            return
        if msg.code >= 64:
            if peer.sent_at and msg.token == peer.token:
                self.count.answered += 1
                self.count.latencies_ms.append((now - peer.sent_at) * 1000)
                peer.sent_at = 0.0
                peer.unanswered_in_a_row = 0
        elif msg.code == 3 and msg.uri_path == HB_PATH:
            # The server's heartbeat (RFC 9132 §4.7): 2.04, piggybacked when it is a CON.
            if msg.mtype == MessageType.CON:
                answer = encode_udp_fields(MessageType.ACK, CHANGED, msg.mid, msg.token, (), b"")
            else:
                peer.mid = (peer.mid + 1) & 0xFFFF
                answer = encode_udp_fields(MessageType.NON, CHANGED, peer.mid, msg.token, (), b"")
            peer.session.send(answer)
            self._flush(peer)
            self.count.server_heartbeats += 1

    def _lose(self, peer: Peer) -> None:
        peer.lost = True
        self.alive -= 1
        self.count.lost += 1
        self.drop(peer)

    def _read(self, peer: Peer) -> list[bytes]:
        records: list[bytes] = []
        for _ in range(16):
            try:
                data = peer.sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                break
            records += peer.session.feed(data)
        self._flush(peer)
        return records

    def _flush(self, peer: Peer) -> None:
        for datagram in peer.session.take_output():
            try:
                peer.sock.send(datagram)
            except (BlockingIOError, ConnectionRefusedError):
                pass


def generator_process(index: int, workers: int, port: int, pki: str, sessions: int,
                      interval: float, ramp_seconds: float, daemon_cpu: int, reports: Any,
                      stop: Any) -> None:
    os.sched_setaffinity(0, _load_cpus(daemon_cpu))
    _raise_fd_limit()
    ctx = ClientContext(Kind.DTLS, ClientCredentials(Path(pki) / "client.pem",
                                                     Path(pki) / "client.key",
                                                     Path(pki) / "ca.pem"))
    sources = [f"127.{10 + index}.{n // 250}.{n % 250 + 1}"
               for n in range(sessions // SESSIONS_PER_SOURCE + 1)]
    gen = LoadGenerator(ctx, port, sources)
    peers = gen.establish(sessions, time.monotonic() + ramp_seconds,
                          lambda: reports.put({"worker": index, **gen.count.take()}))
    reports.put({"worker": index, "ramp_done": True, "alive": gen.alive, **gen.count.take()})
    # Each session's heartbeats at its own offset in the interval, spread over all processes.
    start = time.monotonic()
    due = [(start + interval * (i * workers + index) / (len(peers) * workers), i)
           for i in range(len(peers))]
    heapq.heapify(due)
    next_report = start + TICK
    while not stop.is_set():
        now = time.monotonic()
        while due and due[0][0] <= now:
            when, i = heapq.heappop(due)
            if not peers[i].lost:
                gen.heartbeat(peers[i], now)
                heapq.heappush(due, (when + interval, i))
        if now >= next_report:
            reports.put({"worker": index, "alive": gen.alive, **gen.count.take()})
            next_report += TICK
        wait = min(due[0][0] if due else now + 0.05, next_report) - time.monotonic()
        gen.poll(max(0.0, min(wait, 0.05)))
    reports.put({"worker": index, "alive": gen.alive, "final": True, **gen.count.take()})


def _raise_fd_limit() -> None:
    # Without CAP_SYS_RESOURCE (containers) the hard limit stays; ``generators_for`` spreads
    # the sessions so that no process needs more than it.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def generators_for(sessions: int, asked: int) -> int:
    """Enough generator processes that each holds its sockets within the fd limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = max(hard - 1024, 1000)
    return max(asked, -(-sessions // per_process))


def _load_cpus(daemon_cpu: int) -> set[int]:
    """The generators stay off the measured daemon's CPU when there is another one."""
    cpus = os.sched_getaffinity(0)
    return cpus - {daemon_cpu} or cpus


# --- one phase ---------------------------------------------------------------------------------


@dataclass
class Point:
    t: float  # seconds since the sessions were up
    alive: int
    answered: int
    unanswered: int
    server_heartbeats: int
    lost: int
    p99_ms: float
    rss_kib: int
    cpu_s: float


@dataclass
class PhaseResult:
    name: str
    sessions: int
    established: int = 0
    ramp_seconds: float = 0.0
    handshake_failures: int = 0
    rss_before_kib: int = 0
    rss_ramped_kib: int = 0
    ramp_points: list[tuple[float, int, int]] = field(default_factory=list)  # t, up, rss
    points: list[Point] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.points)

    def worst_p99(self) -> float:
        return max((p.p99_ms for p in self.points if p.answered), default=0.0)

    def flat_growth(self, window: float = 300.0) -> float:
        """RSS growth over the last ``window`` seconds (or the whole run if shorter)."""
        if len(self.points) < 2:
            return 0.0
        end = self.points[-1]
        first = next(p for p in self.points if p.t >= end.t - window)
        return (end.rss_kib - first.rss_kib) / max(first.rss_kib, 1)


def run_phase(name: str, server: Server, pki: Path, sessions: int, minutes: float,
              interval: float, workers: int, daemon_cpu: int) -> PhaseResult:
    result = PhaseResult(name, sessions)
    workers = generators_for(sessions, workers)
    result.rss_before_kib = server.rss_kib()
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    stop = ctx.Event()
    shares = [sessions // workers + (i < sessions % workers) for i in range(workers)]
    ramp_limit = 60 + sessions / 100  # at 100 handshakes/s, the slowest we would accept
    procs = [ctx.Process(target=generator_process,
                         args=(i, workers, server.port, str(pki), share, interval, ramp_limit,
                               daemon_cpu, reports, stop), daemon=True)
             for i, share in enumerate(shares)]
    started = time.monotonic()
    for p in procs:
        p.start()
    ramped = 0
    while ramped < workers:
        try:
            report = reports.get(timeout=2.0)
        except queue.Empty:
            report = None
        if report is not None:
            result.established += report["established"]
            result.handshake_failures += report["handshake_failures"]
            ramped += bool(report.get("ramp_done"))
        if time.monotonic() - started > ramp_limit + 60:
            raise RuntimeError(f"{name}: the generators did not finish opening sessions")
        result.ramp_points.append((time.monotonic() - started, result.established,
                                   server.rss_kib()))
    result.ramp_seconds = time.monotonic() - started
    result.rss_ramped_kib = server.rss_kib()
    print(f"{name}: {result.established} of {sessions} sessions up in "
          f"{result.ramp_seconds:.0f} s, RSS {result.rss_ramped_kib // 1024} MiB", flush=True)

    t0 = time.monotonic()
    result.ramp_points.append((t0 - started, result.established, result.rss_ramped_kib))
    ticks = max(1, round(minutes * 60 / TICK))
    pending: dict[str, Any] = _empty_tick()
    alive = {i: shares[i] for i in range(workers)}
    next_tick = t0 + TICK
    while True:
        timeout = max(0.0, next_tick - time.monotonic())
        try:
            report = reports.get(timeout=min(timeout, 1.0))
        except queue.Empty:
            report = None
        if report is not None:
            _merge(pending, report)
            alive[report["worker"]] = report["alive"]
        now = time.monotonic()
        if now >= next_tick:
            lat = pending["latencies_ms"]
            result.latencies_ms += lat
            result.points.append(Point(now - t0, sum(alive.values()), pending["answered"],
                                       pending["unanswered"], pending["server_heartbeats"],
                                       pending["lost"], pct(lat, 99) if lat else 0.0,
                                       server.rss_kib(), server.cpu_seconds()))
            p = result.points[-1]
            print(f"{name} t={p.t:5.0f}s alive={p.alive} answered={p.answered} "
                  f"p99={p.p99_ms:.1f}ms lost={p.lost} rss={p.rss_kib // 1024}MiB", flush=True)
            pending = _empty_tick()
            next_tick += TICK
            if len(result.points) >= ticks:
                break
    stop.set()
    _fold_final_reports(result, reports, pending, workers)
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
    return result


def _fold_final_reports(result: PhaseResult, reports: Any, pending: dict[str, Any],
                        workers: int) -> None:
    """What the generators counted after their last report (each reports once more when
    told to stop) goes into the last window: on a busy machine a generator's report can
    arrive just after a window closes, and a short run has one window only."""
    finals, deadline = 0, time.monotonic() + 30.0
    while finals < workers and time.monotonic() < deadline:
        try:
            report = reports.get(timeout=1.0)
        except queue.Empty:
            continue
        _merge(pending, report)
        finals += bool(report.get("final"))
    if not result.points:
        return
    last = result.points[-1]
    late = pending["latencies_ms"]
    if late:
        result.latencies_ms += late
        last.p99_ms = max(last.p99_ms, pct(late, 99))  # conservative: not the merged p99
    last.answered += pending["answered"]
    last.unanswered += pending["unanswered"]
    last.server_heartbeats += pending["server_heartbeats"]
    last.lost += pending["lost"]


def _empty_tick() -> dict[str, Any]:
    return {"answered": 0, "unanswered": 0, "server_heartbeats": 0, "lost": 0,
            "latencies_ms": []}


def _merge(into: dict[str, Any], report: dict[str, Any]) -> None:
    for key in ("answered", "unanswered", "server_heartbeats", "lost"):
        into[key] += report.get(key, 0)
    into["latencies_ms"] += report.get("latencies_ms", [])


# --- results -----------------------------------------------------------------------------------


def plot(result: PhaseResult, path: Path, interval: float) -> None:
    plt = plots.pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ramp_t = [t - result.ramp_seconds for t, _, _ in result.ramp_points]
    t = [p.t for p in result.points]
    axes[0].plot(ramp_t, [up for _, up, _ in result.ramp_points], color="tab:gray",
                 label="sessions opened")
    axes[0].plot(t, [p.alive for p in result.points], color="tab:blue", label="sessions alive")
    axes[0].set_ylabel("sessions")
    axes[0].legend(loc="lower right")
    axes[1].plot(t, [p.p99_ms for p in result.points], color="tab:orange",
                 label="heartbeat answer p99")
    axes[1].axhline(TARGET_P99_MS, color="tab:red", linestyle="--", label="target")
    axes[1].set_ylabel("ms")
    axes[1].legend(loc="upper right")
    axes[2].plot(ramp_t, [rss / 1024 for _, _, rss in result.ramp_points], color="tab:gray")
    axes[2].plot(t, [p.rss_kib / 1024 for p in result.points], color="tab:green",
                 label="daemon RSS")
    axes[2].set_ylabel("MiB")
    axes[2].set_xlabel("seconds since every session was up (negative: opening them)")
    axes[2].legend(loc="lower right")
    fig.suptitle(f"soak, {result.name}: {result.sessions:,} DTLS sessions, heartbeats every "
                 f"{interval:g} s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary(result: PhaseResult, interval: float) -> list[str]:
    ok = result.points and result.lost == 0 and result.established == result.sessions
    steady = [p for p in result.points if p.answered]
    cpu = (steady[-1].cpu_s - result.points[0].cpu_s) if len(steady) > 1 else 0.0
    heartbeats = sum(p.answered + p.server_heartbeats for p in result.points[1:])
    per_session = (result.rss_ramped_kib - result.rss_before_kib) / max(result.established, 1)
    peak = max((p.rss_kib for p in result.points), default=0)
    growth = result.flat_growth()
    minutes = result.points[-1].t / 60 if result.points else 0.0

    def verdict(good: bool) -> str:
        return "met" if good else "MISSED"

    return [
        f"### {result.name}",
        "",
        f"- sessions: {result.established:,} of {result.sessions:,} up in "
        f"{result.ramp_seconds:.0f} s ({result.handshake_failures} handshakes tried again); "
        f"heartbeats every {interval:g} s for {minutes:.1f} min",
        f"- lost: {result.lost} (target 0: {verdict(bool(ok))})",
        f"- heartbeat answer p99: worst 10 s window {result.worst_p99():.1f} ms, whole run "
        f"{pct(result.latencies_ms, 99) if result.latencies_ms else 0:.1f} ms, p50 "
        f"{pct(result.latencies_ms, 50) if result.latencies_ms else 0:.2f} ms "
        f"(target <= {TARGET_P99_MS:g} ms in every window: "
        f"{verdict(result.worst_p99() <= TARGET_P99_MS)})",
        f"- heartbeats: {sum(p.answered for p in result.points):,} from the clients answered, "
        f"{sum(p.unanswered for p in result.points):,} unanswered, "
        f"{sum(p.server_heartbeats for p in result.points):,} from the daemon answered",
        f"- RSS: {result.rss_before_kib / 1024:.0f} MiB before, {peak / 1024:.0f} MiB peak "
        f"(target <= 1 GiB: {verdict(peak <= TARGET_RSS_KIB)}); "
        f"{per_session:.1f} KiB per session; growth over the last 5 min {growth:+.2%} "
        f"(flat, < {FLAT_GROWTH:.0%}: {verdict(growth < FLAT_GROWTH)})",
        f"- daemon CPU per heartbeat exchange: "
        f"{cpu / heartbeats * 1e6 if heartbeats else 0:.0f} us ({cpu:.1f} s over "
        f"{heartbeats:,} exchanges, both directions)",
        f"- timeline: ![{result.name}](soak-{result.name}.png)",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--phases", default="server,gateway")
    parser.add_argument("--results", type=Path, default=ROOT / "tests/bench/RESULTS.md")
    args = parser.parse_args()
    _raise_fd_limit()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    body = [*machine_lines(), f"- command: soak.py --sessions {args.sessions} --minutes "
            f"{args.minutes:g} --interval {args.interval:g} --workers {args.workers}", ""]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dots-soak-") as tmp_name:
        tmp = Path(tmp_name)
        for phase in phases:
            result = _run(phase, tmp / phase, args)
            plot(result, args.results.parent / f"soak-{phase}.png", args.interval)
            lines = summary(result, args.interval)
            body += lines
            print("\n".join(lines), flush=True)
    update_section(args.results, "Soak (make soak)", [*body, "", *FINDINGS])
    print(f"results written to {args.results}")


#: What the runs and profiles showed; written with every run's figures. Dated: measure again
#: when it changes.
FINDINGS = [
    'Notes (issue 21 §2; the same 50,000-session server phase: four runs on 2026-12-07, the '
    'last three on a clean clone of main, and one on 2026-12-08):',
    '',
    '| run | code | lost | heartbeat answer p99: worst window / whole run / p50 | RSS peak, '
    'last 5 min | CPU per exchange |',
    '|---|---|---|---|---|---|',
    '| 13:41 | before the NON-lifetime fix | 4,220 | 6,947 / 5,655 / 801 ms | 1,072 MiB, +22.8%'
    ' | 305 us |',
    '| 17:53 | 41ecc9e (NON entries expire) | 14,062 | 30,270 / 16,224 / 784 ms | 719 MiB, '
    '+0.09% | 256 us |',
    '| 18:12 | + GC policy ([gc], ed5f7e6) | 0 | 389 / 306 / 33 ms | 727 MiB, +0.16% | 235 us |',
    '| 18:47 | + heartbeats paced (331e05f) | 0 | 164 / 88 / 3.95 ms | 726 MiB, '
    '+0.22% | 230 us |',
    '| 2026-12-08 01:06 | 00682d8, `make soak` on a clean clone (resends dropped, cheaper log '
    'lines) | 0 | 204 / 76 / 3.34 ms | 730 MiB, +0.01% | 225 us |',
    '',
    '- The 17:53 and 18:12 runs had other test runs beside them (load average 3-4.5); the 18:47'
    ' run nothing else. The losses are sessions whose heartbeats went unanswered `LOST_AFTER` '
    'times in a row while the loop stalled.',
    '- RSS: flat and under 1 GiB since the NON-lifetime fix (~10.5 KiB per session at 50,000).',
    '- Where the p99 went, found with py-spy on the running server:',
    "  - 17:53: 40% of the loop's samples were in `TimerHandle.__init__` under "
    '`_send_heartbeat`: allocation-triggered full collections of the cyclic GC, each walking '
    "every session's objects (0.2-0.7 s at 10,000 sessions, ~0.7 s at 50,000). The GC policy "
    '(README "Garbage collection": survivors of each full collection frozen, hourly audit) '
    'takes them away.',
    '  - 18:12: no GC left in the profile; `_on_tick` 29% of the loop: the core reports every '
    'session whose heartbeat is due at a 0.5 s tick, ~830 at 50,000 sessions, and sending them '
    'in one go held the loop ~150-200 ms. They now leave 32 per loop turn '
    '(gateway/server/heartbeat_pacing.py).',
    '- What remains (18:47): p50 3.95 ms, p99 per window 24-34 ms in the first 80 s and 34-164 '
    'ms later, 21 of the 60 windows within 50 ms. The daemon spends 230 us per heartbeat '
    "exchange, ~3,300 exchanges/s here (client's and server's heartbeats), so its core is ~75% "
    'busy: the tail is queueing behind the work of the other sessions, and it needs less CPU '
    'per exchange (the request path, §3), not another policy. Target 50 ms in every window: '
    'MISSED.',
    '- Gateway phase (25,000 clients, 18:47 run): 0 lost, p99 worst window 104 ms, whole run 35'
    ' ms, p50 0.71 ms; 7 of 60 windows over 50 ms.',
    '- 2026-12-08 01:06 (clean clone, nothing else running): server phase as above; gateway '
    'phase (25,000 clients) 0 lost, p99 worst window 57 ms, whole run 20 ms, p50 0.57 ms, RSS '
    "402 MiB flat, 261 us per exchange. The server's worst windows (137-204 ms) came in the "
    'steady state, as on 2026-12-07: the core is ~75% busy with heartbeats at 225 us each, so a'
    ' burst of due heartbeats queues.',
]


def _run(phase: str, tmp: Path, args: argparse.Namespace) -> PhaseResult:
    tmp.mkdir()
    if phase == "server":
        pki = tmp / "pki"
        init_dev_pki(pki)
        server = start_ours(pki, tmp)
        try:
            return run_phase("server", server, pki, args.sessions, args.minutes,
                             args.interval, args.workers, daemon_cpu=0)
        finally:
            server.stop()
    if phase == "gateway":
        pkis = Pkis(tmp / "down", tmp / "up", tmp / "direct")
        for pki in (pkis.down, pkis.up, pkis.direct):
            init_dev_pki(pki)
        upstream = start_upstream(tmp, pkis)
        try:
            gateway = start_gateway(tmp, pkis, upstream, None)
            try:
                return run_phase("gateway", gateway, pkis.down, args.sessions // 2,
                                 args.minutes, args.interval, args.workers, GATEWAY_CPU)
            finally:
                gateway.stop()
        finally:
            upstream.stop()
    raise SystemExit(f"unknown phase {phase!r} (server, gateway)")


if __name__ == "__main__":
    main()
