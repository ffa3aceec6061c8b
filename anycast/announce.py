"""Announcing the anycast route: the ``kernel-table`` and ``exabgp`` backends.

``kernel-table`` (default): one route per anycast address in a dedicated kernel table (46 by
default), added to announce and deleted to withdraw, through the address holder's netlink
socket. BIRD learns that table (``protocol kernel { kernel table 46; learn; ... }``) and
exports it over BGP; the kernel keeps the state across a BIRD restart. A crash of the
gateway leaves the routes: ``ExecStopPost`` flushes the table (deploy/README.md).

``exabgp``: the gateway runs as an ExaBGP API process (``process ... { run dots-gateway run
...; encoder text; }``) and writes ``announce route 192.0.2.46/32 next-hop self`` /
``withdraw route ...`` lines on its stdout, which ExaBGP reads. Everything else the process
would print goes to stderr from then on (fd 1 is re-pointed), so nothing but commands reach
ExaBGP. ExaBGP's acknowledgements on our stdin are read and dropped (an unread pipe would
block ExaBGP). Fate sharing: the gateway asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), so it drains and stops with ExaBGP and never outlives it holding the
port a respawned instance needs; ExaBGP's BGP sessions close with it, which withdraws the
route at the peers. tests/lab/test_anycast_exabgp.py runs this against the real ExaBGP
(4.2 and 5.0) and BIRD: check failures, a killed gateway, drain, ExaBGP stopped or killed.

Both are idempotent: announcing twice or withdrawing a withdrawn route is harmless, and at
start-up the manager withdraws first, clearing what a crashed predecessor left.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from collections.abc import Callable, Iterable
from typing import Protocol

from anycast.addresses import IPAddress, host_prefix
from anycast.errors import AnycastError
from anycast.netlink import AddressHolder

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class AnnounceError(AnycastError):
    """The announcement could not be changed (the manager retries on the next check)."""


class Announcer(Protocol):
    name: str

    async def announce(self) -> None: ...

    async def withdraw(self) -> None: ...

    async def close(self) -> None: ...


class KernelTableAnnouncer:
    """Routes in a kernel table, learned by BIRD (or any daemon that reads that table)."""

    name = "kernel-table"

    def __init__(self, holder: AddressHolder) -> None:
        self.holder = holder

    async def announce(self) -> None:
        await self.holder.set_routes(True)

    async def withdraw(self) -> None:
        await self.holder.set_routes(False)

    async def close(self) -> None:
        pass  # the holder removes the routes with the addresses


def exabgp_lines(verb: str, addresses: Iterable[IPAddress], next_hop: str = "self") -> list[str]:
    """ExaBGP text API commands, one per address: ``announce route P next-hop self``."""
    if verb not in ("announce", "withdraw"):
        raise ValueError(f"unknown ExaBGP verb {verb!r}")
    return [f"{verb} route {host_prefix(a)} next-hop {next_hop}\n" for a in addresses]


class ExaBgpAnnouncer:
    """Commands for ExaBGP on a file descriptor (our stdout when ExaBGP runs us)."""

    name = "exabgp"

    def __init__(self, addresses: Iterable[IPAddress], write: Callable[[bytes], None],
                 *, ack_fd: int | None = None) -> None:
        self.addresses = tuple(addresses)
        self._write = write
        self._ack_fd = ack_fd
        self._reading = False
        #: ExaBGP closed the command pipe: it stopped (its BGP sessions, and our route at the
        #: peers, went with it) or it is replacing this process.
        self.gone = False

    @classmethod
    def from_stdio(cls, addresses: Iterable[IPAddress]) -> ExaBgpAnnouncer:
        """Take fd 1 for commands (the rest of stdout now goes to stderr), read ExaBGP's
        acknowledgements from fd 0, and die with the parent (ExaBGP)."""
        command_fd = os.dup(1)
        os.dup2(2, 1)
        tie_to_parent()

        def write(data: bytes) -> None:
            while data:  # a pipe takes at most PIPE_BUF atomically; lines are short
                data = data[os.write(command_fd, data):]

        announcer = cls(addresses, write, ack_fd=0)
        announcer._start_reading()
        return announcer

    async def announce(self) -> None:
        self._send("announce")

    async def withdraw(self) -> None:
        self._send("withdraw")

    async def close(self) -> None:
        if self._reading and self._ack_fd is not None:
            asyncio.get_running_loop().remove_reader(self._ack_fd)
            self._reading = False

    def _send(self, verb: str) -> None:
        """Write the commands. Once ExaBGP has closed the pipe a withdrawal counts as done:
        there is nothing left to withdraw through, ExaBGP's BGP sessions close with it, and
        a gateway it respawns withdraws at start-up; so the manager neither retries it nor
        logs an error each round (PDEATHSIG stops us when ExaBGP dies: that drain starts
        exactly here). An announcement still fails."""
        lines = exabgp_lines(verb, self.addresses)
        if not self.gone:
            try:
                self._write("".join(lines).encode())
            except OSError as exc:
                if not isinstance(exc, BrokenPipeError):
                    raise AnnounceError(f"ExaBGP API pipe: {exc.strerror or exc}") from None
                self.gone = True
                log.warning("ExaBGP closed the API pipe (it stopped, or it is replacing this "
                            "process): its BGP sessions take our route with them")
        if self.gone:
            if verb == "withdraw":
                return
            raise AnnounceError("ExaBGP API pipe: Broken pipe (ExaBGP is gone)")
        for line in lines:
            log.info("exabgp command: %s", line.strip())

    def _start_reading(self) -> None:
        if self._ack_fd is None:
            return
        try:
            os.set_blocking(self._ack_fd, False)
            asyncio.get_running_loop().add_reader(self._ack_fd, self._drain_acks)
            self._reading = True
        except (OSError, ValueError, RuntimeError, PermissionError) as exc:
            log.warning("not reading ExaBGP acknowledgements on fd %d: %s", self._ack_fd, exc)

    def _drain_acks(self) -> None:
        assert self._ack_fd is not None
        try:
            data = os.read(self._ack_fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            log.warning("reading ExaBGP acknowledgements failed: %s", exc)
        if not data:
            log.warning("ExaBGP closed our stdin: it has stopped or restarted")
            asyncio.get_running_loop().remove_reader(self._ack_fd)
            self._reading = False
            return
        for line in data.decode(errors="replace").splitlines():
            if line.strip() and line.strip() != "done":
                log.info("exabgp says: %s", line.strip())


def tie_to_parent(sig: int = signal.SIGTERM) -> None:
    """Ask for ``sig`` when the parent process dies (Linux PR_SET_PDEATHSIG). If the parent
    is already gone (we were re-parented before the call), send it to ourselves now."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("PR_SET_PDEATHSIG failed: %s", os.strerror(ctypes.get_errno()))
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
