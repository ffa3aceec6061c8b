"""The process metrics Prometheus client libraries export under their standard names
(``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_open_fds``...),
read from ``/proc`` at scrape time, so dashboards and alerts written for any exporter work.

Linux first: where ``/proc`` is missing a family has no sample rather than a wrong one (CPU
seconds and the fd limit come from ``resource`` everywhere).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from pathlib import Path

from gateway.ops.metrics import Labels, Registry

PROC = Path("/proc")


def register_process_metrics(registry: Registry, proc: Path = PROC) -> None:
    """Declare the ``process_*`` families on ``registry``, read at each scrape."""
    registry.counter("process_cpu_seconds_total",
                     "User and system CPU time of the process (all threads), in seconds."
                     ).add_source(_cpu_seconds)
    registry.gauge("process_resident_memory_bytes", "Resident set size, in bytes."
                   ).add_source(lambda: _statm(proc, 1))
    registry.gauge("process_virtual_memory_bytes", "Virtual memory size, in bytes."
                   ).add_source(lambda: _statm(proc, 0))
    registry.gauge("process_open_fds", "Open file descriptors."
                   ).add_source(lambda: _open_fds(proc))
    registry.gauge("process_max_fds", "The limit of open file descriptors (RLIMIT_NOFILE)."
                   ).add_source(_max_fds)
    start = _start_time(proc)
    registry.gauge("process_start_time_seconds",
                   "Start of the process, in seconds since the epoch."
                   ).add_source(lambda: {} if start is None else {(): start})


def _cpu_seconds() -> Mapping[Labels, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {(): usage.ru_utime + usage.ru_stime}


def _statm(proc: Path, field: int) -> Mapping[Labels, float]:
    try:
        pages = int((proc / "self" / "statm").read_text().split()[field])
    except (OSError, ValueError, IndexError):
        return {}
    return {(): float(pages * os.sysconf("SC_PAGE_SIZE"))}


def _open_fds(proc: Path) -> Mapping[Labels, float]:
    try:
        # One descriptor is the directory listing's own; the listing says so too.
        return {(): float(len(os.listdir(proc / "self" / "fd")))}
    except OSError:
        return {}


def _max_fds() -> Mapping[Labels, float]:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {} if soft == resource.RLIM_INFINITY else {(): float(soft)}


def _start_time(proc: Path) -> float | None:
    """Boot time + the process's start in clock ticks after boot (``/proc/self/stat`` field
    22), as the Prometheus clients compute it; read once."""
    try:
        stat = (proc / "self" / "stat").read_text()
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[19])  # field 22 of the line, the 20th after the name
        boot = next(float(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return round(boot + ticks / os.sysconf("SC_CLK_TCK"), 3)
