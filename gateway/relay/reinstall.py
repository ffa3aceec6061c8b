"""Re-installation for the relay: what the gateway answers for, kept alive upstream.

``Reinstallation`` is the part of ``gateway.relay.forwarding.GatewayRelay`` that acts on
the relay table (``gateway.dots.relay.RelayTable``) when the upstream side changes:

* on every new upstream session (failover to another server, re-establishment, restart) it
  GETs each client's mitigations there, re-PUTs the missing ones with the same cuid and mid
  and what is left of their lifetime, sends withdrawals the old server never got, and
  registers the shared observations again;
* an answer to that GET it cannot read (a body that does not decode, a 5.xx, anything but
  a list or 4.04) means "unknown", never "none": every record is kept, the confirmed ones
  are PUT again once (a refresh where the server has them, RFC 9132 §4.4.1.3), and the GET
  is retried later (``recheck_after``, doubling, ``RECHECK_ATTEMPTS`` times) until an
  answer says what the server has; each such answer is counted (``unreadable``);
* on downstream signal loss (RFC 9132 §4.4.1, §4.7) it activates the client's
  preconfigured (``trigger-mitigation=false``) requests upstream itself (DELETE, then the
  same request with ``trigger-mitigation=true``), see ``gateway.relay.forwarding``.

It uses the relay's state and methods; it is not used alone.

Asyncio glue; imports nothing of the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.client.connect import NetworkError
from gateway.client.messages import Reply
from gateway.client.session import ClientSession
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code, Method
from gateway.dots.message import DotsRequest
from gateway.dots.model import MitigationScope
from gateway.dots.relay import RelayedMitigation
from gateway.dots.uri import Resource, build_path
from gateway.eventlog import log_event

log = logging.getLogger("gateway.relay.forwarding")  # one logger for the relay's lines

#: Clients one reconciliation checks at once (bounded fan-out; each client's requests go
#: one after the other, in mid order, RFC 9132 §4.4.1's overlap rule). 16 left the upstream
#: server waiting on round trips (4,000 records: 13.9 s at 16, 9.7 s at 256, both CPUs busy
#: then). 128: half of the upstream in-flight slots, live requests queue for the rest.
RECONCILE_PARALLELISM = 128
#: Times an unreadable list is asked for again on the same session before giving up (the
#: records stay; the next upstream session checks again).
RECHECK_ATTEMPTS = 8
#: The longest wait between two of those attempts, seconds.
RECHECK_MAX_DELAY = 300.0


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
        started, reinstalled = time.monotonic(), self.reinstalled
        self.table.expire(self.wall_clock())
        self._save()
        cuids = self.table.cuids()
        records = len(self.table)
        log.info("upstream %s ready: checking %d clients' mitigations, %d observations",
                 name, len(cuids), len(self.observations))
        queue = iter(cuids)

        async def worker() -> None:
            # A fixed set of workers pulling from one iterator: a task per client waiting
            # on a semaphore would be a million tasks (hundreds of MiB) for a big table.
            for cuid in queue:
                try:
                    await self._reconcile_client(cuid)
                except NetworkError as exc:
                    log.warning("re-installing cuid=%s on %s failed: %s", cuid, name, exc)

        await asyncio.gather(*(worker() for _ in range(min(RECONCILE_PARALLELISM,
                                                             len(cuids)))))
        for obs in list(self.observations.values()):
            if obs.session is not None and obs.session is upstream.session \
                    and not obs.session.closed:
                continue  # registered on this very session already (raced with us)
            reply = await self._register(obs)
            if reply is not None:  # the state may have moved meanwhile
                ended = reply.observe is None or not reply.ok
                self.notify(set(obs.subscribers),
                            self._from_upstream(reply.endpoint, reply.response), ended)
                if ended:
                    self._drop_observation(obs, cancel=False)
        self._save()
        log_event(log, logging.INFO, "relay.reconciled", "relayed requests checked on the "
                  "new upstream session", upstream=name, clients=len(cuids), records=records,
                  reinstalled=self.reinstalled - reinstalled,
                  seconds=round(time.monotonic() - started, 3))

    async def _reconcile_client(self, cuid: str, *, recheck: bool = False) -> None:
        """Make the upstream server's view of ``cuid`` match the table. ``recheck``: a
        retry after an unreadable list (the records were PUT again already)."""
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
        now = self.wall_clock()
        if present is None:
            # Unknown, not "none": keep every record. Each confirmed one goes up again (a
            # refresh if the server has it, the request again if it lost it), once per
            # session; what the server really has is asked again later.
            if not recheck:
                for record in live:
                    if record.confirmed and record.key not in self._in_flight:
                        await self._reinstall(record, now)
            self._recheck_later(cuid)
            self._save()
            return
        reinstalled = False
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
            if present is None:
                self._recheck_later(cuid)  # unknown: keep them all, look again later
            else:
                for record in self.table.of_cuid(cuid):
                    if record.confirmed and record.mid not in present \
                            and record.key not in self._in_flight:
                        log.info("cuid=%s mid=%d was superseded upstream", cuid, record.mid)
                        self.table.remove(cuid, record.mid)
        self._save()

    async def _present(self, cuid: str, cdid: str | None) -> dict[int, int | None] | None:
        """mid -> remaining lifetime of the client's requests the upstream server has; {}
        when it says it has none (4.04, or an empty list); None when its answer does not
        say (logged and counted)."""
        upstream = self.upstream
        assert upstream is not None
        path = build_path(Resource.MITIGATE, cdid=cdid, cuid=cuid)
        reply = await upstream.forward(DotsRequest(Method.GET, path), mid=None,
                                       timeout=self.settings.request_timeout)
        if reply.code is Code.NOT_FOUND:
            return {}  # RFC 9132 §4.4.2: 4.04 when the client has no request there
        if reply.ok and isinstance(reply.message, MitigationScope):
            self.table.note_statuses(cuid, reply.message)
            return {s.mid: s.lifetime for s in reply.scopes if s.mid is not None}
        self._unreadable(reply, f"the list of cuid={cuid}")
        return None

    def _unreadable(self, reply: Reply, what: str) -> None:
        self.unreadable += 1
        why = reply.diagnostic or ("no mitigation list in the body" if reply.ok
                                   else "no diagnostic")
        log.warning("upstream %s answered %s for %s, which says nothing of what it has "
                    "(%s): the gateway keeps its records and asks again later",
                    reply.endpoint.uri, reply.dotted, what, why)

    def _recheck_later(self, cuid: str) -> None:
        """Ask for ``cuid``'s list again on this session, later (see the module docstring)."""
        upstream = self.upstream
        if upstream is None or cuid in self._rechecks:
            return
        self._rechecks[cuid] = 0
        self._spawn(self._recheck(cuid, upstream.session))

    async def _recheck(self, cuid: str, session: ClientSession | None) -> None:
        try:
            for attempt in range(RECHECK_ATTEMPTS):
                self._rechecks[cuid] = attempt + 1
                await asyncio.sleep(min(RECHECK_MAX_DELAY,
                                        self.settings.recheck_after * 2 ** attempt))
                upstream = self.upstream
                if upstream is None or upstream.session is not session or session is None \
                        or session.closed:
                    return  # a new session reconciles everything anyway
                before = self.unreadable
                try:
                    await self._reconcile_client(cuid, recheck=True)
                except NetworkError as exc:
                    log.warning("checking cuid=%s on %s again failed: %s", cuid,
                                upstream.name, exc)
                    continue
                if self.unreadable == before:
                    return  # settled
            log.error("upstream never said which requests of cuid=%s it has (%d attempts); "
                      "keeping the gateway's records until the next upstream session", cuid,
                      RECHECK_ATTEMPTS)
        finally:
            self._rechecks.pop(cuid, None)

    @property
    def rechecks_pending(self) -> int:
        """Clients whose upstream list is to be asked for again."""
        return len(self._rechecks)

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
            log_event(log, logging.INFO, "mitigation.reinstalled", "mitigation re-installed "
                      "upstream", upstream=reply.endpoint.uri, cuid=record.cuid, mid=record.mid)
        elif reply.raw_code >> 5 == 5:
            # Not a refusal: the server could not say now. Keep it; the list is asked for
            # again later and settles it.
            self._unreadable(reply, f"re-installing cuid={record.cuid} mid={record.mid}")
            self._recheck_later(record.cuid)
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
        # The activation is on disk (client_lost saved it) before it changes the upstream.
        if not await self._durable():
            return
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
