"""The asyncio driver of the discovery procedure, and the real I/O behind its requests.

``DiscoveryEngine`` feeds the pure ``Procedure``: it performs each request the procedure
hands out (slots run concurrently, one request each at a time), feeds the result back with
the current monotonic time, re-arms one timer, and re-runs on demand (``rerun``). One
boundary catches every exception an adapter lets through and turns it into a failure value
for that lookup: a weird answer never stops the engine.

``SystemIO`` is the real I/O: DHCP exchanges (``dhcp_client``), DNS (``resolver``), and one
long-lived mDNS browser per interface (``mdns``), started with the engine so unsolicited
announcements are cached before the procedure gets to mDNS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.discovery import dhcp_client
from gateway.discovery.candidates import Candidate, Family, Mechanism, Slot
from gateway.discovery.dnssec import TrustAnchors
from gateway.discovery.interfaces import InterfaceInfo
from gateway.discovery.lookups import (
    DhcpQuery,
    DhcpResult,
    DnsQuery,
    DnsResult,
    DnssecMode,
    DnssecValidator,
    FailureKind,
    LookupFailure,
    MdnsBrowse,
    MdnsResult,
    Request,
    Result,
)
from gateway.discovery.procedure import CandidatesFound, Event, Procedure, ProcedureSettings
from gateway.eventlog import log_event

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger(__name__)


class DiscoveryIO(Protocol):
    async def dhcp(self, query: DhcpQuery) -> DhcpResult: ...
    async def dns(self, query: DnsQuery) -> DnsResult: ...
    async def mdns(self, query: MdnsBrowse) -> MdnsResult: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class IoSettings:
    dhcp_timeout: float = 2.0
    dhcp_attempts: int = 2
    seed_address_code: int | None = None
    seed_ri_code: int | None = None
    dns_timeout: float = 2.0
    mdns: bool = True
    #: None: no DNSSEC validation (``discovery.dnssec = "off"``).
    dnssec_validator: DnssecValidator | None = None
    dnssec_trust_anchors: Path | None = None


def io_settings(settings: Settings, procedure: ProcedureSettings) -> IoSettings:
    """The I/O side of the ``[discovery]`` configuration; the mechanisms and the DNSSEC mode
    are the procedure's (command-line overrides included)."""
    d = settings.discovery
    return IoSettings(
        dhcp_timeout=float(d.dhcp.timeout), dhcp_attempts=d.dhcp.attempts,
        seed_address_code=d.dhcp.v4_seed_address_option, seed_ri_code=d.dhcp.v4_seed_ri_option,
        dns_timeout=float(d.dns_timeout), mdns=Mechanism.MDNS in procedure.mechanisms,
        dnssec_validator=(None if procedure.dnssec is DnssecMode.OFF
                          else DnssecValidator(d.dnssec_validator.value)),
        dnssec_trust_anchors=d.dnssec_trust_anchors,
    )


class SystemIO:
    """The real network: sockets bound to the slot's interface, dnspython, zeroconf."""

    def __init__(self, interfaces: dict[str, InterfaceInfo], settings: IoSettings) -> None:
        """Raises ``TrustAnchorError`` (naming the key) when the trust anchors are unusable."""
        from gateway.discovery.resolver import DnsResolver, load_trust_anchors

        self.interfaces = interfaces
        self.settings = settings
        anchors: TrustAnchors | None = None
        if (settings.dnssec_validator is DnssecValidator.LOCAL
                and settings.dnssec_trust_anchors is not None):
            anchors = load_trust_anchors(settings.dnssec_trust_anchors)
        self._resolver = DnsResolver(settings.dns_timeout, validator=settings.dnssec_validator,
                                     anchors=anchors)
        self._browsers: dict[str, object] = {}

    async def start_mdns(self, names: Sequence[str]) -> None:
        """Start browsing early, so announcements are cached before they are needed."""
        if not self.settings.mdns:
            return
        for name in names:
            await self._browser(name)

    async def _browser(self, name: str) -> object | LookupFailure:
        from gateway.discovery.mdns import MdnsBrowser

        if name not in self._browsers:
            browser = MdnsBrowser(self.interfaces[name])
            try:
                await browser.start()
            except (OSError, RuntimeError, ValueError) as exc:
                return LookupFailure(FailureKind.UNAVAILABLE, f"mDNS on {name}: {exc}")
            self._browsers[name] = browser
        return self._browsers[name]

    async def dhcp(self, query: DhcpQuery) -> DhcpResult:
        info = self.interfaces.get(query.slot.interface)
        if info is None:
            return LookupFailure(FailureKind.UNAVAILABLE, f"{query.slot.interface} is gone")
        if query.slot.family is Family.V4:
            return await dhcp_client.inform_v4(
                info, timeout=self.settings.dhcp_timeout, attempts=self.settings.dhcp_attempts,
                seed_address_code=self.settings.seed_address_code,
                seed_ri_code=self.settings.seed_ri_code,
            )
        return await dhcp_client.information_request_v6(
            info, timeout=self.settings.dhcp_timeout, attempts=self.settings.dhcp_attempts
        )

    async def dns(self, query: DnsQuery) -> DnsResult:
        return await self._resolver.query(query)

    async def mdns(self, query: MdnsBrowse) -> MdnsResult:
        from gateway.discovery.mdns import MdnsBrowser

        browser = await self._browser(query.slot.interface)
        if isinstance(browser, LookupFailure):
            return browser
        assert isinstance(browser, MdnsBrowser)
        return await browser.browse(query.duration)

    async def close(self) -> None:
        from gateway.discovery.mdns import MdnsBrowser

        for browser in self._browsers.values():
            assert isinstance(browser, MdnsBrowser)
            await browser.close()
        self._browsers.clear()


