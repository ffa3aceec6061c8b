"""What the demo saw, as it happened: the narrated steps and periodic samples of routes,
sessions and mitigations (for the picture).

Narration: one line per step on the terminal, ``HH:MM:SS.mmm +SECONDS STEP what and why``,
also kept in ``timeline.txt``. Samples: a thread asks, every ``SAMPLE_INTERVAL``, the router
which edge it forwards the anycast address to (``ip route``) and every running daemon for its
sessions and mitigations over its control socket (a Unix socket: reachable from outside the
namespaces, no process per sample).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gateway.ops import control

SAMPLE_INTERVAL = 0.25


@dataclass(frozen=True)
class Step:
    at: float  # seconds since the start
    wall: float  # time.time()
    name: str
    text: str

    def line(self) -> str:
        clock = time.strftime("%H:%M:%S", time.gmtime(self.wall))
        millis = int(self.wall * 1000) % 1000
        return f"{clock}.{millis:03d}  +{self.at:5.1f}s  {self.name:<10} {self.text}"


@dataclass(frozen=True)
class Sample:
    at: float
    #: The edge the router forwards the anycast address to, or None.
    route: str | None
    #: Per daemon: where the client's session is ("anycast", "unicast") or None.
    client_session: dict[str, str | None]
    #: Per daemon: mitigations it holds (the provider's active ones, an edge's relayed ones).
    mitigations: dict[str, int]


@dataclass
class Timeline:
    out: TextIO
    started: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def step(self, name: str, text: str) -> None:
        entry = Step(self.now(), time.time(), name, text)
        self.steps.append(entry)
        print(entry.line(), file=self.out, flush=True)

    def save(self, path: Path) -> None:
        path.write_text("".join(s.line() + "\n" for s in self.steps))


def daemon_view(socket: Path, client_addresses: tuple[str, ...],
                *, active: bool = False) -> tuple[str | None, int] | None:
    """(where the client's session is on this daemon, mitigations it holds: the active ones
    with ``active``, else all it has on record), or None when the daemon does not answer."""
    try:
        answer = control.request(socket, "status", timeout=1.0,
                                 sections=["sessions", "mitigations"])
    except control.ControlUnavailable:
        return None
    result: dict[str, Any] = answer.get("result") or {}
    where = None
    for row in (result.get("sessions") or {}).get("list", []):
        host = str(row.get("peer", "")).rpartition(":")[0].strip("[]")
        if row.get("side") == "downstream" and host in client_addresses:
            where = "anycast" if row.get("anycast") else "unicast"
    mitigations = result.get("mitigations") or {}
    return where, int(mitigations.get("active" if active else "count") or 0)


class Sampler:
    """A daemon thread that appends a ``Sample`` to the timeline until ``stop()``."""

    def __init__(self, timeline: Timeline, route: Callable[[], str | None],
                 sockets: dict[str, Path], client_addresses: tuple[str, ...],
                 active_only: set[str]) -> None:
        """``active_only``: the daemons whose active mitigations count (the provider), not
        all those on record (an edge's relayed ones)."""
        self.timeline = timeline
        self.route = route
        self.sockets = sockets
        self.client_addresses = client_addresses
        self.active_only = active_only
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.timeline.samples.append(self.sample())
            except Exception:  # noqa: BLE001 - a lost sample must not stop the story
                pass
            self._stop.wait(SAMPLE_INTERVAL)

    def sample(self) -> Sample:
        at = self.timeline.now()
        try:
            route = self.route()
        except Exception:  # noqa: BLE001 - the namespace may be gone at the end
            route = None
        sessions: dict[str, str | None] = {}
        mitigations: dict[str, int] = {}
        for name, socket in self.sockets.items():
            view = daemon_view(socket, self.client_addresses,
                               active=name in self.active_only)
            sessions[name], mitigations[name] = view if view is not None else (None, 0)
        return Sample(at, route, sessions, mitigations)
