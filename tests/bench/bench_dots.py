"""DOTS-level benchmark of ``dots-gateway server``: mitigation create+delete cycles and
heartbeat round trips over DTLS, against the server of a baseline revision (issue 21 §3).

    .venv/bin/python tests/bench/bench_dots.py [--seconds 10] [--sessions 100] [--rate 1000]
        [--slower-rate 600] [--baseline REV] [--no-baseline] [--no-profile]
        [--results tests/bench/RESULTS.md]

Servers on CPU 0, load generator (single-threaded, epoll) on CPU 1, loopback only, every
phase bounded in time. The daemons under test run side by side and take turns phase by
phase (the order rotating), so that each phase's figures come from the same machine state
(its speed drifts by 30% within hours): this checkout's server, the server of ``--baseline``
(a git revision exported with ``git archive``; default: the baseline of the other issue 21
benches), and this checkout's server again with its state directory on tmpfs (fsync costs
nothing there: the same code without the disk, for attribution).

Phases: create+delete cycles (PUT, then DELETE of that mid; every one persisted before its
answer; each session a client of its own, its own cuid and /24) on 1 session and on
``--sessions`` sessions saturated (one request outstanding per session), and on
``--sessions`` sessions paced at ``--rate`` and at ``--slower-rate`` cycles/s (open loop); then
heartbeat round trips on 1 and 16 sessions. Measured with each window: the daemon's CPU
(/proc/PID/stat), its saves and fsyncs (``dots_gateway_state_*_total`` on its metrics
endpoint), the generator's CPU, and, before each mitigation phase, a sample of fsync
latencies in the state directory's file system (an 8 KiB append, then fsync, like a WAL
commit's). Issue 21 §3's target: >= 2,000 cycles/s over 100 sessions with PUT p99 <= 2 ms
when paced at 1,000 cycles/s. For scale (issue 5): go-dots measured 5.85 create+delete
cycles/s (PUT p50 58 ms) and 802 heartbeats/s at 16 sessions on a machine like ours.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certs.devpki import init_dev_pki  # noqa: E402
from certs.identity import cuid_from_certificate, derive_id  # noqa: E402
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind  # noqa: E402
from tests.bench import dots_pictures  # noqa: E402
from tests.bench.bench_gateway import (  # noqa: E402
    machine_busy_seconds,
    mitigation_body,
    own_cpu_seconds,
)
from tests.bench.bench_relay_reconcile import BASELINE, export, start  # noqa: E402
from tests.bench.bench_transport import (  # noqa: E402
    CLK,
    Generator,
    Server,
    establish,
    free_port,
    pct,
)
from tests.bench.disk_probe import FSYNC_WRITE, fs_type, fsync_latencies  # noqa: E402
from tests.bench.dots_load import Cycles, Runner  # noqa: E402
from tests.bench.results import machine_lines, update_section  # noqa: E402
from tests.bench.spy import buckets as spy_buckets  # noqa: E402
from tests.bench.spy import py_spy  # noqa: E402
from tests.bench.spy import record as spy_record  # noqa: E402

SERVER_CPU, LOAD_CPU = 0, 1
TARGET_RATE = 2000.0  # create+delete cycles/s over 100 sessions, saturated
TARGET_PUT_P99_MS = 2.0  # when paced at 1,000 cycles/s
OURS = "this checkout"
TMPFS = "this checkout, state on tmpfs"
SHM = Path("/dev/shm")
#: Session i is a client of its own (the bench credential may use any cuid) with its own
#: /24: create+delete cycles of distinct clients, none superseding another's request.
IDENTITIES = [(derive_id(f"bench-dots-{i}".encode()),
               mitigation_body(f"10.{i >> 8}.{i & 255}.0/24")) for i in range(4096)]


# --- the daemons -------------------------------------------------------------------------------


@dataclass
class Daemon:
    label: str
    server: Server
    metrics_port: int
    state: Path
    #: The last mid sent: a client's mids only grow (RFC 9132 §4.4.1), across phases too.
    mid: int = 0

    def counters(self) -> tuple[float, float]:
        """The mitigation database's saves and fsyncs so far (NaN when not exported)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                text = answer.read().decode()
        except OSError:
            text = ""
        return tuple(  # type: ignore[return-value]
            float(m.group(1)) if (m := re.search(
                rf'^dots_gateway_state_{name}_total{{database="mitigations"}} (\S+)$', text,
                re.MULTILINE)) else float("nan") for name in ("saves", "fsyncs"))


