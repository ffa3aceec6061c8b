"""Mitigator backends: what happens to the store's ``ApplyMitigation`` / ``UpdateFilters`` /
``WithdrawMitigation``.

The store decides *that* a scope is to be mitigated; a backend makes it so, or records it.
``log`` appends one JSON object per command to ``<state_dir>/mitigations.jsonl``;
``command`` runs the operator's script once per command with the JSON object on stdin and
reads status reports from its stdout. Both take a command from the role's event loop and
return at once; neither raises into the role. Status reports go back through the
``on_status`` callback the role provides (it calls ``MitigationStore.update_status``): this
module does not touch the store, and the pure core does not import this module.

The JSON object, one line::

    {"action": "apply", "cuid": "...", "mid": 123,
     "scope": {"target-prefix": ["192.0.2.0/24"], "lifetime": 3600, ...},
     "acls": [{"name": "drop-udp", "activation-type": "immediate", "aces": {...}, ...}],
     "reason": null, "timestamp": "2024-05-01T12:00:00.000Z"}

``scope`` is the request's scope entry in the RFC 9132 JSON notation (RFC 7951 names). A
request or efficacy update that carries RFC 9244 telemetry (§8.1 attributes: total traffic,
total attack traffic and connections, attack details with top talkers) adds ``telemetry``
with those attributes by their JSON names; a refresh or efficacy update of an active
request that carries some is a command of its own, ``"action": "telemetry"`` (with
``attack-status`` when the update had one): a script that only mitigates can ignore it. A
withdraw carries the ``reason`` (the store's trigger, e.g. ``withdrawn``,
``lifetime-expired``) and the scope this backend applied, or null when it did not apply it
in this process (a request that expired while the gateway was down). Scripts should key
their state on (cuid, mid): two requests may cover the same targets.

``acls`` are the filtering rules active for the mitigation (RFC 9133: named in its
``acl-list`` with activation type ``immediate`` or ``activate-when-mitigating``), each the
ACL's RFC 8783 JSON from the data channel with the activation type in force. An ``update``
(action) says an active mitigation's ACLs changed (a PUT activated or deactivated some):
``acls`` are the ones active now and ``deactivated-acls`` the names no longer active. A
withdraw carries the ACLs this backend last applied for the request (to be removed).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import shlex
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from gateway.config import Backend, ConfigError, Settings
from gateway.dots.codec import message_to_json
from gateway.dots.codes import Status
from gateway.dots.filters import ActiveAcl
from gateway.dots.keys import MODULE
from gateway.dots.mitigation_lifecycle import (
    ApplyMitigation,
    Counters,
    MitigationTelemetry,
    UpdateFilters,
    WithdrawMitigation,
)
from gateway.dots.model import Extensions, MitigationScope, Scope
from gateway.dots.telemetry import scope_telemetry, scope_telemetry_json
from gateway.eventlog import log_event

log = logging.getLogger(__name__)

MitigatorCommand = ApplyMitigation | UpdateFilters | WithdrawMitigation | MitigationTelemetry
#: ``on_status(cuid, mid, status, counters)``; counters None: the report carried none.
StatusCallback = Callable[[str, int, Status, Counters | None], None]

JOURNAL_NAME = "mitigations.jsonl"
DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT = 30.0
#: What a script may report (RFC 9132 Table 3: statuses 1-4 come from the mitigator; the
#: others are the server's own).
MITIGATOR_STATUSES = frozenset({
    Status.ATTACK_MITIGATION_IN_PROGRESS,
    Status.ATTACK_SUCCESSFULLY_MITIGATED,
    Status.ATTACK_STOPPED,
    Status.ATTACK_EXCEEDED_CAPABILITY,
})
_COUNTERS = {
    "bytes-dropped": "bytes_dropped",
    "bps-dropped": "bps_dropped",
    "pkts-dropped": "pkts_dropped",
    "pps-dropped": "pps_dropped",
}
_REPORT_KEYS = frozenset({"cuid", "mid", "status", *_COUNTERS})
_UINT64_MAX = 2**64 - 1
#: Per run: lines beyond these are read (so the script is not blocked) but not used.
_MAX_STATUS_LINES = 1000
_MAX_STDERR_LINES = 50
_LINE_LIMIT = 64 * 1024


class Mitigator(Protocol):
    """What the role calls for each command. ``__call__`` returns at once and never raises;
    ``aclose`` finishes the work in flight at shutdown."""

    def __call__(self, command: MitigatorCommand) -> None: ...

    async def aclose(self) -> None: ...


@dataclass
class MitigatorStats:
    commands: int = 0
    #: Commands whose handling failed: journal not written; script not started, exited
    #: non-zero, killed on timeout.
    failures: int = 0
    timeouts: int = 0
    status_reports: int = 0  # status lines handed to on_status
    bad_reports: int = 0  # status lines that were not a valid report (ignored)


class _Backend:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.stats = MitigatorStats()
        #: Scopes and ACLs applied in this process, so a withdraw can say what it withdraws.
        self._applied: dict[tuple[str, int], tuple[Scope, tuple[ActiveAcl, ...]]] = {}
        #: The JSON of each applied scope, made once (a withdraw names the scope its apply
        #: did: the same object): key -> (scope, its JSON). Never mutated once made.
        self._scope_json: dict[tuple[str, int], tuple[Scope, dict[str, Any]]] = {}

    def describe(self, command: MitigatorCommand) -> dict[str, Any]:
        """The command as the JSON object both backends hand out."""
        key = (command.cuid, command.mid)
        scope: Scope | None
        acls: tuple[ActiveAcl, ...] = ()
        telemetry: Extensions = ()
        extra: dict[str, Any] = {}
        if isinstance(command, ApplyMitigation):
            self._applied[key] = (command.scope, command.acls)
            action, scope, acls, reason = "apply", command.scope, command.acls, None
            telemetry = command.scope.extensions
        elif isinstance(command, UpdateFilters):
            _, before = self._applied.get(key, (command.scope, ()))
            self._applied[key] = (command.scope, command.acls)
            action, scope, acls, reason = "update", command.scope, command.acls, None
            now_active = {a.acl_name for a in acls}
            extra["deactivated-acls"] = sorted({a.acl_name for a in before} - now_active)
        elif isinstance(command, MitigationTelemetry):
            scope, acls = self._applied.get(key, (None, ()))
            action, reason = "telemetry", None
            telemetry = command.telemetry
            if command.attack_status is not None:
                extra["attack-status"] = command.attack_status.label
        else:
            scope, acls = self._applied.pop(key, (None, ()))
            action, reason = "withdraw", command.reason.value
        scope_json = None if scope is None else self._json_of(key, scope)
        if action == "withdraw":
            self._scope_json.pop(key, None)
        entry = {
            "action": action,
            "cuid": command.cuid,
            "mid": command.mid,
            "scope": scope_json,
            "acls": [acl.to_json() for acl in acls],
            **extra,
            "reason": reason,
            "timestamp": _timestamp(self.clock()),
        }
        if scope_telemetry(telemetry):
            # RFC 9244 §8, §9.1: total-traffic, total-attack-traffic, total-attack-connection
            # and attack-detail (top talkers) as the client sent them, in the RFC's JSON.
            entry["telemetry"] = scope_telemetry_json(telemetry)
        return entry

    def _json_of(self, key: tuple[str, int], scope: Scope) -> dict[str, Any]:
        cached = self._scope_json.get(key)
        if cached is not None and cached[0] is scope:  # frozen: the same object, same JSON
            return cached[1]
        made = scope_to_json(scope)
        self._scope_json[key] = (scope, made)
        return made


def scope_to_json(scope: Scope) -> dict[str, Any]:
    """One scope entry in the RFC 9132 JSON notation (``"target-prefix"``, ``"lifetime"``...)."""
    tree = message_to_json(MitigationScope((scope,)))
    entry: dict[str, Any] = tree[f"{MODULE}:mitigation-scope"]["scope"][0]
    return entry


def _timestamp(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- log -----------------------------------------------------------------------------------------


class LogMitigator(_Backend):
    """Appends each command to a JSON-lines journal and logs it; mitigates nothing itself.

    The file stays open between commands (opening it per line cost ~30 us of the ~50 us a
    command took, issue 21) and is not fsynced: it is a record for operators and tests, not
    the state (that is ``dots.sqlite``). Rotation needs no signal: before each line the
    path's (device, inode) is compared with the open file's (one ``stat``), and a journal
    moved or removed (logrotate's move + create, or none) is closed and the path opened
    anew, so no line goes to the old file after the rotation. ``copytruncate`` needs
    nothing: the file is opened for appending, so lines go to the end of the truncated file.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.path = path
        self._journal: TextIO | None = None
        self._identity: tuple[int, int] | None = None  # the open file's (device, inode)

    def __call__(self, command: MitigatorCommand) -> None:
        self.stats.commands += 1
        entry = self.describe(command)
        log_event(log, logging.INFO, "mitigator.command", f"mitigator {entry['action']}",
                  action=entry["action"], cuid=command.cuid, mid=command.mid,
                  reason=entry["reason"] or None)
        try:
            journal = self._current()
            journal.write(json.dumps(entry, separators=(",", ":"), default=str) + "\n")
            journal.flush()  # whole lines in the file as they happen, for tail -f and tests
        except OSError as exc:
            self.stats.failures += 1
            self._close()  # reopened with the next command: writes resume by themselves
            log.error("mitigator journal %s not written: %s", self.path, exc.strerror or exc)

    def _current(self) -> TextIO:
        """The journal open at ``path`` now: the open one unless the path names another file
        or none (rotated, removed). Raises ``OSError``."""
        if self._journal is not None:
            try:
                stat = os.stat(self.path)
                if (stat.st_dev, stat.st_ino) == self._identity:
                    return self._journal
            except FileNotFoundError:
                pass  # moved away and not recreated: a new file at the path
            self._close()
        journal = self.path.open("a", encoding="utf-8")
        try:
            stat = os.fstat(journal.fileno())
        except OSError:
            journal.close()
            raise
        self._journal, self._identity = journal, (stat.st_dev, stat.st_ino)
        return journal

    def close(self) -> None:
        """Close the journal (the next command opens it again)."""
        self._close()

    def _close(self) -> None:
        journal, self._journal, self._identity = self._journal, None, None
        if journal is not None:
            with contextlib.suppress(OSError):  # a failed flush: the error was counted
                journal.close()

    async def aclose(self) -> None:
        self._close()


# --- command -------------------------------------------------------------------------------------


class CommandMitigator(_Backend):
    """Runs ``argv`` once per command: the JSON object on stdin, status lines on stdout.

    At most ``concurrency`` scripts run at once; commands for the same (cuid, mid) run in
    the order they were given (a withdraw never overtakes its apply). A script that runs
    longer than ``timeout`` seconds is killed with its process group (it runs in a session
    of its own). Each stdout line that is a JSON object like
    ``{"cuid": ..., "mid": ..., "status": "attack-successfully-mitigated",
    "bytes-dropped": 123}`` (cuid and mid default to the command's; status is a label or
    the number, 1-4; counters are the four ``*-dropped`` leaves) goes to ``on_status``.
    stderr lines are logged. A failure is logged with its exit status and counted.
    """

    def __init__(self, argv: Sequence[str], on_status: StatusCallback, *,
                 concurrency: int = DEFAULT_CONCURRENCY, timeout: float = DEFAULT_TIMEOUT,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        if not argv:
            raise ValueError("the mitigator command is empty")
        if concurrency < 1 or timeout <= 0:
            raise ValueError("concurrency and timeout must be positive")
        self.argv = tuple(argv)
        self.on_status = on_status
        self.concurrency = concurrency
        self.timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)
        #: The last run queued per (cuid, mid): the next one for that key waits for it.
        self._tails: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, command: MitigatorCommand) -> None:
        self.stats.commands += 1
        entry = self.describe(command)
        key = (command.cuid, command.mid)
        task = asyncio.get_running_loop().create_task(self._run(entry, self._tails.get(key)))
        self._tails[key] = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(key, t))

    async def aclose(self) -> None:
        """Let running scripts finish (each is bounded by ``timeout``), then return."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _finished(self, key: tuple[str, int], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.stats.failures += 1
            log.error("mitigator command cuid=%s mid=%d: internal error", key[0], key[1],
                      exc_info=exc)

    async def _run(self, entry: dict[str, Any], previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # order per request; how it ended does not matter
        async with self._slots:
            await self._execute(entry)

    async def _execute(self, entry: dict[str, Any]) -> None:
        what = f"{entry['action']} cuid={entry['cuid']} mid={entry['mid']}"
        fields = {"action": entry["action"], "cuid": entry["cuid"], "mid": entry["mid"]}
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=_LINE_LIMIT)
        except OSError as exc:
            self.stats.failures += 1
            log_event(log, logging.ERROR, "mitigator.failed", "mitigator command could not "
                      "start", **fields, reason=f"{self.argv[0]}: {exc.strerror or exc}")
            return
        payload = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        try:
            await asyncio.wait_for(self._converse(proc, payload, entry, what), self.timeout)
        except TimeoutError:
            self.stats.timeouts += 1
            self.stats.failures += 1
            log_event(log, logging.ERROR, "mitigator.failed", f"mitigator command still "
                      f"running after {self.timeout:g} s: killed", **fields,
                      reason="timeout", pid=proc.pid)
            return
        finally:
            if proc.returncode is None:  # timed out, or we are being cancelled
                await _kill(proc)
        if proc.returncode == 0:
            log_event(log, logging.INFO, "mitigator.command", "mitigator command done",
                      **fields, seconds=round(time.monotonic() - started, 3))
        else:
            self.stats.failures += 1
            log_event(log, logging.ERROR, "mitigator.failed", "mitigator command failed",
                      **fields, exit_status=proc.returncode,
                      reason="killed by a signal" if (proc.returncode or 0) < 0 else None)

    async def _converse(self, proc: asyncio.subprocess.Process, payload: bytes,
                        entry: dict[str, Any], what: str) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        await asyncio.gather(
            _feed(proc.stdin, payload),
            self._read_reports(proc.stdout, entry),
            _log_stderr(proc.stderr, what),
        )
        await proc.wait()

    async def _read_reports(self, stream: asyncio.StreamReader, entry: dict[str, Any]) -> None:
        seen = 0
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than the limit; the rest of it is read as a line
                self.stats.bad_reports += 1
                log.warning("mitigator command: status line longer than %d bytes ignored",
                            _LINE_LIMIT)
                continue
            if not line:
                return
            text = line.decode("utf-8", "replace").strip()
            if not text:
                continue
            seen += 1
            if seen > _MAX_STATUS_LINES:
                if seen == _MAX_STATUS_LINES + 1:
                    log.warning("mitigator command: more than %d status lines; the rest are "
                                "ignored", _MAX_STATUS_LINES)
                continue
            self._report(text, entry)

    def _report(self, text: str, entry: dict[str, Any]) -> None:
        try:
            cuid, mid, status, counters = parse_status_report(text, entry["cuid"], entry["mid"])
        except ValueError as exc:
            self.stats.bad_reports += 1
            log.warning("mitigator command: status line ignored (%s): %.200s", exc, text)
            return
        try:
            self.on_status(cuid, mid, status, counters)
        except Exception:  # the role's bug must not stop reading the script
            log.exception("mitigator status cuid=%s mid=%d %s not applied", cuid, mid,
                          status.label)
            return
        self.stats.status_reports += 1


def parse_status_report(text: str, cuid: str, mid: int) -> tuple[str, int, Status,
                                                                   Counters | None]:
    """One stdout line -> (cuid, mid, status, counters or None); ValueError says what is
    wrong. ``cuid``/``mid``: the command's, used when the line leaves them out."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    unknown = sorted(set(data) - _REPORT_KEYS)
    if unknown:
        raise ValueError(f"unknown keys {', '.join(map(repr, unknown))} (known: "
                         f"{', '.join(sorted(_REPORT_KEYS))})")
    cuid = data.get("cuid", cuid)
    mid = data.get("mid", mid)
    if not isinstance(cuid, str) or not cuid:
        raise ValueError("cuid is not a non-empty string")
    if not _is_uint(mid, 2**32 - 1):
        raise ValueError("mid is not a uint32")
    if "status" not in data:
        raise ValueError("no status")
    status = _status(data["status"])
    counters = None
    if any(name in data for name in _COUNTERS):
        values = {}
        for name, attr in _COUNTERS.items():
            value = data.get(name)
            if value is not None and not _is_uint(value, _UINT64_MAX):
                raise ValueError(f"{name} is not a counter64")
            values[attr] = value
        counters = Counters(**values)
    return cuid, mid, status, counters


