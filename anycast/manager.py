"""The anycast manager: addresses, health loop, announcement, drain; the daemon's one handle.

Order of operations (anycast-lab.md §4, confirmed there):

1. ``prepare()``: put the addresses on the holder interface (the sockets bind with
   FREEBIND, so this may come before or after listening), take the ExaBGP pipe when that is
   the backend, and *withdraw* whatever a crashed predecessor left announced.
2. The daemon starts listening.
3. ``start(checks)``: the health loop runs the checks every ``interval``; the machine in
   ``anycast.health`` decides, and the route is announced only after ``rise`` passes: the
   route is the last thing to appear.
4. On a failing check the route is withdrawn and everything else keeps running: existing
   sessions are still served on the anycast and unicast addresses.
5. ``drain()`` (SIGUSR2 from ``dots-gateway drain``, or SIGTERM): withdraw first, call the
   ``on_drain`` hooks, keep serving for ``grace`` seconds; then the daemon stops its
   endpoints and calls ``close()``, which removes the routes and the addresses.

``on_drain`` is where the daemon hooks the server role's ``start_drain``: right after the
withdrawal, every observer of a mitigation gets a 5.03 redirect to a unicast node, and every
later request is redirected too, while the grace period runs (1,000 sessions: all redirects
received within about 0.2 s; tests/bench/RESULTS.md).

The routes are changed by one writer only (this object, from the loop and the drain path),
and a failed change is retried on the next round, so the kernel/ExaBGP state converges on
what the machine decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from anycast import control
from anycast.addresses import anycast_classifier, host_prefix
from anycast.announce import AnnounceError, Announcer, ExaBgpAnnouncer, KernelTableAnnouncer
from anycast.checks import (
    Check,
    CheckResult,
    capacity_check,
    command_check,
    predicate_check,
    run_checks,
    upstream_check,
)
from anycast.health import Announce, HealthMachine, HealthPolicy, HealthState
from anycast.netlink import AddressHolder
from gateway.config import AnycastBackend, AnycastSettings, Mode, Settings
from gateway.eventlog import log_event

log = logging.getLogger(__name__)

DrainHook = Callable[[float], Awaitable[None] | None]


class AnycastManager:
    def __init__(
        self,
        settings: AnycastSettings,
        *,
        state_dir: Path,
        holder: AddressHolder,
        announcer: Announcer | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        h = settings.health
        self.settings = settings
        self.state_dir = state_dir
        self.holder = holder
        self.announcer = announcer
        self.clock = clock
        self.wall = wall
        self.machine = HealthMachine(HealthPolicy(
            rise=h.rise, fall=h.fall, hold_down=float(h.hold_down),
            max_hold_down=float(h.max_hold_down), half_life=float(h.half_life)))
        self.interval = float(h.interval)
        self.grace = float(settings.grace)
        self.is_anycast = anycast_classifier(settings.addresses)
        #: Called with the grace deadline (monotonic) right after the drain withdrawal.
        self.on_drain: list[DrainHook] = []
        #: Sessions on (anycast, unicast) addresses, for the state file; the daemon sets it.
        self.session_split: Callable[[], tuple[int, int]] | None = None
        self.checks: list[Check] = []
        self.last_results: list[CheckResult] = []
        self._want = False  # what the machine decided
        self._told: bool | None = None  # what the routing side was last told (None: nothing)
        self._task: asyncio.Task[None] | None = None
        self._last_state: dict[str, Any] = {}
        self._failing: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> AnycastManager:
        a = settings.anycast
        kernel_table = a.backend is AnycastBackend.KERNEL_TABLE
        holder = AddressHolder(a.interface, a.interface_kind.value, a.addresses,
                               table=a.table if kernel_table else None,
                               reconcile_interval=max(1.0, 5 * float(a.health.interval)))
        return cls(a, state_dir=settings.general.state_dir, holder=holder,
                   announcer=KernelTableAnnouncer(holder) if kernel_table else None)

    # --- lifecycle ---------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Addresses up, announcement cleared; raises HolderError / AnnounceError."""
        await self.holder.start()
        try:
            if self.announcer is None:  # exabgp: our stdout becomes its command pipe
                self.announcer = ExaBgpAnnouncer.from_stdio(self.settings.addresses)
            await self._sync(reason="start-up: nothing is announced before the checks pass")
            if self._told is not False:
                raise AnnounceError("could not clear the announcement at start-up")
            control.write_pid_file(self.state_dir)
        except BaseException:
            await self.holder.close()
            raise
        log.info("anycast ready: %s on %s (%s backend), announced after %d passed checks",
                 " ".join(host_prefix(a) for a in self.settings.addresses),
                 self.holder.interface, self.announcer.name, self.machine.policy.rise)
        self._write_state()

    def start(self, checks: Iterable[Check]) -> None:
        """Run the health loop with ``checks`` plus the address and command checks."""
        self.checks = [*checks, predicate_check("addresses", self._addresses_ok)]
        if self.settings.health.command:
            self.checks.append(command_check(self.settings.health.command,
                                             float(self.settings.health.command_timeout)))
        self._task = asyncio.create_task(self._run(), name="anycast-health")

    async def drain(self, interrupted: asyncio.Event | None = None) -> None:
        """Withdraw, run the on_drain hooks, keep serving for the grace period (cut short
        when ``interrupted`` is set). Calling it while draining does nothing."""
        if self.machine.state is HealthState.DRAINING:
            return
        self.machine.drain(self.clock())
        self._want = False
        await self._sync(reason="drain")
        deadline = self.clock() + self.grace
        log_event(log, logging.INFO, "anycast.drain", "anycast drain: route withdrawn; serving "
                  "existing sessions until the grace period ends", grace=self.grace)
        self._write_state()
        for hook in list(self.on_drain):
            try:
                result = hook(deadline)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_drain hook %r failed", hook)
        remaining = max(0.0, deadline - self.clock())
        if interrupted is None:
            await asyncio.sleep(remaining)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(interrupted.wait(), remaining)
            log.info("anycast drain cut short: stopping now")

    async def close(self) -> None:
        """Stop checking, withdraw, remove the addresses; the pid file goes last."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._want = False
        if self.machine.state is not HealthState.DRAINING:
            self.machine.drain(self.clock())
        await self._sync(reason="shutdown")
        if self.announcer is not None:
            await self.announcer.close()
        await self.holder.close()
        self._write_state(stopped=True)
        control.remove_pid_file(self.state_dir)

    # --- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        next_at = self.clock()
        while True:
            results = await run_checks(self.checks)
            self.last_results = results
            ok = all(r.ok for r in results)
            self._log_changes(results)
            command = self.machine.observe(ok, self.clock())
            if command is not None:
                self._want = isinstance(command, Announce)
                log.debug("anycast %s: %s", "announce" if self._want else "withdraw",
                          command.reason)  # anycast.route follows once it is done
            await self._sync(reason=command.reason if command is not None else "retry")
            self._write_state()
            next_at = max(next_at + self.interval, self.clock())
            await asyncio.sleep(next_at - self.clock())

    async def _sync(self, *, reason: str) -> None:
        """Tell the routing side what the machine decided, if it was not told yet."""
        if self._told is self._want or self.announcer is None:
            return
        try:
            if self._want:
                await self.announcer.announce()
            else:
                await self.announcer.withdraw()
        except Exception as exc:  # HolderError, AnnounceError, netlink/OS errors alike
            log_event(log, logging.ERROR, "anycast.route_failed", "anycast route change "
                      "failed; retrying with the next check",
                      action="announce" if self._want else "withdraw", reason=reason,
                      error=str(exc))
            return
        self._told = self._want
        log_event(log, logging.INFO, "anycast.route", "anycast route changed",
                  action="announced" if self._want else "withdrawn", reason=reason)

    def _addresses_ok(self) -> tuple[bool, str]:
        return self.holder.healthy, ("in place" if self.holder.healthy else
                                     f"cannot keep them on {self.holder.interface}")

    def _log_changes(self, results: list[CheckResult]) -> None:
        failing = tuple(f"{r.name}: {r.detail}" if r.detail else r.name
                        for r in results if not r.ok)
        if failing != self._failing:
            if failing:
                log_event(log, logging.WARNING, "anycast.check_failed", "anycast health check "
                          "failed", checks="; ".join(failing))
            else:
                log_event(log, logging.INFO, "anycast.checks_passed", "anycast health checks "
                          "pass again")
            self._failing = failing

    # --- the state file ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            **self.machine.snapshot(self.clock()),
            "route": {True: "announced", False: "withdrawn", None: "unknown"}[self._told],
            "backend": self.announcer.name if self.announcer else str(self.settings.backend),
            "addresses": [host_prefix(a) for a in self.settings.addresses],
            "interface": self.holder.interface,
            "address_repairs": self.holder.repairs,
            "checks": [{"name": r.name, "ok": r.ok, "detail": r.detail}
                       for r in self.last_results],
        }
        if self.session_split is not None:
            on_anycast, on_unicast = self.session_split()
            state["sessions"] = {"anycast": on_anycast, "unicast": on_unicast}
        return state

    def _write_state(self, *, stopped: bool = False) -> None:
        state = self.snapshot()
        if stopped:
            state["state"] = "stopped"
        if state == self._last_state:
            return
        self._last_state = state
        try:
            control.write_state(self.state_dir, {**state, "updated": round(self.wall(), 3)})
        except OSError as exc:
            log.warning("cannot write the anycast state file: %s", exc)


def server_checks(server: Any, settings: Settings,
                  healthy_upstreams: Callable[[], int] | None = None) -> list[Check]:
    """The daemon's checks for a running server (``gateway.daemon.RunningServer``): every
    anycast address is listened on by every configured transport, there is room for one
    more session, and the node can serve (terminal mode: always; a relay: an upstream)."""
    addresses = settings.anycast.addresses

    def listening() -> tuple[bool, str]:
        missing = []
        for name, endpoint in (("udp", server.dtls), ("tcp", server.tls)):
            if endpoint is None:
                continue
            try:
                bound = {a.host for a in endpoint.bound}
            except OSError:
                bound = set()
            for address in addresses:
                wildcard = "0.0.0.0" if address.version == 4 else "::"
                if str(address) not in bound and wildcard not in bound:
                    missing.append(f"{name} {address}")
        return not missing, ("not listening: " + ", ".join(missing)) if missing else ""

    def sessions() -> int:
        counts = [len(server.dtls.sessions) if server.dtls is not None else 0,
                  len(server.tls.connections) if server.tls is not None else 0]
        return max(counts)

    terminal = settings.general.mode is Mode.TERMINAL or healthy_upstreams is None
    return [predicate_check("listening", listening),
            capacity_check(sessions, settings.limits.max_sessions),
            upstream_check(terminal, healthy_upstreams)]


def session_split(server: Any, is_anycast: Callable[[object], bool]) -> tuple[int, int]:
    """(sessions on anycast addresses, sessions on unicast ones) of the server role."""
    on_anycast = sum(1 for s in server.role.sessions.values() if is_anycast(s.conn.local))
    return on_anycast, len(server.role.sessions) - on_anycast
