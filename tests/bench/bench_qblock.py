"""Q-Block (RFC 9177) against Block2 (RFC 7959) under loss (issue 19).

    .venv/bin/python tests/bench/bench_qblock.py [--runs 5] [--budget 150]
        [--results tests/bench/RESULTS.md]

A ``dots-gateway server`` (DTLS only), our ``DotsClient`` and between them
``tests.support.lossy_udp.LossyRelay``, which drops each datagram either way with the given
probability (seeded, so a run is repeatable for the same order of datagrams). The client
installs 200 mitigations without loss; then, per transfer mode and loss rate (0%, 10%,
30%), it times ``runs`` transfers of the whole list (a GET of 200 mitigations, about 12
blocks of 1,024 bytes) and ``runs`` refreshes of one mitigation of 1,000 prefixes (a PUT
of about 20 KB). Completion time is from the call to the reply, including every
retransmission, and reported as median and p95 (nearest rank) with the failures (no reply
within the client's 90 s request timeout). Every cell is bounded by ``--budget`` seconds;
fewer runs than asked are then reported as such.

Block2/Block1 mode is the client with ``q_block = False`` (what peers without Q-Block get):
GETs go block by block in Block2, each a NON request sent again after 3 s of silence (RFC
9132 §4.4), and a PUT larger than one datagram goes in RFC 7959 Block1 blocks, one at a
time, each sent again after 3 s of silence. A script, not a test: it prints and records
numbers, never fails on them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certs.devpki import init_dev_pki  # noqa: E402
from gateway.client.connect import NetworkError  # noqa: E402
from gateway.client.role import DotsClient, make_scope  # noqa: E402
from tests.bench.results import machine_lines, update_section  # noqa: E402
from tests.integration.test_client_role import cert_credentials, running_server  # noqa: E402
from tests.support.lossy_udp import LossyRelay  # noqa: E402

MITIGATIONS = 200
BIG_PREFIXES = 1000
LOSSES = (0.0, 0.1, 0.3)
REQUEST_TIMEOUT = 90.0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p * len(ordered) + 0.5) - 1))]


async def timed(call: object, runs: int, budget: float, size: int | None = None
                ) -> tuple[list[float], int]:
    """Completion times of up to ``runs`` calls within ``budget`` s, and the failures (no
    answer, an error, or a body much shorter than ``size``)."""
    times: list[float] = []
    failures = 0
    until = time.monotonic() + budget
    for _ in range(runs):
        if time.monotonic() > until:
            break
        started = time.monotonic()
        try:
            reply = await call()  # type: ignore[operator]
            # A cut body (one block taken for the whole) must not count as a transfer; the
            # lifetimes in the list may change its length by a few bytes.
            ok = reply.ok and (size is None or len(reply.response.payload) > 0.95 * size)
        except NetworkError:
            ok = False
        if ok:
            times.append(time.monotonic() - started)
        else:
            failures += 1
    return times, failures


async def bench(args: argparse.Namespace) -> list[str]:
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pki = work / "pki"
        init_dev_pki(pki)
        with running_server(work / "server", pki, transports=("udp",),
                            level="warning") as server:
            relay = await LossyRelay.start(("127.0.0.1", server.port), seed=args.seed)
            try:
                async with DotsClient(cert_credentials(pki), f"coaps://127.0.0.1:{relay.port}",
                                      state_dir=work / "client",
                                      request_timeout=REQUEST_TIMEOUT,
                                      negotiate=False) as client:
                    for i in range(MITIGATIONS):
                        scope = make_scope(target_prefix=[f"2001:db8:{i:x}::/48"])
                        assert (await client.mitigate(scope, mid=i + 1)).ok
                    big = make_scope(target_prefix=[f"2001:db8:{0x1000 + i:x}::/48"
                                                    for i in range(BIG_PREFIXES)])
                    whole = await client.get()
                    assert whole.ok, whole
                    sizes = [len(whole.response.payload), 0]
                    # Every GET first: the large mitigation must not be in the list.
                    for mode, q_block in (("Q-Block", True), ("Block2", False)):
                        client.q_block = q_block
                        for loss in LOSSES:
                            await cell(rows, relay, loss, "GET 200 mitigations", mode,
                                       client.get, args, size=sizes[0])
                    for mode, q_block in (("Q-Block", True), ("Block1", False)):
                        client.q_block = q_block
                        for loss in LOSSES:
                            await cell(rows, relay, loss, "PUT 1,000 prefixes", mode,
                                       lambda: client.mitigate(big, mid=MITIGATIONS + 1), args)
                    client.q_block = True
                    put = await client.mitigate(big, mid=MITIGATIONS + 1)
                    sizes[1] = len(put.request.payload)
                    print(f"GET body {sizes[0]} bytes, PUT body {sizes[1]} bytes")
                rows.insert(0, f"GET body {sizes[0]} bytes; PUT body {sizes[1]} bytes; "
                               f"{relay.dropped} datagrams dropped in all.")
            finally:
                relay.close()
    return rows


async def cell(rows: list[str], relay: LossyRelay, loss: float, what: str, mode: str,
               call: object, args: argparse.Namespace, size: int | None = None) -> None:
    relay.loss = loss
    times, failed = await timed(call, args.runs, args.budget, size)
    relay.loss = 0.0
    line = row(what, mode, loss, times, failed)
    print(line, flush=True)
    rows.append(line)
    await asyncio.sleep(1)  # let the cell's late retransmissions end


def row(what: str, mode: str, loss: float, times: list[float], failed: int) -> str:
    if times:
        median, p95 = f"{statistics.median(times):.2f}", f"{pct(times, 0.95):.2f}"
    else:
        median = p95 = "-"
    return (f"| {what} | {mode} | {loss:.0%} | {median} | {p95} | {len(times)} | "
            f"{failed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=150.0,
                        help="seconds per cell at most")
    parser.add_argument("--seed", type=int, default=9177)
    parser.add_argument("--results", type=Path, default=ROOT / "tests/bench/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = asyncio.run(bench(args))
    summary, table = rows[0], rows[1:]
    body = [*machine_lines(),
            f"- {MITIGATIONS} mitigations listed by one GET; one PUT of {BIG_PREFIXES} "
            f"prefixes; loss either way through a seeded relay; {args.runs} runs per cell "
            f"(at most {args.budget:g} s per cell); {summary}",
            "",
            "| transfer | mode | loss | median s | p95 s | runs | failed |",
            "|---|---|---|---|---|---|---|",
            *table]
    update_section(args.results, "Q-Block vs Block2 under loss (bench_qblock.py)", body)
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
