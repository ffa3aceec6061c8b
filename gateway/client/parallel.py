"""The client's parallel session while its server is silent during an attack (RFC 9132 §4.7).

``ParallelSessions`` is the part of ``gateway.client.channel.SignalChannel`` that carries
out ``gateway.dots.parallel.ParallelPlan``: when the heartbeat monitor advises it (under
attack, missing-hb-allowed heartbeats unanswered) it opens a second session to the server
of the current one (resuming with the session ticket when there is one, else the same
Happy Eyeballs race as any establishment: an anycast address then lands on whichever node
holds the route now), sends the active mitigation requests on it (``_parallel_requests``:
refreshes with the same cuid and mid and the remaining lifetime, so a node that lacks one
installs it and one that has it just refreshes it), and keeps heartbeating on the old
session. If the new session answers and the old stays silent through one more heartbeat,
the new one becomes the session (``_after_connect`` runs on it: configuration, observations
registered again); if the old one answers first, the parallel session or attempt is
dropped. It uses the channel's state and methods; it is not used alone.

Asyncio glue only; imports nothing of the server role, the relay or the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.client.connect import NetworkError
from gateway.client.messages import coap_request, dots_response, request_label
from gateway.client.session import ClientSession
from gateway.client.transmission import NON_RETRY_INTERVAL
from gateway.coap.message import CoapMessage
from gateway.dots.message import DotsRequest
from gateway.dots.parallel import (
    ConfirmOld,
    DropParallel,
    OpenParallel,
    ParallelState,
    PromoteParallel,
)
from gateway.eventlog import log_event

log = logging.getLogger("gateway.client.channel")  # one logger for the channel's lines


class ParallelSessions:
    """Mixed into ``SignalChannel``: see the module docstring."""

    _parallel_session: ClientSession | None
    _parallel_task: asyncio.Task[Any] | None

    # --- hooks for the role ------------------------------------------------------------------

    def _parallel_requests(self) -> list[DotsRequest]:
        """What to send on a new parallel session: the role's active mitigation requests
        (§4.7: on both sessions). Empty: a heartbeat probes it instead."""
        return []

    # --- inputs from the heartbeat side ------------------------------------------------------

    def _parallel_advised(self, now: float) -> None:
        self.parallel.advised(now)
        self._run_parallel(now)

    def _parallel_old_alive(self, now: float) -> None:
        """The current (old) session answered: a parallel one is redundant."""
        if self.parallel.state is ParallelState.IDLE and not self.parallel.old_silent:
            return
        self.parallel.old_answered(now)
        self._run_parallel(now)

    def _parallel_due_at(self) -> float | None:
        return self.parallel.get_timer() if not self._closing else None

    def _parallel_timer(self, now: float) -> None:
        self.parallel.handle_timer(now)
        self._run_parallel(now)

    def _abandon_parallel(self, reason: str) -> None:
        """The old session ended or the client closes: no parallel session any more."""
        if self.parallel.state is not ParallelState.IDLE:
            self._drop_parallel(reason)
        self.parallel.abandon()

    # --- carrying out the plan ---------------------------------------------------------------

    def _run_parallel(self, now: float) -> None:
        while (command := self.parallel.next_event()) is not None:
            if isinstance(command, OpenParallel):
                old = self.session
                if old is None or self._closing:
                    self.parallel.abandon()
                    continue
                self.stats.parallel_attempts += 1
                log_event(log, logging.WARNING, "upstream.parallel_opening",
                          "server silent during an attack: keeping the session, opening another "
                          "in parallel (RFC 9132 §4.7)",
                          upstream=old.endpoint.uri, unanswered=self.core.heartbeat.outstanding)
                task = asyncio.ensure_future(self._open_parallel(old))
                self._parallel_task = task
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
            elif isinstance(command, ConfirmOld):
                self._send_heartbeat(now)  # one last chance for the old session
            elif isinstance(command, PromoteParallel):
                self._spawn(self._promote_parallel())
            elif isinstance(command, DropParallel):
                self._drop_parallel(command.reason)
        self._arm()

    async def _open_parallel(self, old: ClientSession) -> None:
        plan = self.parallel
        try:
            session = await self._parallel_attempt(old)
        except NetworkError as exc:
            if plan.state is ParallelState.CONNECTING and old is self.session:
                self._parallel_failed(old, f"no session: {exc}")
            return
        if (self._closing or old is not self.session
                or plan.state is not ParallelState.CONNECTING):
            session.close("parallel session not needed any more")
            return
        self._parallel_session = session
        plan.established(self.clock())
        log_event(log, logging.INFO, "upstream.parallel_established",
                  "parallel session established; sending the mitigation requests on it",
                  upstream=session.endpoint.uri, resumed=session.resumed)
        answered = await self._probe_parallel(session)
        if session is not self._parallel_session or plan.state is not ParallelState.PROBING:
            return  # dropped meanwhile (the old session answered)
        if answered:
            plan.parallel_answered(self.clock())
            self._run_parallel(self.clock())
        else:
            self._parallel_failed(old, "the parallel session did not answer")

    async def _parallel_attempt(self, old: ClientSession) -> ClientSession:
        """The same server again: resumption with our ticket first (§4.7), else a full race
        over the servers the channel would use now."""
        endpoint, ticket = self._ticket_endpoint, self._ticket
        if endpoint is not None and ticket is not None and endpoint == old.endpoint:
            try:
                return await self._attempt(endpoint, resume=ticket)
            except NetworkError as exc:
                log.info("parallel session: resumption with %s failed: %s", endpoint, exc)
        alternate = [] if self.alternate is None else [self.alternate]
        return await self._race([*alternate, *self.servers])

    async def _probe_parallel(self, session: ClientSession) -> bool:
        """Send the role's requests on the new session; True once any is answered. The
        first is sent again every 3 s (§4.4) up to ``max_attempts`` times; the answers do
        not go through the core, whose heartbeat monitor watches the old session."""
        requests = self._parallel_requests() or [self.core.heartbeat_request(self.clock())]
        answered = False
        for request in requests:
            rounds = 1 if answered else max(1, self.max_attempts)
            for _ in range(rounds):
                if session.closed or self.parallel.state is not ParallelState.PROBING:
                    return False
                outcome = await self._send_once(session, coap_request(request), False,
                                                NON_RETRY_INTERVAL + 0.5, NON_RETRY_INTERVAL)
                if isinstance(outcome, CoapMessage):
                    answered = True
                    response, raw = dots_response(outcome)
                    log.info("parallel session: %s answered %d.%02d", request_label(request),
                             raw >> 5, raw & 31)
                    break
        return answered

    def _parallel_failed(self, old: ClientSession, reason: str) -> None:
        session, self._parallel_session = self._parallel_session, None
        if session is not None:
            session.close(reason)
        at = self.parallel.attempt_failed(self.clock())
        self.stats.parallel_failures += 1
        log_event(log, logging.WARNING, "upstream.parallel_failed",
                  "parallel session failed; the old session stays", upstream=old.endpoint.uri,
                  reason=reason, retry_in=round(max(0.0, at - self.clock()), 1))
        self._arm()

    async def _promote_parallel(self) -> None:
        new, old = self._parallel_session, self.session
        self._parallel_session = None
        if old is None or self._closing:
            self.parallel.abandon()
            return
        if new is None or new.closed:
            at = self.parallel.promotion_failed(self.clock())
            self.stats.parallel_failures += 1
            log_event(log, logging.WARNING, "upstream.parallel_failed",
                      "parallel session ended before it could replace the old one",
                      upstream=old.endpoint.uri, reason="the parallel session ended",
                      retry_in=round(max(0.0, at - self.clock()), 1))
            self._arm()
            return
        self.stats.parallel_promoted += 1
        log_event(log, logging.WARNING, "upstream.parallel_promoted",
                  "the old session stayed silent: the parallel session replaces it",
                  upstream=new.endpoint.uri, replaced=old.endpoint.uri)
        self._install(new, replaced_reason="silent: replaced by the parallel session")
        with self._moving():
            await self._after_connect()

    def _drop_parallel(self, reason: str) -> None:
        task, self._parallel_task = self._parallel_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        session, self._parallel_session = self._parallel_session, None
        if session is not None:
            session.close(f"parallel session dropped: {reason}")
        self.stats.parallel_dropped += 1
        endpoint = session.endpoint if session is not None else (
            self.session.endpoint if self.session is not None else None)
        log_event(log, logging.INFO, "upstream.parallel_dropped",
                  "parallel session dropped; the old session stays",
                  upstream=None if endpoint is None else endpoint.uri, reason=reason)
