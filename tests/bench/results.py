"""RESULTS.md is a set of sections, one per benchmark script; each run replaces its own."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path


def machine_lines() -> list[str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    mem_kib = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                    if ln.startswith("MemTotal:")), 0)
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} cores ({cpu}), {mem_kib // 1024 // 1024} GiB, "
        f"{platform.platform()}, Python {platform.python_version()}",
    ]


def update_section(path: Path, title: str, body: list[str]) -> None:
    """Replace (or append) the section headed ``## title`` in ``path``."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    sections = text.split("\n## ")
    head, rest = sections[0], sections[1:]
    rest = [s for s in rest if not s.startswith(title)]
    rest.append("\n".join([title, "", *body]).rstrip("\n") + "\n")
    path.write_text(head.rstrip("\n") + "\n\n## " + "\n## ".join(r.rstrip("\n") + "\n"
                                                                for r in rest))
