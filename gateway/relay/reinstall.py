"""Re-installation for the relay: what the gateway answers for, kept alive upstream.

``Reinstallation`` is the part of ``gateway.relay.forwarding.GatewayRelay`` that acts on
the relay table (``gateway.dots.relay.RelayTable``) when the upstream side changes:

* on every new upstream session (failover to another server, re-establishment, restart) it
  GETs each client's mitigations there, re-PUTs the missing ones with the same cuid and mid
  and what is left of their lifetime, sends withdrawals the old server never got, and
  registers the shared observations again;
* on downstream signal loss (RFC 9132 §4.4.1, §4.7) it activates the client's
  preconfigured (``trigger-mitigation=false``) requests upstream itself (DELETE, then the
  same request with ``trigger-mitigation=true``), see ``gateway.relay.forwarding``.

It uses the relay's state and methods; it is not used alone.

Asyncio glue; imports nothing of the daemon.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.client.connect import NetworkError
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Method
from gateway.dots.message import DotsRequest
from gateway.dots.relay import RelayedMitigation
from gateway.dots.uri import Resource, build_path

log = logging.getLogger("gateway.relay.forwarding")  # one logger for the relay's lines

#: Concurrent requests one reconciliation sends upstream (bounded fan-out).
RECONCILE_PARALLELISM = 16


class Reinstallation:
    """Mixed into ``GatewayRelay``: see the module docstring."""

    # --- upstream sessions -------------------------------------------------------------------

    async def upstream_ready(self) -> None:
        """A new upstream session: re-install what the gateway answers for, re-register
        the observations. Runs once at a time; a session arriving meanwhile runs it again."""
        if self._reconcile_task is not None and not self._reconcile_task.done():
            self._reconcile_again = True
            return
        self._reconcile_task = asyncio.current_task()
        try:
            while True:
                self._reconcile_again = False
                await self._reconcile()
                if not self._reconcile_again:
                    break
        finally:
            self._reconcile_task = None

    async def _reconcile(self) -> None:
        upstream = self.upstream
        if upstream is None or not upstream.connected:
            return
        self.reconciliations += 1
        name = upstream.name
        self.table.expire(self.wall_clock())
        self._save()
        cuids = self.table.cuids()
        log.info("upstream %s ready: checking %d clients' mitigations, %d observations",
                 name, len(cuids), len(self.observations))
        limit = asyncio.Semaphore(RECONCILE_PARALLELISM)

        async def one(cuid: str) -> None:
            async with limit:
                try:
                    await self._reconcile_client(cuid)
                except NetworkError as exc:
                    log.warning("re-installing cuid=%s on %s failed: %s", cuid, name, exc)

        await asyncio.gather(*(one(cuid) for cuid in cuids))
        for obs in list(self.observations.values()):
            if obs.session is not None and obs.session is upstream.session \
                    and not obs.session.closed:
                continue  # registered on this very session already (raced with us)
            reply = await self._register(obs)
            if reply is not None:  # the state may have moved meanwhile
                ended = reply.observe is None or not reply.ok
                self.notify(set(obs.subscribers), reply.response, ended)
                if ended:
                    self._drop_observation(obs, cancel=False)
        self._save()

    async def _reconcile_client(self, cuid: str) -> None:
        upstream = self.upstream
        if upstream is None:
            return
        for record in [r for r in self.table.of_cuid(cuid) if r.withdrawing]:
            path = build_path(Resource.MITIGATE, cdid=record.cdid, cuid=cuid, mid=record.mid)
            await upstream.forward(DotsRequest(Method.DELETE, path), mid=record.mid,
                                   timeout=self.settings.request_timeout)
            self.table.remove(cuid, record.mid)
        live = self.table.of_cuid(cuid)
        if not live:
            return
        present = await self._present(cuid, live[0].cdid)
        reinstalled = False
        now = self.wall_clock()
        for record in live:
            if record.key in self._in_flight:
                continue  # its own answer will say
            if record.mid in present:
                self.table.accepted(record, upstream.name or "", present[record.mid], now)
            elif not record.confirmed:
                # Never answered to the client (the gateway stopped in between): the client
                # sends it again; do not invent an acceptance.
                self.table.remove(cuid, record.mid)
            else:
                await self._reinstall(record, now)
                reinstalled = True
        if reinstalled:
            # Requests with higher mids replace overlapping lower ones upstream (§4.4.1):
            # forget what the server itself removed.
            present = await self._present(cuid, live[0].cdid)
            for record in self.table.of_cuid(cuid):
                if record.confirmed and record.mid not in present \
                        and record.key not in self._in_flight:
                    log.info("cuid=%s mid=%d was superseded upstream", cuid, record.mid)
                    self.table.remove(cuid, record.mid)
        self._save()

    async def _present(self, cuid: str, cdid: str | None) -> dict[int, int | None]:
        """mid -> remaining lifetime of the client's requests the upstream server has."""
        upstream = self.upstream
        assert upstream is not None
        path = build_path(Resource.MITIGATE, cdid=cdid, cuid=cuid)
        reply = await upstream.forward(DotsRequest(Method.GET, path), mid=None,
                                       timeout=self.settings.request_timeout)
        if not reply.ok:
            return {}
        return {s.mid: s.lifetime for s in reply.scopes if s.mid is not None}

    async def _reinstall(self, record: RelayedMitigation, now: float) -> None:
        upstream = self.upstream
        assert upstream is not None
        path = build_path(Resource.MITIGATE, cdid=record.cdid, cuid=record.cuid, mid=record.mid)
        request = DotsRequest(Method.PUT, path, payload=record.resend_body(now),
                              content_format=CONTENT_FORMAT_DOTS_CBOR)
        reply = await upstream.forward(request, mid=record.mid,
                                       timeout=self.settings.request_timeout)
        if reply.ok:
            granted = next((s.lifetime for s in reply.scopes if s.lifetime is not None), None)
            self.table.accepted(record, reply.endpoint.uri, granted, now)
            self.reinstalled += 1
            log.info("re-installed cuid=%s mid=%d on %s", record.cuid, record.mid,
                     reply.endpoint.uri)
        else:
            log.warning("upstream %s refused to re-install cuid=%s mid=%d: %s %s",
                        reply.endpoint.uri, record.cuid, record.mid, reply.dotted,
                        reply.diagnostic)
            self.table.remove(record.cuid, record.mid)

    # --- downstream signal loss --------------------------------------------------------------

    def client_lost(self, cuids: frozenset[str]) -> None:
        """A downstream session went silent: activate its preconfigured requests upstream
        (see the module docstring for why this way)."""
        for cuid in cuids:
            for record in self.table.of_cuid(cuid):
                if (record.confirmed and not record.trigger_mitigation
                        and not record.withdrawing and not record.activated_by_loss):
                    record.activated_by_loss = True
                    self.table.touch(record)
                    self._spawn(self._activate(record))
        self._save()

    async def _activate(self, record: RelayedMitigation) -> None:
        upstream = self.upstream
        if upstream is None:
            return  # installed as immediate by the next reconciliation (resend_body)
        path = build_path(Resource.MITIGATE, cdid=record.cdid, cuid=record.cuid, mid=record.mid)
        try:
            await upstream.forward(DotsRequest(Method.DELETE, path), mid=record.mid,
                                   timeout=self.settings.request_timeout)
            await self._reinstall(record, self.wall_clock())
        except NetworkError as exc:
            log.warning("activating preconfigured cuid=%s mid=%d upstream failed (%s); the "
                        "next upstream session installs it", record.cuid, record.mid, exc)
        log.warning("signal lost with cuid=%s: preconfigured mid=%d activated upstream",
                    record.cuid, record.mid)
        self._save()
