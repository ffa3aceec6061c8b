"""Relayed PUT/DELETE throughput through a gateway, for the relay's group commit (issue 21).

    .venv/bin/python tests/bench/bench_relay_commit.py [--concurrency 32] [--rounds 20]
        [--gateway-code DIR]

One upstream ``dots-gateway server`` and one gateway (``dots-gateway run``, gateway mode),
both processes; the load is one DTLS client (``DotsClient``, in this process) keeping
``--concurrency`` requests outstanding: it creates that many mitigations (distinct /48s),
refreshes them all ``--rounds`` times, then withdraws them. Every relayed PUT/DELETE
changes the gateway's relay state, so each waits for a save (and its fsync) there.
The upstream's state is on tmpfs (``--upstream-dir``), the gateway's on the disk of the
temporary directory. ``--gateway-code`` runs the gateway from another checkout (PYTHONPATH),
e.g. an export of the code before group commit, for a before/after ratio on the same
machine state. Prints
requests/s per phase and the gateway's relay saves and fsyncs (from its metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certs.devpki import init_dev_pki  # noqa: E402
from gateway.client.role import DotsClient, make_scope  # noqa: E402
from gateway.dots.codes import Code  # noqa: E402
from tests.integration.test_client_role import free_port  # noqa: E402
from tests.integration.test_gateway import (  # noqa: E402
    FAST,
    Pkis,
    gateway_config,
    upstream_config,
)
from tests.support.daemon import serving  # noqa: E402


def relay_counters(port: int) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = [re.search(rf'^dots_gateway_state_{n}_total{{database="relay"}} (\S+)$', text,
                       re.MULTILINE) for n in ("saves", "fsyncs")]
    return tuple(float(m.group(1)) if m else float("nan") for m in found)  # type: ignore[return-value]


async def phase(name: str, calls: list, expect: Code, waves: int = 1) -> float:
    """``calls`` all at once, ``waves`` times (64 outstanding per session, heartbeats too)."""
    started = time.perf_counter()
    replies = []
    for _ in range(waves):
        replies += await asyncio.gather(*(call() for call in calls))
    calls = calls * waves
    elapsed = time.perf_counter() - started
    bad = [r.code for r in replies if r.code is not expect]
    rate = len(calls) / elapsed
    print(f"{name:8} {len(calls):5} requests in {elapsed:6.2f} s: {rate:7.1f}/s"
          + (f"  unexpected: {bad[:5]}" if bad else ""), flush=True)
    return rate


async def run(args: argparse.Namespace, tmp: Path) -> None:
    pkis = Pkis(tmp / "pki-down", tmp / "pki-up")
    init_dev_pki(pkis.down)
    init_dev_pki(pkis.up)
    up_dir = Path(tempfile.mkdtemp(prefix="bench-upstream-", dir=args.upstream_dir))
    up_port, gw_port, metrics_port = free_port(), free_port(), free_port()
    up_config = upstream_config(up_dir, pkis, up_port)
    gw_config = gateway_config(tmp, pkis, gw_port, [f"127.0.0.1:{up_port}"],
                               extra=f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    try:
        with serving("server", up_config, up_dir / "server.log"):
            with gateway_process(args.gateway_code or ROOT, gw_config, tmp / "gateway.log"):
                await load(args, pkis, gw_port, metrics_port, tmp)
    finally:
        shutil.rmtree(up_dir, ignore_errors=True)


@contextlib.contextmanager
def gateway_process(code: Path, config: Path, log: Path) -> Iterator[None]:
    """``dots-gateway run`` from the checkout ``code`` (its directory and PYTHONPATH: the
    package is installed editable from elsewhere)."""
    with open(log, "a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
            cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("dots-gateway serving"):
            raise RuntimeError(f"the gateway did not start: {log.read_text()[-2000:]}")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def load(args: argparse.Namespace, pkis: Pkis, port: int, metrics_port: int,
               tmp: Path) -> None:
    prefixes = [f"2001:db8:{i:x}::/48" for i in range(args.concurrency)]  # configured
    async with DotsClient(pkis.client(), f"coaps://127.0.0.1:{port}", state_dir=tmp / "client",
                          request_timeout=30, preferred_idle=FAST,
                          preferred_mitigating=FAST) as client:
        scopes = [make_scope(target_prefix=[p], lifetime=600) for p in prefixes]
        deadline = time.monotonic() + 20
        while True:  # the gateway's upstream session comes up after its start
            first = await client.mitigate(scopes[0])
            if first.code is Code.CREATED or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert first.code is Code.CREATED, first
        await client.withdraw(first.mid)
        saves0, fsyncs0 = relay_counters(metrics_port)
        mids: list[int] = []

        async def create(scope: object) -> object:
            reply = await client.mitigate(scope)  # type: ignore[arg-type]
            mids.append(reply.mid)
            return reply

        await phase("create", [lambda s=s: create(s) for s in scopes], Code.CREATED)
        by_mid = dict(zip(sorted(mids), scopes, strict=True))
        refresh = [lambda m=m, s=s: client.refresh(m, s) for m, s in by_mid.items()]
        await phase("refresh", refresh, Code.CHANGED, waves=args.rounds)
        await phase("delete", [lambda m=m: client.withdraw(m) for m in by_mid], Code.DELETED)
        saves, fsyncs = relay_counters(metrics_port)
        print(f"relay database: {saves - saves0:.0f} saves, {fsyncs - fsyncs0:.0f} fsyncs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32, choices=range(1, 61),
                        metavar="1..60")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--gateway-code", type=Path, default=None)
    # On tmpfs by default the upstream's own fsyncs cost nothing: it stands for a server on
    # another machine, and the gateway's saves are what is measured (its state stays on the
    # temporary directory's disk).
    parser.add_argument("--upstream-dir", type=Path,
                        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-relay-commit-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
