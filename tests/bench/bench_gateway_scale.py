"""Relay overhead at 10,000 sessions, against the gateway of a baseline revision (issue 21).

    .venv/bin/python tests/bench/bench_gateway_scale.py [--sessions 10000] [--rate 200]
        [--seconds 5] [--baseline REV] [--no-baseline] [--results tests/bench/RESULTS.md]

``bench_gateway.py``'s latency phase (its processes, PKIs, workload and open-loop driver) at
a session count its interleaved run cannot reach: each session is a UDP socket of the load
generator and the open file limit is 20,000 here, so the targets run one after the other,
each with its own ``--sessions`` sessions (one cuid and one mitigation each), closed before
the next: this checkout's gateway, the server directly, the gateway of ``--baseline`` (a git
revision exported with ``git archive``, run against the same upstream server). For each,
GET and PUT refresh paced at ``--rate`` requests/s in total (open loop, round robin: each
session sends every sessions/rate seconds), ``--seconds`` each. Overhead = via a gateway -
direct, per percentile; the baseline's in the same run gives the ratio (this machine's speed
drifts). About five minutes.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certs.devpki import init_dev_pki  # noqa: E402
from certs.identity import derive_id  # noqa: E402
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind  # noqa: E402
from tests.bench import plots  # noqa: E402
from tests.bench.bench_gateway import (  # noqa: E402
    LOAD_CPU,
    Measure,
    Pkis,
    Workload,
    create_mitigations,
    drive,
    machine_busy_seconds,
    own_cpu_seconds,
    report_profile,
    start_gateway,
    start_upstream,
)
from tests.bench.bench_relay_reconcile import BASELINE, export  # noqa: E402
from tests.bench.bench_transport import Generator, Server, establish  # noqa: E402
from tests.bench.dots_load import Runner  # noqa: E402
from tests.bench.results import machine_lines, update_section  # noqa: E402

TARGET_OVERHEAD_P99_MS = 1.0
KINDS = ("GET", "PUT")


def measure_target(label: str, gen: Generator, work_target: str, cuid: str, sessions: int,
                   servers: list[Server], seconds: float, rate: float
                   ) -> dict[str, Measure]:
    started = time.monotonic()
    clients = establish(gen, sessions, seconds=max(120.0, sessions / 25))
    if len(clients) < sessions * 0.9:
        for c in clients:
            gen.close(c)
        raise TimeoutError(f"{label}: {len(clients)} of {sessions} sessions")
    took = time.monotonic() - started
    sessions = len(clients)  # a busy machine may leave a few out: measured with the rest
    # The bench credential may use any cuid: each session stands for a client of its own.
    cuids = [derive_id(f"bench-{work_target}-{i}".encode()) for i in range(sessions)]
    work = Workload(Runner(gen, cuid), work_target, clients, cuids)
    codes = create_mitigations(work, window=64)
    print(f"  {label}: {sessions:,} sessions in {took:.0f} s, mitigations {dict(codes)}",
          flush=True)
    out = {}
    for kind in KINDS:
        m = drive(work, kind, seconds, servers, rate=rate)
        out[kind] = m
        print(f"  {label} {kind}: p50 {m.p(50):.2f} p99 {m.p(99):.2f} ms, {dict(m.codes)}, "
              f"resent {m.resent}, missed {m.missed_slots}, CPU "
              + ", ".join(f"{k} {v:.1f} s" for k, v in m.cpu.items()), flush=True)
    for c in clients:
        gen.close(c)
    time.sleep(1.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--baseline", default=BASELINE, help="git revision to compare with")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "tests/bench/RESULTS.md")
    parser.add_argument("--gateway-only", action="store_true",
                        help="only this checkout's gateway (experiments; RESULTS.md is not"
                        " written)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="only this checkout's gateway, under cProfile (statistics in this"
                        " directory; RESULTS.md is not written)")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.sessions + 256 > hard:
        raise SystemExit(f"--sessions {args.sessions}: the open file limit is {hard}")
    tmp = Path(tempfile.mkdtemp(prefix="dots-bench-gw-scale-"))
    pkis = Pkis(tmp / "pki-down", tmp / "pki-up", tmp / "pki-direct")
    for pki in (pkis.down, pkis.up, pkis.direct):
        init_dev_pki(pki)
    began, busy0, own0 = time.monotonic(), machine_busy_seconds(), own_cpu_seconds()
    upstream = start_upstream(tmp, pkis)
    os.sched_setaffinity(0, {LOAD_CPU})
    ctx = {name: ClientContext(Kind.DTLS, ClientCredentials(
        pki / "client.pem", pki / "client.key", server_ca / "ca.pem"))
        for name, pki, server_ca in (("gateway", pkis.down, pkis.down),
                                     ("direct", pkis.direct, pkis.up))}
    results: dict[str, dict[str, Measure]] = {}
    ours = 0.0
    try:
        plan = [("this checkout", ROOT), ("direct", None)]
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        if args.profile is not None or args.gateway_only:
            plan = plan[:1]
        elif not args.no_baseline:
            plan.append((f"baseline {args.baseline}", export(args.baseline, tmp / "baseline")))
        for label, code in plan:
            if code is None:
                gen = Generator(ctx["direct"], upstream.port)
                results[label] = measure_target(label, gen, "direct", pkis.cuid(pkis.direct),
                                                args.sessions, [upstream], args.seconds,
                                                args.rate)
                continue
            name = "gateway" if code == ROOT else "gateway-baseline"
            gw = start_gateway(tmp, pkis, upstream, args.profile, code, name)
            try:
                cpu0 = gw.cpu_seconds()
                gen = Generator(ctx["gateway"], gw.port)
                results[label] = measure_target(label, gen, "gateway", pkis.cuid(pkis.down),
                                                args.sessions, [gw, upstream], args.seconds,
                                                args.rate)
                ours += gw.cpu_seconds() - cpu0
            finally:
                gw.stop()
    finally:
        upstream.stop()
    elapsed = time.monotonic() - began
    others = max(0.0, machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0) - ours)
    load = (f"{elapsed:.0f} s run; other processes (and the upstream server) used"
            f" {others / elapsed:.2f} cores on average meanwhile (load average at the end"
            f" {Path('/proc/loadavg').read_text().split()[0]})")
    print(load)
    if args.profile is not None:
        report_profile(args.profile.resolve())
    elif not args.gateway_only:
        write_results(args.results, results, args, load)
    shutil.rmtree(tmp, ignore_errors=True)


def write_results(path: Path, results: dict[str, dict[str, Measure]],
                  args: argparse.Namespace, load: str) -> None:
    direct = results["direct"]
    gateways = [label for label in results if label != "direct"]
    rows = ["| path | request | p50 ms | p99 ms | overhead p50 / p99 ms | answers |",
            "|---|---|---|---|---|---|"]
    for label in ["direct", *gateways]:
        for kind in KINDS:
            m = results[label][kind]
            over = ("" if label == "direct" else
                    f"{m.p(50) - direct[kind].p(50):.2f} / {m.p(99) - direct[kind].p(99):.2f}")
            rows.append(f"| {label} | {kind} | {m.p(50):.2f} | {m.p(99):.2f} | {over} | "
                        + ", ".join(f"{n} x {c}" for c, n in sorted(m.codes.items()))
                        + (f"; resent {m.resent}" if m.resent else "") + " |")
    ours = gateways[0]
    worst = max(results[ours][k].p(99) - direct[k].p(99) for k in KINDS)
    lines = [f"- overhead p99 <= {TARGET_OVERHEAD_P99_MS:g} ms at {args.sessions:,} sessions"
             f" (worst of GET and PUT): {worst:.2f} ms -> "
             f"{'met' if worst <= TARGET_OVERHEAD_P99_MS else 'MISSED'}"]
    if len(gateways) > 1:
        base = max(results[gateways[1]][k].p(99) - direct[k].p(99) for k in KINDS)
        lines.append(f"- same run, {gateways[1]}: {base:.2f} ms (ratio this checkout /"
                     f" baseline {worst / base:.2f})" if base > 0 else
                     f"- same run, {gateways[1]}: {base:.2f} ms")
    link = plots.drawn("relay latency at scale", path.parent / LATENCY_PNG, lambda png:
                       plots.latency_panels(png, f"relay latency at {args.sessions:,} sessions,"
                                            f" paced at {args.rate:g} requests/s (overhead:"
                                            " the gap to direct)", latency_panels(results)))
    update_section(path, "Gateway relay at scale (tests/bench/bench_gateway_scale.py)", [
        *machine_lines(),
        f"- {load}",
        f"- bench_gateway.py's processes and paced phase at {args.sessions:,} sessions (one"
        f" cuid and one mitigation each), {args.rate:g} requests/s in total, {args.seconds:g} s"
        " per request kind; the targets one after the other (the load generator's open file"
        " limit is 20,000): this checkout's gateway, direct, the baseline's gateway",
        "",
        *rows,
        "",
        *lines,
        "",
        link,
        "",
        *FINDINGS,
    ])


LATENCY_PNG = "gateway-scale-latency.png"


def latency_panels(results: dict[str, dict[str, Measure]]) -> dict[str, dict[str, list[float]]]:
    """Per request kind, the latencies of every path; a gateway's label carries its overhead
    (the horizontal gap to direct's curve) at p50 and p99."""
    direct = results["direct"]
    panels: dict[str, dict[str, list[float]]] = {}
    for kind in KINDS:
        panel = panels.setdefault("GET mitigate" if kind == "GET" else "PUT refresh", {})
        for label, by_kind in results.items():
            m = by_kind[kind]
            if label != "direct":
                label += (f", overhead p50 {m.p(50) - direct[kind].p(50):.2f} / p99"
                          f" {m.p(99) - direct[kind].p(99):.2f} ms")
            panel[label] = m.latencies
    return panels


#: What profiling showed (py-spy on the gateway, gc.callbacks timing its collections, with
#: ``--gateway-only``); written with every run's figures. Dated: measure again when it changes.
FINDINGS = [
    "Where the time goes at 10,000 sessions (2026-12-07, on a machine where other jobs took"
    " 1-1.4 of its 2 cores, load average 4-9: the absolute figures are mostly CPU"
    " contention, the same-run ratio is the comparison):",
    "",
    "- The relay table's sweeps are gone: `expire`/`next_expiry` walked every record on every"
    " 1 s tick and `active()` every cuid for every upstream message; now a heap looked at"
    " when due and a set of the requests in force (`gateway/dots/relay.py`). The baseline"
    " still pays them at 10,000 records.",
    "- What is left is the cyclic garbage collector: full (generation 2) collections of the"
    " gateway took 0.2, 0.2, 0.36, 0.45, 0.51, 0.70 s, about every 25 s while the sessions"
    " were established (timed with gc.callbacks), each collecting 0 objects: a walk of"
    " every live session's objects that stalls every request behind it (a NON request"
    " unanswered for 3 s is sent again: the resends). One such stall in a 5 s window is"
    " the p99. With the generation-2 threshold raised (700, 10, 1000; experiment, not"
    " kept) the run had one full collection, 0.92 s, which freed 300,289 objects: the"
    " request path leaves cyclic garbage that outlives the young generations. Finding it"
    " comes first; then a policy (freeze the long-lived session state, rarer full"
    " collections) can take the stalls away. Not done here; the same holds for"
    " `dots-gateway server` (the soak's heartbeat p99).",
    "- The targets run minutes apart, so a change in the other jobs' load lands on one of"
    " them: on 2026-12-07 at 15:49 this checkout's 10,000 sessions took 160 s to establish"
    " and the baseline's 51 s (load fell meanwhile), and that run favours the baseline; at"
    " 14:51 the same bench gave p99 overheads of 592 / 1,211 ms (GET / PUT) for this"
    " checkout against 229 / 2,141 ms for the baseline (worst: 0.57x). The gateway's CPU in"
    " the 5 s windows (both runs: ~2.8-3.2 s this checkout, ~2.9-3.6 s the baseline, the"
    " background of 10,000 sessions included) is the steadier comparison. Either way the"
    " 1 ms target is MISSED by two orders of magnitude on this machine.",
]


if __name__ == "__main__":
    main()