def _status(value: Any) -> Status:
    try:
        if isinstance(value, str):
            status = Status.from_label(value)
        elif _is_uint(value, 255):
            status = Status(value)
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"status {value!r} is not a status label or number") from None
    if status not in MITIGATOR_STATUSES:
        raise ValueError(f"status {status.label} is the server's to set; a mitigator reports "
                         "1-4 (RFC 9132 Table 3)")
    assert isinstance(status, Status)
    return status


def _is_uint(value: Any, maximum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum


async def _feed(stdin: asyncio.StreamWriter, payload: bytes) -> None:
    try:
        stdin.write(payload)
        await stdin.drain()
        stdin.close()
        await stdin.wait_closed()
    except (BrokenPipeError, ConnectionResetError):
        pass  # a script that does not read its stdin is allowed


async def _log_stderr(stream: asyncio.StreamReader, what: str) -> None:
    count = 0
    while True:
        try:
            line = await stream.readline()
        except ValueError:
            continue
        if not line:
            return
        count += 1
        if count <= _MAX_STDERR_LINES:
            log.warning("mitigator command stderr (%s): %s", what,
                        line.decode("utf-8", "replace").rstrip())


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the script's process group (its children too), reap it, drain its pipes."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdin is not None:
        proc.stdin.close()
    await proc.wait()
    # The pipes close once the whole group is gone; reading them to the end lets their
    # transports close now rather than at garbage collection.
    with contextlib.suppress(TimeoutError, ValueError):
        await asyncio.wait_for(proc.communicate(), 5.0)


# --- building ------------------------------------------------------------------------------------


def build_mitigator(settings: Settings, on_status: StatusCallback) -> Mitigator:
    """The backend ``[mitigation] backend`` names. ``on_status`` is used by ``command``."""
    m = settings.mitigation
    if m.backend is Backend.COMMAND:
        try:
            argv = shlex.split(m.command)
        except ValueError as exc:
            raise ConfigError("mitigation.command", f"cannot be split into words: {exc}",
                              source=settings.source) from None
        if not argv:
            raise ConfigError("mitigation.command", "is empty", source=settings.source)
        return CommandMitigator(argv, on_status)
    return LogMitigator(settings.general.state_dir / JOURNAL_NAME)