def start_daemon(label: str, code: Path, pki: Path, state: Path) -> Daemon:
    """``dots-gateway server`` of the checkout ``code`` on CPU 0, its state in ``state``."""
    state.mkdir(parents=True, exist_ok=True)
    port, metrics = free_port(), free_port()
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    config = state / "bench.toml"
    config.write_text(
        f'[general]\nstate_dir = "{state}"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
        f'[[clients]]\nname = "bench"\ncuid = "{cuid}"\nprefixes = ["0.0.0.0/0"]\n'
        "allow_any_cuid = true\n"
        "[limits]\nhandshakes_per_source = 100000\nmax_handshakes_per_source = 100000\n")
    server, _ = start(label, code, ["server", "--config", str(config)], SERVER_CPU,
                      state / "server.log", 60.0)
    return Daemon(label, server, metrics, state)


# --- phases ------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    sessions: int
    rate: float | None = None  # paced (cycles/s) or saturated
    heartbeats: bool = False


@dataclass
class Turn:
    """One daemon's window of one phase."""

    daemon: str
    phase: Phase
    sessions: int = 0
    cycles: Cycles | None = None
    heartbeats_s: float = 0.0
    heartbeat_ms: list[float] = field(default_factory=list)  # each round trip's
    cpu_s: float = 0.0  # the daemon's, over the window
    sys_s: float = 0.0  # of which in the kernel (sockets, and fsync's journal work)
    load_cpu_s: float = 0.0  # the generator's
    saves: float = float("nan")
    fsyncs: float = float("nan")
    seconds: float = 0.0
    #: py-spy samples in all and per bucket (tests/bench/spy.py), for a profiled window.
    profile: tuple[int, Counter[str]] | None = None

    def per_op_us(self) -> float:
        ops = self.cycles.cycles if self.cycles else self.heartbeats_s * self.seconds
        return self.cpu_s / ops * 1e6 if ops else float("nan")


def run_turn(daemon: Daemon, phase: Phase, ctx: ClientContext, cuid: str,
             seconds: float, profile: Path | None = None) -> Turn:
    """One window; with ``profile``, the daemon sampled by py-spy meanwhile (into that
    file: see ``Turn.profile``)."""
    gen = Generator(ctx, daemon.server.port)
    clients = establish(gen, phase.sessions, seconds=60.0)
    turn = Turn(daemon.label, phase, len(clients))
    try:
        if not clients:
            return turn
        runner = Runner(gen, cuid)
        runner.mid = daemon.mid
        (user0, sys0), own0 = user_sys(daemon.server), own_cpu_seconds()
        saves0, fsyncs0 = daemon.counters()
        spy = None if profile is None else spy_record(daemon.server.proc.pid, seconds, profile)
        began = time.monotonic()
        if phase.heartbeats:
            turn.heartbeats_s = runner.heartbeats(clients, seconds, turn.heartbeat_ms)
        else:
            turn.cycles = runner.mitigation_cycles(clients, seconds, phase.rate,
                                                   IDENTITIES[:len(clients)])
        turn.seconds = time.monotonic() - began
        user, system = user_sys(daemon.server)
        turn.cpu_s, turn.sys_s = user - user0 + system - sys0, system - sys0
        turn.load_cpu_s = own_cpu_seconds() - own0
        daemon.mid = runner.mid
        saves, fsyncs = daemon.counters()
        turn.saves, turn.fsyncs = saves - saves0, fsyncs - fsyncs0
        if spy is not None and profile is not None:
            try:
                if spy.wait(seconds + 30) == 0:
                    turn.profile = spy_buckets(profile.read_text())
            except (subprocess.TimeoutExpired, OSError):
                spy.kill()
    finally:
        for c in clients:
            gen.close(c)
        gen.sel.close()
    print(f"  {phase.name}, {daemon.label}: {summary(turn)}", flush=True)
    return turn


