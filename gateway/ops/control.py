"""The daemon's local control socket: ``dots-gateway status`` and operator actions.

A Unix stream socket (``control.socket``, default ``<state_dir>/control.sock``, mode 0600,
peers of another uid refused) carrying one JSON request per line and one JSON response per
line::

    {"command": "status"}                       -> {"ok": true, "command": "status",
                                                    "result": {"sessions": {...}, ...}}
    {"command": "status", "sections": ["sessions"]}
    {"command": "reload"}                       -> {"ok": true, "command": "reload", ...}
    {"command": "reconnect", "upstream": "up0"} -> {"ok": true, ...} (gateway mode)
    anything else                               -> {"ok": false, "error": "..."}

What there is to report and do comes from providers the daemon registers in
``ControlProviders``: ``status_sections`` (name -> callable returning JSON-able data) and
``actions`` (name -> callable, possibly async). The gateway relay adds its ``upstreams``
section and its own actions there without touching this module. ``status`` and ``help`` are
built in.

The socket file is the daemon's lock on its state directory: a live daemon answering on it
makes a second one refuse to start; a file nobody answers on is a crashed daemon's and is
replaced. Requests are bounded in size, clients in number and time; bad input gets an
error line, never a crash. ``request()`` is the blocking client the CLI uses.

This module knows nothing of the roles; ``gateway.daemon`` registers the providers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import inspect
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.ops.stream_clients import ClientTasks, close_writer
from gateway.transport.udp import PortInUse

log = logging.getLogger(__name__)

#: Bytes of one request line at most (a request is a few dozen bytes).
MAX_REQUEST = 16 * 1024
#: Control clients served at once; more get a "busy" line and are closed.
MAX_CLIENTS = 8
#: Seconds a connected client may stay silent before it is closed.
IDLE_TIMEOUT = 30.0
#: Seconds an action (or a status section) may take before the client gets an error.
ACTION_TIMEOUT = 30.0
#: Requests on one connection; a status poller reconnects after that many.
MAX_REQUESTS_PER_CONNECTION = 1000
#: Bytes of one response the client reads at most (a status with 20,000 sessions is ~5 MB).
MAX_RESPONSE = 64 * 1024 * 1024

Provider = Callable[..., object]


@dataclass
class ControlProviders:
    """What the control socket reports and does. Register before or after the server
    starts; a ``status`` reads the dicts as they are at that moment."""

    #: ``status`` result sections: name -> callable returning JSON-able data.
    status_sections: dict[str, Provider] = field(default_factory=dict)
    #: Commands: name -> callable (sync, or returning an awaitable) whose result is the
    #: response's ``result``; raising makes an error response with the exception's text.
    actions: dict[str, Provider] = field(default_factory=dict)


class ControlSocketBusy(PortInUse):
    """Another live daemon answers on the control socket: refuse to start."""


class ControlSocketError(OSError):
    """The control socket path cannot be used (not a socket, not writable...)."""


class ControlUnavailable(Exception):
    """``request()``: no daemon answered (the message says why)."""


class _BadRequest(Exception):
    """A request the protocol refuses; its text goes to the client."""


# --- the server --------------------------------------------------------------------------------


class ControlServer:
    def __init__(self, path: Path, providers: ControlProviders | None = None, *,
                 max_clients: int = MAX_CLIENTS, max_request: int = MAX_REQUEST,
                 idle_timeout: float = IDLE_TIMEOUT,
                 action_timeout: float = ACTION_TIMEOUT) -> None:
        self.path = path
        #: Replaceable: the daemon starts the socket first (the lock), providers come later.
        self.providers = providers or ControlProviders()
        self.max_request = max_request
        self.idle_timeout = idle_timeout
        self.action_timeout = action_timeout
        self.requests = 0
        self.bad_requests = 0
        self._server: asyncio.Server | None = None
        self._inode: int | None = None
        self._clients = ClientTasks(max_clients)

    async def start(self) -> None:
        """Bind the socket, replacing a stale one. ControlSocketBusy when a daemon answers
        there; ControlSocketError when the path holds something else."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        await _claim(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(str(path))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:  # another daemon won the race since _claim
                    raise ControlSocketBusy(exc.errno, f"control socket {path} is in use "
                                            "by a running dots-gateway") from None
                raise ControlSocketError(exc.errno, f"control socket {path}: "
                                         f"{exc.strerror}") from None
            # Connecting needs write permission on the file: 0600 keeps other users out
            # (and the peer-credential check below refuses them should the mode change).
            os.chmod(path, 0o600)
            self._inode = os.stat(path).st_ino
            sock.listen(16)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._client, sock=sock,
                                                           limit=self.max_request)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.info("control socket %s", path)

    async def stop(self) -> None:
        """Close the socket and remove the file (if it is still ours)."""
        if self._server is not None:
            await self._clients.close(self._server)
            self._server = None
        self._unlink()

    def _unlink(self) -> None:
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._inode = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = None
        try:
            task = self._clients.admit()
            if task is None:
                await self._send(writer, _error(f"busy: {self._clients.limit} control "
                                                "clients are connected; try again"))
                return
            refusal = _refuse_peer(writer)
            if refusal is not None:
                log.warning("control socket: %s", refusal)
                await self._send(writer, _error(refusal))
                return
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading
        except asyncio.CancelledError:
            # stop() cancels us; ending normally keeps asyncio's stream callback from
            # logging the cancelled task as an error (Python 3.11).
            pass
        except Exception:
            log.exception("control socket: unexpected error")
        finally:
            self._clients.release(task)
            await close_writer(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(MAX_REQUESTS_PER_CONNECTION):
            last = False
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), self.idle_timeout)
            except asyncio.LimitOverrunError:
                self.bad_requests += 1
                # The rest of the line is unread: we cannot find the next request.
                await self._send(writer, _error(f"request longer than {self.max_request} "
                                                "bytes"))
                return
            except asyncio.IncompleteReadError as exc:
                if not exc.partial.strip():
                    return  # the client is done
                line, last = exc.partial, True  # a last request without its newline
            if line.strip():
                response = await self._handle(line)
                await self._send(writer, response)
            if last:
                return
        await self._send(writer, _error(f"{MAX_REQUESTS_PER_CONNECTION} requests on one "
                                        "connection; reconnect"))

    async def _send(self, writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        writer.write(_encode(response))
        await asyncio.wait_for(writer.drain(), self.action_timeout)

    async def _handle(self, line: bytes) -> dict[str, Any]:
        """One request line -> one response object; never raises."""
        self.requests += 1
        try:
            command, request = _parse(line)
            result = await asyncio.wait_for(self._run(command, request), self.action_timeout)
        except _BadRequest as exc:
            self.bad_requests += 1
            return _error(str(exc))
        except TimeoutError:
            return _error(f"no result within {self.action_timeout:g} s")
        except Exception as exc:
            log.exception("control command failed")
            return _error(f"{type(exc).__name__}: {exc}")
        response: dict[str, Any] = {"ok": True, "command": command, "result": result}
        if "id" in request:
            response["id"] = request["id"]
        return response

    async def _run(self, command: str, request: Mapping[str, Any]) -> object:
        if command == "status":
            return await self._status(request.get("sections"))
        if command == "help":
            return {"commands": self.commands()}
        action = self.providers.actions.get(command)
        if action is None:
            raise _BadRequest(f"unknown command {command!r}; known: "
                              f"{', '.join(self.commands())}")
        log.info("control: %s", command)
        # An action that takes a parameter gets the request (its arguments, e.g. the
        # upstream of ``reconnect``); the others are called bare.
        result = action(request) if _takes_request(action) else action()
        if inspect.isawaitable(result):
            result = await result
        return result

    def commands(self) -> list[str]:
        return sorted({"status", "help", *self.providers.actions})

    async def _status(self, wanted: object) -> dict[str, object]:
        sections = self.providers.status_sections
        if wanted is None:
            names = list(sections)
        elif isinstance(wanted, list) and all(isinstance(n, str) for n in wanted):
            unknown = [n for n in wanted if n not in sections]
            if unknown:
                raise _BadRequest(f"unknown status sections {unknown}; known: "
                                  f"{', '.join(sections)}")
            names = wanted
        else:
            raise _BadRequest('"sections" must be a list of section names')
        out: dict[str, object] = {}
        for name in names:
            try:
                value = sections[name]()
                if inspect.isawaitable(value):
                    value = await value
                out[name] = value
            except Exception as exc:  # one broken section must not hide the others
                log.exception("control: status section %s failed", name)
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return out


async def _claim(path: Path) -> None:
    """Make ``path`` free for our socket: absent, or a stale socket nobody answers on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(errno.EEXIST, f"control socket {path} exists and is not a "
                                 "socket; remove it or set control.socket")
    if await _answers(path):
        raise ControlSocketBusy(errno.EADDRINUSE, f"control socket {path} is in use by a "
                                "running dots-gateway (same state directory)")
    log.info("control socket %s: removing the stale socket of a daemon that is gone", path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def _answers(path: Path) -> bool:
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except (OSError, TimeoutError):
        return True  # something holds it (a full backlog, a permission problem): not ours
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


def _refuse_peer(writer: asyncio.StreamWriter) -> str | None:
    """Only our own user (or root) may use the socket."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET,
                                                             socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except OSError:
        return None
    if uid in (0, os.geteuid()):
        return None
    return f"permission denied for uid {uid} (pid {pid})"


def _parse(line: bytes) -> tuple[str, dict[str, Any]]:
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _BadRequest(f"not a JSON request: {exc}") from None
    if not isinstance(request, dict):
        raise _BadRequest('a request is a JSON object such as {"command": "status"}')
    command = request.get("command")
    if not isinstance(command, str) or not command:
        raise _BadRequest('missing "command" (a string)')
    return command, request


def _takes_request(action: Callable[..., object]) -> bool:
    try:
        return bool(inspect.signature(action).parameters)
    except (TypeError, ValueError):
        return False


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _encode(response: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(response, default=_jsonable, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        log.error("control: cannot encode a response: %s", exc)
        text = json.dumps(_error(f"the result cannot be encoded: {exc}"))
    return text.encode() + b"\n"


def _jsonable(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


# --- the client --------------------------------------------------------------------------------


def request(path: Path, command: str, *, timeout: float = 5.0,
            **fields: object) -> dict[str, Any]:
    """Send one request and return the daemon's response object (``ok`` is in it).
    ControlUnavailable when nothing answers within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    data = json.dumps({"command": command, **fields}).encode() + b"\n"
    chunks: list[bytes] = []
    size = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(data)
            while size <= MAX_RESPONSE:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if b"\n" in chunk:
                    break
        except FileNotFoundError:
            raise ControlUnavailable(f"no control socket at {path}") from None
        except ConnectionRefusedError:
            raise ControlUnavailable(f"nothing listens on {path} (a stale socket of a "
                                     "daemon that is gone)") from None
        except TimeoutError:
            raise ControlUnavailable(f"no answer on {path} within {timeout:g} s") from None
        except OSError as exc:
            raise ControlUnavailable(f"{path}: {exc.strerror or exc}") from None
    line = b"".join(chunks).split(b"\n", 1)[0]
    if not line:
        raise ControlUnavailable(f"{path}: the daemon closed the connection without answering")
    try:
        response = json.loads(line)
    except ValueError as exc:
        raise ControlUnavailable(f"{path}: not a JSON answer: {exc}") from None
    if not isinstance(response, dict):
        raise ControlUnavailable(f"{path}: not a JSON object: {line[:80]!r}")
    return response


# --- human-readable status ---------------------------------------------------------------------


def format_status(status: Mapping[str, Any]) -> str:
    """The ``status`` result as text: a header, then one table per list-shaped section."""
    out: list[str] = []
    daemon = status.get("daemon")
    if isinstance(daemon, dict):
        head = f"dots-gateway {daemon.get('version', '?')}, pid {daemon.get('pid', '?')}"
        if "mode" in daemon:
            head += f", {daemon['mode']} mode"
        if "uptime" in daemon:
            head += f", up {_duration(float(daemon['uptime']))}"
        out.append(head)
        if daemon.get("addresses"):
            out.append("serving " + " ".join(str(a) for a in daemon["addresses"]))
    for name, value in status.items():
        if name == "daemon":
            continue
        out.append("")
        out.extend(_section(name, value))
    return "\n".join(out).strip("\n") + "\n"


def _section(name: str, value: object) -> list[str]:
    title = name.upper()
    if isinstance(value, dict) and isinstance(value.get("list"), list):
        rows = value["list"]
        extra = {k: v for k, v in value.items() if k not in ("list", "count")}
        summary = f"{title} ({value.get('count', len(rows))})"
        if extra:
            summary += "  " + "  ".join(f"{k}: {_cell(v)}" for k, v in extra.items())
        return [summary, *_table(rows)]
    if isinstance(value, list):
        return [f"{title} ({len(value)})", *_table(value)]
    if isinstance(value, dict):
        return [title, *(f"  {k}: {_cell(v)}" for k, v in value.items())]
    return [f"{title}: {_cell(value)}"]


def _table(rows: list[Any]) -> list[str]:
    if not rows:
        return ["  (none)"]
    if not all(isinstance(r, dict) for r in rows):
        return [f"  {_cell(r)}" for r in rows]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    cells = [[_column_cell(c, row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    for r in cells:
        lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return [line.rstrip() for line in lines]


#: Columns in seconds, shown as durations: what is left of a mitigation's lifetime (-1:
#: indefinite, RFC 9132 §4.4.1), a session's time since its client's last message and
#: before its signal is declared lost.
DURATION_COLUMNS = frozenset({"lifetime", "idle", "lost_in"})


def _column_cell(column: str, value: object) -> str:
    if column in DURATION_COLUMNS and isinstance(value, int | float) and not isinstance(
            value, bool):
        return "indefinite" if value < 0 else _duration(value)
    return _cell(value)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
