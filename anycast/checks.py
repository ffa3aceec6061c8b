"""The health checks behind the anycast announcement; one verdict per round.

A node is healthy when every check passes: its transports are listening, it has room for
more sessions, it can serve (terminal mode, or at least one healthy upstream: a callable the
daemon supplies), its anycast addresses are in place, and the operator's optional command
exits 0 within its timeout. Each check is an async callable returning a ``CheckResult``; an
exception inside one counts as a failure, so a broken check withdraws rather than leaving a
sick node announced.

The command runs without a shell (``shlex`` words), stdin and stdout closed, in its own
process group, which is killed when the timeout passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


Check = Callable[[], Awaitable[CheckResult]]


def predicate_check(name: str, test: Callable[[], bool | tuple[bool, str]]) -> Check:
    """A check from a synchronous predicate (``True`` or ``(ok, detail)``)."""

    async def check() -> CheckResult:
        verdict = test()
        ok, detail = verdict if isinstance(verdict, tuple) else (verdict, "")
        return CheckResult(name, bool(ok), detail)

    return check


def capacity_check(sessions: Callable[[], int], capacity: int) -> Check:
    """Fails when the node holds ``capacity`` sessions: new clients belong elsewhere."""

    def test() -> tuple[bool, str]:
        count = sessions()
        return count < capacity, f"{count} of {capacity} sessions"

    return predicate_check("capacity", test)


def upstream_check(terminal: bool, healthy_upstreams: Callable[[], int] | None) -> Check:
    """Terminal mode serves by itself; a relay needs at least one healthy upstream."""

    def test() -> tuple[bool, str]:
        if terminal:
            return True, "terminal mode"
        count = healthy_upstreams() if healthy_upstreams is not None else 0
        return count > 0, f"{count} healthy upstream servers"

    return predicate_check("upstream", test)


def command_check(command: str, timeout: float) -> Check:
    """The operator's command: exit status 0 within ``timeout`` seconds means healthy."""
    argv = shlex.split(command)

    async def check() -> CheckResult:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return CheckResult("command", False, f"cannot run {argv[0]!r}: {exc.strerror}")
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own group: children too
            await process.wait()
            return CheckResult("command", False, f"timed out after {timeout:g} s")
        if process.returncode == 0:
            return CheckResult("command", True)
        text = stderr.decode(errors="replace").strip().splitlines()
        return CheckResult("command", False, f"exit status {process.returncode}"
                           + (f": {text[-1][:200]}" if text else ""))

    return check


async def run_checks(checks: Sequence[Check]) -> list[CheckResult]:
    """Run every check concurrently; an exception is a failed check, never a crash."""
    outcomes = await asyncio.gather(*(check() for check in checks), return_exceptions=True)
    results = []
    for check, outcome in zip(checks, outcomes, strict=True):
        if isinstance(outcome, CheckResult):
            results.append(outcome)
        elif isinstance(outcome, Exception):
            name = getattr(check, "__qualname__", "check")
            log.error("anycast health check %s raised %r", name, outcome)
            results.append(CheckResult(name, False, f"raised {outcome!r}"))
        else:
            raise outcome  # CancelledError and friends
    return results
