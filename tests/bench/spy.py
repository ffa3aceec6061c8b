"""Where a daemon's time goes, from py-spy samples: each sample is put in the bucket of the
deepest frame that names one (a row's SQLite work counts under the save, its CBOR encoding
under CBOR), so the shares add up to 100%. py-spy counts a thread blocked in a system call
such as fsync as busy: the fsync bucket is time waited on the disk, not CPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

#: (bucket, substrings of a frame "function (file:line)"), looked for from the leaf up.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fsync of the WAL (waiting on the disk)", ("fsync_wal ",)),
    ("CBOR encode/decode", ("gateway/dots/codec.py", "cbor2")),
    ("SQLite save (transaction, rows)", ("gateway/server/persistence.py",
                                        "gateway/server/mitigation_rows.py")),
    ("mitigator backend (log: a JSON line per apply/withdraw)", ("gateway/server/mitigator.py",)),
    ("DTLS handshakes (workers)", ("HandshakeWorkers", "_handshake_job",
                                   "gateway/transport/secure_session.py")),
    ("DTLS records (seal/open)", ("gateway/transport/dtls_records.py",)),
    ("sockets (recvmsg/sendto)", ("gateway/transport/udp.py",)),
    ("CoAP message layers", ("gateway/coap/",)),
    ("DOTS core (validation, store, conflicts)", ("gateway/dots/",)),
    ("gateway relay (relay table, upstream sessions)", ("gateway/relay/",)),
    ("anycast (address classification, health)", ("anycast/",)),
    ("server role, sessions, transport glue", ("gateway/server/", "gateway/transport/")),
    ("metrics and logging", ("gateway/ops/", "logging/")),
    ("event loop, select", ("asyncio/", "selectors.py")),
)
OTHER = "other (imports at start, interpreter)"


def py_spy() -> str | None:
    """The py-spy beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` for ``seconds`` (collapsed stacks to ``out``); None without
    py-spy. Non-blocking: the daemon is never stopped, so its timing is barely touched."""
    binary = py_spy()
    if binary is None:
        return None
    out.unlink(missing_ok=True)  # a failed run must not leave an earlier window's samples
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--nonblocking", "--rate",
                             "200", "--format", "raw", "--output", str(out), "--duration",
                             str(max(1, round(seconds)))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def buckets(raw: str) -> tuple[int, Counter[str]]:
    """Samples in all and per bucket, from py-spy's raw (collapsed stack) output."""
    total, found = 0, Counter[str]()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        frames = stack.split(";")
        found[next((name for frame in reversed(frames) for name, keys in BUCKETS
                    if any(k in frame for k in keys)), OTHER)] += int(count)
    return total, found
