"""How ``dots-gateway drain`` and ``status`` reach the running daemon: a pid file and a
state file in the state directory, and SIGUSR2.

While anycast is enabled the daemon writes ``<state_dir>/dots-gateway.pid`` (removed on a
clean exit) and keeps ``<state_dir>/anycast.json`` current (health state, announcement,
checks, sessions on anycast and unicast addresses). ``drain`` reads the pid, makes sure the
process is alive and is a dots-gateway, and sends SIGUSR2: the daemon withdraws the route,
keeps serving for ``anycast.grace`` seconds, then stops. SIGTERM does the same; a second
SIGTERM or SIGINT during the grace period stops at once.

A signal needs no listener, cannot be half-read and works from any network namespace
(``ip netns exec``) of the same host, which a control socket path would not give for free.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from anycast.errors import AnycastError

PID_FILE = "dots-gateway.pid"
STATE_FILE = "anycast.json"
DRAIN_SIGNAL = signal.SIGUSR2


class ControlError(AnycastError):
    """No running daemon to talk to (or not ours); the message says why."""


def pid_path(state_dir: Path) -> Path:
    return state_dir / PID_FILE


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def write_pid_file(state_dir: Path) -> Path:
    path = pid_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, f"{os.getpid()}\n")
    return path


def remove_pid_file(state_dir: Path) -> None:
    """Remove the pid file if it still names this process."""
    path = pid_path(state_dir)
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    _replace(state_path(state_dir), json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_state(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads(state_path(state_dir).read_text())
    except FileNotFoundError:
        raise ControlError(f"no anycast state in {state_dir} (is anycast enabled and the "
                           "daemon running with this state directory?)") from None
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot read {state_path(state_dir)}: {exc}") from None
    if not isinstance(data, dict):
        raise ControlError(f"{state_path(state_dir)} does not hold a JSON object")
    return data


def running_pid(state_dir: Path) -> int:
    """The pid of the daemon using ``state_dir``; ControlError when there is none."""
    path = pid_path(state_dir)
    try:
        pid = int(path.read_text().strip())
    except FileNotFoundError:
        raise ControlError(f"no {path}: no daemon with anycast enabled runs with this state "
                           "directory") from None
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot read {path}: {exc}") from None
    if not is_gateway(pid):
        raise ControlError(f"{path} names pid {pid}, which is not a running dots-gateway "
                           "(stale pid file of a crashed daemon?)")
    return pid


def request_drain(state_dir: Path) -> int:
    """Send the drain signal to the running daemon; its pid."""
    pid = running_pid(state_dir)
    os.kill(pid, DRAIN_SIGNAL)
    return pid


def is_gateway(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and b"gateway" in cmdline


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Poll until ``pid`` is gone (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_gateway(pid):
            return True
        time.sleep(0.05)
    return not is_gateway(pid)


def _replace(path: Path, text: str) -> None:
    """Write atomically: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