def user_sys(server: Server) -> tuple[float, float]:
    """The process's user and system CPU seconds (/proc/PID/stat utime, stime)."""
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK, int(fields[12]) / CLK


def summary(turn: Turn) -> str:
    if not turn.seconds:
        return "no session established"
    if turn.cycles is None:
        return (f"{turn.heartbeats_s:.0f} heartbeats/s, daemon CPU {turn.per_op_us():.0f} us"
                " each")
    c = turn.cycles
    return (f"{c.rate:.0f} cycles/s, PUT p50/p99 {pct(c.put_ms, 50):.2f}/"
            f"{pct(c.put_ms, 99):.2f} ms, daemon CPU {turn.per_op_us():.0f} us per cycle, "
            f"{turn.saves / turn.seconds:.0f} saves/s, {turn.fsyncs / turn.seconds:.0f}"
            f" fsyncs/s, answers {dict(c.codes)}")


def phases(args: argparse.Namespace) -> list[Phase]:
    """The windows in order; the target's two come second and third."""
    sessions, rate, slower = args.sessions, args.rate, args.slower_rate
    return [
        Phase("1 session, saturated", 1),
        Phase(f"{sessions} sessions, saturated", sessions),
        Phase(f"{sessions} sessions, paced at {rate:,.0f} cycles/s", sessions, rate),
        *([Phase(f"{sessions} sessions, paced at {slower:,.0f} cycles/s", sessions, slower)]
          if slower else []),
        Phase("1 session", 1, heartbeats=True),
        Phase("16 sessions", 16, heartbeats=True),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="each window")
    parser.add_argument("--sessions", type=int, default=100, choices=range(1, 4097),
                        metavar="1..4096")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced phase, cycles/s")
    parser.add_argument("--slower-rate", type=float, default=600.0,
                        help="a second paced phase (the rate of the 2026-11-25 figures); 0: none")
    parser.add_argument("--fsync-samples", type=int, default=100, help="per mitigation phase")
    parser.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-profile", action="store_true",
                        help="no extra windows of this checkout's server under py-spy")
    parser.add_argument("--results", type=Path, default=ROOT / "tests/bench/RESULTS.md")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="dots-bench-"))
    shm = Path(tempfile.mkdtemp(prefix="dots-bench-", dir=SHM)) if SHM.is_dir() else None
    pki = tmp / "pki"
    init_dev_pki(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    ctx = ClientContext(Kind.DTLS, ClientCredentials(pki / "client.pem", pki / "client.key",
                                                     pki / "ca.pem"))
    plan: list[tuple[str, Path, Path]] = [(OURS, ROOT, tmp / "ours")]
    notes: list[str] = []
    if not args.no_baseline:
        try:
            plan.append((f"baseline {args.baseline}", export(args.baseline, tmp / "baseline"),
                         tmp / "baseline-state"))
        except subprocess.CalledProcessError as exc:  # e.g. a shallow clone
            notes.append(f"baseline {args.baseline} not run: git archive failed"
                         f" ({(exc.stderr or b'').decode(errors='replace').strip()})")
            print(notes[-1], flush=True)
    if shm is not None:
        plan.append((TMPFS, ROOT, shm / "state"))
    load0 = Path("/proc/loadavg").read_text().split()[0]
    began, busy0, own0 = time.monotonic(), machine_busy_seconds(), own_cpu_seconds()
    daemons: list[Daemon] = []
    turns: list[Turn] = []
    profiled: list[Turn] = []
    fsync_ms: list[float] = []
    load = ""
    try:
        for label, code, state in plan:
            daemons.append(start_daemon(label, code, pki, state))
        os.sched_setaffinity(0, {LOAD_CPU})
        for i, phase in enumerate(phases(args)):
            print(f"== {phase.name}{' (heartbeats)' if phase.heartbeats else ''}", flush=True)
            if not phase.heartbeats:
                fsync_ms += fsync_latencies(daemons[0].state, args.fsync_samples)
            # Rotating the order spreads a drift in the machine's load over every daemon.
            order = daemons[i % len(daemons):] + daemons[:i % len(daemons)]
            for daemon in order:
                if phase.heartbeats and daemon.label == TMPFS:
                    continue  # no saves: the same as this checkout's
                turns.append(run_turn(daemon, phase, ctx, cuid, args.seconds))
        load = machine_load(began, busy0, own0, load0, daemons)
        print(load, flush=True)
        if not args.no_profile and py_spy() is not None:
            # Extra windows, after the measured ones: the table's figures are unsampled.
            for phase in phases(args)[1:3]:
                print(f"== profile: {phase.name}", flush=True)
                profiled.append(run_turn(daemons[0], phase, ctx, cuid, args.seconds,
                                         tmp / "profile.txt"))
    finally:
        for daemon in daemons:
            daemon.server.stop()
    lines = target_lines(turns, fsync_ms, args) + profile_lines(profiled)
    for line in lines:
        print(line)
    write(args.results, turns, fsync_ms, [load, *notes], lines, args)
    shutil.rmtree(tmp, ignore_errors=True)
    if shm is not None:
        shutil.rmtree(shm, ignore_errors=True)


def machine_load(began: float, busy0: float, own0: float, load0: str,
                 daemons: list[Daemon]) -> str:
    """What the rest of the machine used during the measured windows (the daemons' start
    counts as theirs)."""
    elapsed = time.monotonic() - began
    ours = sum(d.server.cpu_seconds() for d in daemons if d.server.proc.poll() is None)
    others = max(0.0, machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0) - ours)
    return (f"{elapsed:.0f} s of measured windows; other processes used {others / elapsed:.2f}"
            f" cores on average meanwhile (load average {load0} before,"
            f" {Path('/proc/loadavg').read_text().split()[0]} after)")


