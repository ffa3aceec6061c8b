"""The state directory's disk, as the DOTS bench reports it: what file system it is and how
long an fsync of a WAL-sized append takes there (the floor under every persisted answer)."""

from __future__ import annotations

import os
import time
from pathlib import Path

#: The WAL frames of one mitigation save are a few 4 KiB pages.
FSYNC_WRITE = 8192


def fsync_latencies(directory: Path, count: int, seconds: float = 5.0) -> list[float]:
    """Milliseconds per fsync of a small append in ``directory`` (at most ``seconds``)."""
    path = directory / "fsync-sample"
    block = os.urandom(FSYNC_WRITE)
    out: list[float] = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        deadline = time.monotonic() + seconds
        while len(out) < count and time.monotonic() < deadline:
            os.write(fd, block)
            began = time.perf_counter()
            os.fsync(fd)
            out.append((time.perf_counter() - began) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return out


def fs_type(directory: Path) -> str:
    """The file system type and device of ``directory`` (from /proc/self/mounts)."""
    best = ("", "?", "?")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        device, mount, kind = line.split()[:3]
        if str(directory.resolve()).startswith(mount) and len(mount) >= len(best[0]):
            best = (mount, kind, device)
    return f"{best[1]} ({best[2]})"