class DiscoveryEngine:
    """Drives one ``Procedure`` with one ``DiscoveryIO``."""

    def __init__(self, procedure: Procedure, io: DiscoveryIO,
                 clock: Callable[[], float] = time.monotonic,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.procedure = procedure
        self.io = io
        self.clock = clock
        self.on_event = on_event
        self._tasks: dict[asyncio.Task[Result], int] = {}
        self._wake = asyncio.Event()
        #: The slots ``run_once`` left running at its deadline ([] when every run ended).
        self.cut_short: list[Slot] = []

    def rerun(self, slot: Slot | None = None) -> None:
        """Run the procedure again now (lookups inside their retry wait stay skipped)."""
        self.procedure.rerun(self.clock(), slot)
        self._wake.set()

    async def run_once(self, deadline: float | None = None) -> list[Candidate]:
        """Start every slot and return when none is running (or at ``deadline``, monotonic):
        what ``dots-gateway discover`` prints. A slot still running at the deadline gives
        the candidates of its mechanisms that had finished (``cut_short`` names it)."""
        self.procedure.start(self.clock())
        self.cut_short = []
        try:
            while self.procedure.busy or self._tasks:
                timeout = None if deadline is None else deadline - self.clock()
                if timeout is not None and timeout <= 0:
                    self.cut_short = self.procedure.running()
                    log.warning("discovery: stopped at the deadline with lookups pending "
                                "(%s)", ", ".join(str(s) for s in self.cut_short))
                    break
                await self._step(timeout)
        finally:
            await self._cancel()
        if self.cut_short:
            return self.procedure.candidates_so_far()
        return self.procedure.candidates()

    async def run_forever(self) -> None:
        """Keep the candidates fresh: re-run at validity expiry and after retry waits."""
        self.procedure.start(self.clock())
        try:
            while True:
                timer = self.procedure.get_timer()
                timeout = None if timer is None else max(0.0, timer - self.clock())
                await self._step(timeout)
                self.procedure.handle_timer(self.clock())
        finally:
            await self._cancel()

    async def _step(self, timeout: float | None) -> None:
        while (item := self.procedure.next_request()) is not None:
            request_id, request = item
            task = asyncio.ensure_future(self._perform(request))
            self._tasks[task] = request_id
        self._drain_events()
        if not self._tasks and not self.procedure.busy and timeout is None:
            self._wake.clear()
            await self._wake.wait()
            return
        waits: set[asyncio.Future[Any]] = set(self._tasks)
        wake = asyncio.ensure_future(self._wake.wait())
        waits.add(wake)
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
        self._wake.clear()
        for task in list(self._tasks):
            if task in done:
                request_id = self._tasks.pop(task)
                self.procedure.query_result(request_id, task.result(), self.clock())
        self._drain_events()

    async def _perform(self, request: Request) -> Result:
        """The one boundary: whatever an adapter raises becomes a failure of this lookup."""
        try:
            if isinstance(request, DhcpQuery):
                return await self.io.dhcp(request)
            if isinstance(request, DnsQuery):
                return await self.io.dns(request)
            return await self.io.mdns(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, engine goes on
            log.exception("discovery: %s failed", type(request).__name__)
            return LookupFailure(FailureKind.MALFORMED, f"{type(exc).__name__}: {exc}")

    def _drain_events(self) -> None:
        while (event := self.procedure.next_event()) is not None:
            if isinstance(event, CandidatesFound):
                log_event(log, logging.INFO, "discovery.candidates", "discovery found "
                          "candidates", slot=str(event.slot), count=len(event.candidates))
            if self.on_event is not None:
                self.on_event(event)

    async def _cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