# --- results -----------------------------------------------------------------------------------


def find(turns: list[Turn], daemon: str, phase_name: str) -> Turn | None:
    return next((t for t in turns if t.daemon == daemon and t.phase.name == phase_name), None)


def ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base and base == base else "-"


def target_lines(turns: list[Turn], fsync_ms: list[float],
                 args: argparse.Namespace) -> list[str]:
    """Issue 21 §3's mitigation target, judged from this run, with where the time went."""
    names = [p.name for p in phases(args)]
    saturated, paced = names[1], names[2]
    base = next((t.daemon for t in turns if t.daemon.startswith("baseline")), None)
    fsync = (f"fsync p50/p99 {pct(fsync_ms, 50):.2f}/{pct(fsync_ms, 99):.2f} ms"
             f" ({len(fsync_ms)} samples)")
    lines = ["", f"Target (issue 21 §3; the issue's sizes are 100 sessions and 1,000 cycles/s,"
             f" this run's {args.sessions} and {args.rate:,.0f}):", ""]
    sat, sat_tmpfs = find(turns, OURS, saturated), find(turns, TMPFS, saturated)
    if sat is not None and sat.cycles is not None:
        rate = sat.cycles.rate
        text = (f"- create+delete >= {TARGET_RATE:,.0f} cycles/s over {args.sessions} sessions:"
                f" {rate:,.0f} -> {'met' if rate >= TARGET_RATE else 'MISSED'}")
        sat_base = find(turns, base, saturated) if base else None
        if sat_base is not None and sat_base.cycles is not None:
            text += (f"; {base} {sat_base.cycles.rate:,.0f} in the same run (ratio"
                     f" {ratio(rate, sat_base.cycles.rate)})")
        lines.append(text)
        cpu = sat.per_op_us()
        busy = sat.cpu_s / sat.seconds
        lines.append(
            f"  - where the time goes: daemon CPU {cpu:,.0f} us per cycle ({busy:.0%} of its"
            f" core, {sat.sys_s / max(sat.cpu_s, 1e-9):.0%} of it in the kernel), i.e. at"
            f" most {1e6 / cpu:,.0f} cycles/s on one core from the CPU alone;"
            f" {sat.fsyncs / sat.seconds:,.0f} fsyncs/s for {sat.saves / sat.seconds:,.0f}"
            " saves/s, each fsync in a worker thread while the loop serves (the rest of the"
            " window: see the"
            f" profile below); load generator {sat.load_cpu_s / sat.seconds:.0%} of its core"
            + (f"; state on tmpfs (same code, fsync free): {sat_tmpfs.cycles.rate:,.0f}"
               " cycles/s" if sat_tmpfs is not None and sat_tmpfs.cycles is not None else ""))
    pac, pac_tmpfs = find(turns, OURS, paced), find(turns, TMPFS, paced)
    if pac is not None and pac.cycles is not None:
        p99 = pct(pac.cycles.put_ms, 99)
        text = (f"- PUT p99 <= {TARGET_PUT_P99_MS:g} ms at {args.rate:,.0f} cycles/s: {p99:.2f}"
                f" ms -> {'met' if p99 <= TARGET_PUT_P99_MS else 'MISSED'} ({pac.cycles.rate:,.0f}"
                " cycles/s achieved)")
        pac_base = find(turns, base, paced) if base else None
        if pac_base is not None and pac_base.cycles is not None:
            bp99 = pct(pac_base.cycles.put_ms, 99)
            text += f"; {base} {bp99:.2f} ms in the same run (ratio {ratio(p99, bp99)})"
        lines.append(text)
        lines.append(
            f"  - of which the disk: every PUT's answer waits for an fsync of the WAL (group"
            f" commit: one fsync covers what committed while the previous one ran;"
            f" {pac.fsyncs / pac.seconds:,.0f} fsyncs/s for"
            f" {pac.saves / pac.seconds:,.0f} saves/s here); this file system's {fsync} in this"
            " run"
            + (f"; with the state on tmpfs (same code, fsync free) PUT p99"
               f" {pct(pac_tmpfs.cycles.put_ms, 99):.2f} ms, p50"
               f" {pct(pac_tmpfs.cycles.put_ms, 50):.2f} ms" if pac_tmpfs is not None
               and pac_tmpfs.cycles is not None else "")
            + f"; daemon CPU {pac.per_op_us():,.0f} us per cycle")
    slower = names[3] if args.slower_rate else None
    if slower is not None and (low := find(turns, OURS, slower)) and low.cycles is not None:
        low_base = find(turns, base, slower) if base else None
        lines.append(
            f"  - at {args.slower_rate:,.0f} cycles/s: PUT p99 {pct(low.cycles.put_ms, 99):.2f}"
            f" ms ({low.cycles.rate:,.0f} cycles/s achieved)"
            + (f"; {base} {pct(low_base.cycles.put_ms, 99):.2f} ms" if low_base is not None
               and low_base.cycles is not None else "")
            + (f"; state on tmpfs {pct(t.cycles.put_ms, 99):.2f} ms" if (t := find(
                turns, TMPFS, slower)) is not None and t.cycles is not None else ""))
    if base is not None:  # what the code controls, whatever the disk
        cpu_ratios = [f"{name} {ratio(ours.per_op_us(), theirs.per_op_us())}"
                      for name in (saturated, paced)
                      if (ours := find(turns, OURS, name)) is not None
                      and (theirs := find(turns, base, name)) is not None]
        lines.append(f"- daemon CPU per cycle against {base} in the same run: "
                     + "; ".join(cpu_ratios))
    return lines


