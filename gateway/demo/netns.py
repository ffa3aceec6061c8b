"""Network namespaces, veth links, addresses and processes for the demo and the lab tests.

Shared by ``dots-gateway demo`` (``gateway.demo``) and the lab tests (``tests/lab``, which
import it through ``tests.lab.netns``). Everything a ``Lab`` creates is named
``<prefix><pid>-...`` (``dgl`` for the lab tests, ``dgd`` for the demo) and removed by
``close()``, which runs even when a test or the demo fails (use it as a context manager or
in a ``finally``): processes are stopped by PID (SIGTERM, then SIGKILL after a bounded
wait), namespaces deleted (their veth ends go with them), files removed.
``cleanup_stale()`` removes what a killed earlier run left (its owner PID is gone).

iproute2's ``ip`` does the work: it is on every machine that can run these tests, and the
helpers stay free of netlink libraries. Every command has a timeout. Traffic never leaves
the namespaces: they have no route to anywhere else.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PREFIX = "dgl"
COMMAND_TIMEOUT = 10.0


def require_root(what: str = "lab tests") -> str | None:
    """The reason ``what`` cannot run here, or None."""
    if os.geteuid() != 0:
        return f"{what}: root needed (network namespaces)"
    if shutil.which("ip") is None:
        return f"{what}: iproute2's ip needed"
    return None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=COMMAND_TIMEOUT)


def _alive(pid: int) -> bool:
    """True for a running process; a zombie (killed, not yet reaped: a run killed with
    SIGKILL leaves its pytest process unreaped for a while) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _remove_namespace(name: str) -> None:
    # Processes still inside (a daemon that escaped our bookkeeping) are stopped by PID.
    for pid_text in ip("netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid_text), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    ip("netns", "delete", name, check=False)
    shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)


def cleanup_stale(prefix: str = PREFIX) -> None:
    """Remove namespaces of earlier runs whose owner process is gone."""
    for name in _namespaces():
        if not name.startswith(prefix):
            continue
        owner = name[len(prefix):].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            _remove_namespace(name)
    for path in Path("/tmp").glob(f"{prefix}-*"):
        owner = path.name.split("-")[1]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(path, ignore_errors=True)


def namespaces(prefix: str) -> list[str]:
    """The namespaces whose name starts with ``prefix`` (e.g. one run's ``dgd<pid>-``)."""
    return [name for name in _namespaces() if name.startswith(prefix)]


class Lab:
    """Namespaces and processes of one test module or demo run; ``close()`` removes all."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = f"{prefix}{os.getpid()}-"
        self.dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-{os.getpid()}-", dir="/tmp"))
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- network -----------------------------------------------------------------------------

    def namespace(self, short: str) -> str:
        name = self.prefix + short
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair between two namespaces; both ends up, IPv6 DAD off (addresses are
        usable at once, link-local ones included)."""
        ip("link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
           "netns", ns_b)
        for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
            self.sysctl(ns, f"net.ipv6.conf.{ifname}.accept_dad", "0")
            ip("-n", ns, "link", "set", ifname, "up")

    def address(self, ns: str, ifname: str, cidr: str) -> None:
        extra = ["nodad"] if ":" in cidr else []
        ip("-n", ns, "addr", "add", cidr, "dev", ifname, *extra)

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.run(ns, "sysctl", "-qw", f"{key}={value}")

    def resolv_conf(self, ns: str, nameserver: str) -> None:
        """``ip netns exec`` bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf, so
        a process that falls back to the system resolver stays inside the lab."""
        path = Path(f"/etc/netns/{ns}")
        path.mkdir(parents=True, exist_ok=True)
        (path / "resolv.conf").write_text(f"nameserver {nameserver}\n")

    def wait_link_local(self, ns: str, ifname: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = ip("-n", ns, "-6", "addr", "show", "dev", ifname, "scope", "link").stdout
            for line in out.splitlines():
                if "inet6" in line and "tentative" not in line:
                    return line.split()[1].split("/")[0]
            time.sleep(0.02)
        raise TimeoutError(f"{ns}/{ifname}: no IPv6 link-local address")

    # --- processes ---------------------------------------------------------------------------

    def run(self, ns: str, *cmd: str, timeout: float = COMMAND_TIMEOUT,
            check: bool = True, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True,
                              text=True, timeout=timeout, check=check, env=env)

    def popen(self, ns: str, cmd: Sequence[str], log_name: str,
              stdout: int | None = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in ``ns``; ``ip netns exec`` execs, so the PID is the command's."""
        log = open(self.dir / log_name, "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, *cmd],
            stdout=stdout if stdout is not None else log, stderr=log,
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        return process

    def log(self, log_name: str) -> str:
        path = self.dir / log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 3.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()

    def close(self) -> None:
        for process in reversed(self.processes):
            try:
                self.stop(process)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        for name in reversed(self.namespaces):
            _remove_namespace(name)
        self.namespaces.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