def profile_lines(profiled: list[Turn]) -> list[str]:
    lines = []
    for turn in profiled:
        if turn.profile is None or not turn.profile[0]:
            continue
        total, found = turn.profile
        rate = turn.cycles.rate if turn.cycles else 0.0
        lines.append(
            f"- where {OURS}'s server spent a {turn.phase.name} window (py-spy, an extra"
            f" window after the measured ones, {total:,} samples, {rate:,.0f} cycles/s under"
            " sampling): " + ", ".join(
                f"{name} {n / total:.0%}" for name, n in found.most_common()))
    return lines


def cell(turn: Turn | None, row: str) -> str:
    if turn is None:
        return "-"
    if turn.sessions < turn.phase.sessions:
        prefix = f"({turn.sessions} of {turn.phase.sessions} sessions) "
    else:
        prefix = ""
    c = turn.cycles
    if row == "heartbeat round trips/s":
        return prefix + f"{turn.heartbeats_s:,.0f}"
    if row == "daemon CPU per heartbeat":
        return f"{turn.per_op_us():,.0f} us"
    if c is None:
        return "-"
    values = {
        "create+delete cycles/s": prefix + f"{c.rate:,.0f}"
        + (f" ({c.stalled} requests unanswered after 1 s)" if c.stalled else ""),
        "PUT p50/p99": f"{pct(c.put_ms, 50):.2f}/{pct(c.put_ms, 99):.2f} ms",
        "DELETE p50/p99": f"{pct(c.delete_ms, 50):.2f}/{pct(c.delete_ms, 99):.2f} ms",
        "daemon CPU per cycle": f"{turn.per_op_us():,.0f} us, {turn.sys_s / turn.cpu_s:.0%} in"
        f" the kernel ({turn.cpu_s / turn.seconds:.0%} of a core)" if turn.cpu_s else "0",
        "saves/s, fsyncs/s": f"{turn.saves / turn.seconds:,.0f}, "
        f"{turn.fsyncs / turn.seconds:,.0f}",
        "load generator CPU": f"{turn.load_cpu_s / turn.seconds:.0%} of a core",
        "answers": ", ".join(f"{n:,} x {k}" for k, n in sorted(c.codes.items())),
    }
    return values[row]


MITIGATION_ROWS = ("create+delete cycles/s", "PUT p50/p99", "DELETE p50/p99",
                   "daemon CPU per cycle", "saves/s, fsyncs/s", "load generator CPU", "answers")
HEARTBEAT_ROWS = ("heartbeat round trips/s", "daemon CPU per heartbeat")


def write(path: Path, turns: list[Turn], fsync_ms: list[float], notes: list[str],
          lines: list[str], args: argparse.Namespace) -> None:
    daemons = list(dict.fromkeys(t.daemon for t in turns))
    table = ["| measure | " + " | ".join(daemons) + " |", "|---|" + "---|" * len(daemons)]
    for phase in phases(args):
        for row in HEARTBEAT_ROWS if phase.heartbeats else MITIGATION_ROWS:
            table.append(f"| {row} ({phase.name}) | " + " | ".join(
                cell(find(turns, d, phase.name), row) for d in daemons) + " |")
    update_section(path, "DOTS (tests/bench/bench_dots.py)", [
        *machine_lines(),
        *[f"- {n}" for n in notes],
        "- `dots-gateway server` on CPU 0 (DTLS, NON requests, metrics endpoint on), load"
        " generator on CPU 1; the daemons take turns phase by phase (order rotating),"
        f" {args.seconds:g} s windows; every PUT and DELETE persisted (fsynced) before its"
        " answer",
        f"- state directories on {fs_type(Path(tempfile.gettempdir()))}"
        " (the temporary directory) and, for the tmpfs column, /dev/shm",
        f"- fsync of an {FSYNC_WRITE // 1024} KiB append in the state directory's file system,"
        f" sampled before each mitigation phase: p50 {pct(fsync_ms, 50):.2f}, p90"
        f" {pct(fsync_ms, 90):.2f}, p99 {pct(fsync_ms, 99):.2f} ms, max"
        f" {max(fsync_ms, default=float('nan')):.2f} ms ({len(fsync_ms)} samples)",
        "- go-dots for scale: 5.85 create+delete cycles/s, PUT p50 58 ms; 802 heartbeats/s"
        " at 16 sessions",
        "",
        *table,
        *lines,
        "",
        dots_pictures.draw(path.parent, turns),
        *FINDINGS,
    ])


#: What the runs showed beyond the figures above; written with every run's figures. Dated:
#: measure again when the server's persistence changes.
FINDINGS = [
    "",
    "Where the time goes (2026-12-07 18:40 run; a soak (tests/bench/soak.py, started"
    " 18:31) ran meanwhile, its server pinned to CPU 0 like the daemons here at ~90% of a"
    " core and its generators on CPU 1, so the daemons under test had 60-67% of CPU 0 in the"
    " 100-session windows: compare within the run, not with other days):",
    "",
    "- The 2,000 cycles/s target is missed on CPU, not on the disk. A create+delete cycle"
    " costs the server 1.8-2.1 ms of CPU (~1 ms per persisted request, against ~170-240 us"
    " per heartbeat): one full core would give ~470-560 cycles/s, and 2,000 needs <= 500 us"
    " per cycle, ~4x less. With the state on tmpfs (fsync free, same code) 100 sessions do"
    " 307-380 cycles/s against 290-345 on ext4; py-spy puts 5-6% of the loop's samples in"
    " fsync at 100 sessions.",
    "- The PUT p99 at 1,000 cycles/s is a queue, not a request: the server sustains ~300-350"
    " cycles/s, so the paced phases run saturated too; each event-loop turn takes in the"
    " ~60-70 requests that are waiting (9-11 fsyncs/s for 600-700 saves/s: group commit"
    " shares one fsync per turn), handles them at ~1 ms each, then answers them all: PUT p50"
    " 160-180 ms, p99 250-360 ms, on tmpfs the same.",
    "- The disk's own share shows at 1 session (one request at a time, nothing to share an"
    " fsync with): PUT p50 7.9 ms on ext4 against 2.7 ms on tmpfs, 68 against 164 cycles/s,"
    " so ~5 ms of each persisted request is the WAL's fsync; the 8 KiB probe's fsync p50 is"
    " 1.1 ms, p99 10.5 ms, max 19.9 ms. \"PUT p99 <= 2 ms, persisted\" cannot be met on this"
    " disk by any code that fsyncs before answering (the fsync's p99 alone is 5x the"
    " budget); it needs storage whose fsync p99 is well under 1 ms (a write cache with"
    " power-loss protection), whatever the server does.",
    "- Where the CPU goes (py-spy, 100 sessions saturated, the table above): the DOTS core"
    " (validation, the store's create/supersede/withdraw, conflict and ACL checks, the"
    " answer's tree) 30%; the SQLite save per request (a transaction, the row encoded) 22%;"
    " the `log` mitigator 11% (the default backend: for every apply and withdraw it opens"
    " mitigations.jsonl, describes the scope and dumps a JSON line); the CoAP layers 10%;"
    " role and session glue 8%; CBOR 7%; sockets 4%; DTLS record protection 2%.",
    "- Against the baseline 1a6ad65 in the same run: saturated rate 0.97x, PUT p99 at 1,000"
    " cycles/s 0.99x, CPU per cycle 1.07x and 0.93x: no change on the mitigation path (the"
    " request-path cuts since then went to heartbeats and the CoAP and transport layers: CPU"
    " per heartbeat 0.77x and 0.79x of the baseline's in this run).",
    "- Not tried here (this was the bench): the server's fsync runs on the event loop (the"
    " relay's runs in a worker thread); moving it off would let the loop handle the next"
    " requests while the disk syncs, which matters at low concurrency (at 1 session the"
    " fsync is most of a cycle), hardly at 100 sessions. The 2026-11-25 figures (1,654"
    " cycles/s, PUT p99 3.68 ms at 600/s) came from another host, before durable"
    " acknowledgement and with one cuid for all sessions: not comparable.",
]


if __name__ == "__main__":
    main()
