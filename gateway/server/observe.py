"""Observe on the server side: registrations, and the pacing of notifications.

RFC 7641 observations of ``mitigate``, of the session configuration (RFC 9132 §4.5.3) and of
pre-or-ongoing-mitigation telemetry (``tm``, RFC 9244 §8.3),
kept per session, at most ``max_observations`` of them (RFC 7641 §4.1: a registration beyond
it is answered without Observe); changes in the store mark the observations they concern, and
marked ones are sent at most once every ``NOTIFICATION_INTERVAL`` per session, plus a periodic
status every ``PERIODIC_NOTIFICATION`` (RFC 9132 §4.4.2.1). A round of marked notifications
goes out in batches of ``NOTIFICATION_BUDGET`` rendered mitigations, one batch per loop turn,
so one change that many observations watch cannot hold up the requests of other sessions.
``ObserveNotifications`` is a part of ``ServerRole`` (the gateway role overrides
``_send_notification``).

Asyncio glue only; must not import the role at run time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.coap.errors import BadOptionError
from gateway.coap.layer import MessageLayer
from gateway.coap.message import CoapMessage
from gateway.dots.codec import encode_message
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code, Method, Status
from gateway.dots.errors import DotsProtocolError
from gateway.dots.message import DotsRequest, DotsResponse
from gateway.dots.mitigation_lifecycle import Owner
from gateway.dots.model import MitigationScope, Scope
from gateway.dots.uri import ContentFilter, Resource, parse_path, parse_query
from gateway.server.blocks import _block2
from gateway.server.qblock import notification_block

if TYPE_CHECKING:
    from gateway.dots.server import DotsServerCore
    from gateway.server.session import SignalSession

#: RFC 9132 §4.4.2.1: without an RTT estimate, at most one notification every 3 s.
NOTIFICATION_INTERVAL = 3.0
#: RFC 9132 §4.4.2.1: status is also sent periodically, not only on changes.
PERIODIC_NOTIFICATION = 60.0
#: Mitigations rendered into notifications in one loop turn, per session: a notification
#: costs one per mitigation its body lists (the whole list for an observation of all of a
#: client's). At least one notification goes out per turn, however large; the rest wait for
#: the next turn (the session's timer, armed at once).
NOTIFICATION_BUDGET = 64
#: Observations per session unless configured (``[session] max_observations``).
DEFAULT_MAX_OBSERVATIONS = 1024
_OBSERVE_MODULUS = 1 << 24
_GET = Method.GET  # per request: ``Method.X`` is a slow lookup in Python 3.11

log = logging.getLogger(__name__)

@dataclass
class Observation:
    token: bytes
    cuid: str | None  # None: an observation of this session's config
    mid: int | None  # None: all of the client's mitigations
    content: ContentFilter
    sequence: int = 2
    last_sent: float = 0.0
    #: An observation of ``/tm`` (RFC 9244 §8.3; ``mid`` holds the tmid) and not of
    #: ``mitigate``.
    telemetry: bool = False
    #: The block size (SZX) the registration asked for with Block2, if any (RFC 7959 §2.6).
    szx: int | None = None



class ObserveNotifications:
    """The Observe part of ``ServerRole``: what is observed, marked and sent when."""

    core: DotsServerCore
    sessions: dict[int, SignalSession]
    #: The sessions that may hold observations or notifications to send, by session id: each
    #: one that gets an observation (``_keep_observation``) is added; the tick drops those it
    #: finds with neither, or closed. Timers and status changes look at these only, not at
    #: every session (50,000 sessions cost ~19 ms per look on this VM, twice a second).
    observing: dict[int, SignalSession]
    #: Observations one session may hold; registrations declined for it so far.
    max_observations: int
    observations_declined: int

    def _observation_allowed(self, session: SignalSession, token: bytes) -> bool:
        """Whether a registration with ``token`` may be kept: a new token only while the
        session holds fewer than ``max_observations`` (RFC 7641 §4.1 lets the server decline:
        the answer then carries no Observe option); a known token re-registers (§4.1)."""
        if token in session.observations or len(session.observations) < self.max_observations:
            return True
        self.observations_declined += 1
        log.info("observation declined peer=%s: the session holds %d observations, the limit "
                 "(max_observations)", session.conn.remote, len(session.observations))
        return False

    def _observe(self, session: SignalSession, msg: CoapMessage, request: DotsRequest,
                 response: DotsResponse, now: float) -> int | None:
        """Register or cancel an observation (RFC 7641) of ``mitigate``; the Observe value
        to put in the response, or None."""
        if request.method is not _GET or request.observe is None:
            return None
        try:
            path = parse_path(request.path)
        except DotsProtocolError:
            return None
        if request.observe == 1 or not response.code.is_success:
            session.observations.pop(msg.token, None)
            return None
        if not self._observation_allowed(session, msg.token):
            return None
        if path.resource is Resource.CONFIG:
            # RFC 9132 §4.5.3: notifications of configuration changes.
            self._keep_observation(session, Observation(
                msg.token, None, path.sid, ContentFilter.ALL, last_sent=now,
                szx=_asked_szx(msg)))
            return 1
        if path.resource is Resource.TM and path.cuid is not None:
            # RFC 9244 §6: Observe MUST be supported on 'tm'.
            self._keep_observation(session, Observation(
                msg.token, path.cuid, path.tmid, ContentFilter.ALL, last_sent=now,
                telemetry=True))
            return 1
        if path.resource is not Resource.MITIGATE or path.cuid is None:
            return None
        try:
            content = parse_query(request.query)
        except DotsProtocolError:
            content = ContentFilter.ALL
        observation = Observation(msg.token, path.cuid, path.mid, content, last_sent=now,
                                  szx=_asked_szx(msg))
        self._keep_observation(session, observation)
        return 1

    def _keep_observation(self, session: SignalSession, observation: Observation) -> None:
        """Register (or renew) ``observation`` on ``session``: the only way one is added."""
        session.observations[observation.token] = observation
        self.observing[session.dots.id] = session

    def _mark_config_observers(self, session: SignalSession) -> None:
        for token, obs in session.observations.items():
            if obs.cuid is None:
                session.pending_notifications.add(token)

    def _mark_periodic(self, session: SignalSession, now: float) -> None:
        for token, obs in session.observations.items():
            if obs.cuid is not None and now - obs.last_sent >= PERIODIC_NOTIFICATION:
                session.pending_notifications.add(token)

    def _mark_telemetry_observers(self, cuids: set[str]) -> None:
        for session in self.observing.values():
            for token, obs in session.observations.items():
                if obs.telemetry and obs.cuid in cuids:
                    session.pending_notifications.add(token)

    def _mark_observers(self, changed: dict[str, set[int]]) -> None:
        for session in self.observing.values():
            for token, obs in session.observations.items():
                if obs.telemetry:
                    continue
                mids = changed.get(obs.cuid) if obs.cuid is not None else None
                if mids and (obs.mid is None or obs.mid in mids):
                    session.pending_notifications.add(token)

    def _notify_due(self, session: SignalSession, now: float) -> None:
        """Send marked notifications if the pacing allows, up to ``NOTIFICATION_BUDGET``;
        what is left stays marked, due at once (the caller arms the session's timer)."""
        pending = session.pending_notifications
        if not pending or now < session.next_notification_at:
            return
        budget = NOTIFICATION_BUDGET
        while pending and budget > 0:
            obs = session.observations.get(pending.pop())
            if obs is None:
                continue
            budget -= self._notification_cost(obs)
            self._send_notification(session, obs, now)
        if not pending:
            session.next_notification_at = now + NOTIFICATION_INTERVAL

    def _notification_cost(self, obs: Observation) -> int:
        """Mitigations the notification will list (the budget's unit)."""
        if obs.cuid is None or obs.mid is not None or obs.telemetry:
            return 1
        return max(1, self.core.store.count(obs.cuid))

    def _send_notification(self, session: SignalSession, obs: Observation, now: float) -> None:
        owner = Owner(session.dots.requester.credential_id)
        obs.last_sent = now
        try:
            if obs.telemetry:
                assert obs.cuid is not None
                # A deleted tmid answers 4.04, which ends the observation (RFC 7641 §3.2).
                payload = self.core.telemetry.tm_body(obs.cuid, obs.mid)
            elif obs.cuid is None:
                payload = encode_message(session.dots.config.get(None))
            else:
                payload = encode_message(self.core.store.get(obs.cuid, obs.mid, owner, now,
                                                             obs.content))
            code = Code.CONTENT
        except DotsProtocolError as exc:
            if obs.mid is None or obs.cuid is None or obs.telemetry:
                code, payload = exc.code, exc.diagnostic.encode()
            else:
                # The request is gone: report its end once, then the observation ends.
                final = MitigationScope((Scope(mid=obs.mid, lifetime=0,
                                               status=Status.ATTACK_MITIGATION_TERMINATED),))
                code, payload = Code.CONTENT, encode_message(final)
        obs.sequence = (obs.sequence + 1) % _OBSERVE_MODULUS
        ended = not code.is_success or (obs.cuid is not None and obs.mid is not None
                                        and not obs.telemetry
                                        and self.core.store.lookup(obs.cuid, obs.mid) is None)
        anchor = CoapMessage(None, int(Method.GET), 0, obs.token)
        message = anchor.response(
            int(code), payload=payload,
            content_format=CONTENT_FORMAT_DOTS_CBOR if code.is_success else 0,
            # RFC 7641 §3.2: a notification without Observe ends the observation visibly.
            observe=None if ended else obs.sequence)
        if isinstance(session.layer, MessageLayer):
            # RFC 7959 §2.6: the first block, of the size the registration asked for (if it
            # did); the client GETs the rest.
            message = _block2(message, notification_block(len(payload), obs.szx))
        # RFC 9132 §4.4.2.1: notifications are always Non-confirmable.
        if isinstance(session.layer, MessageLayer):
            session.layer.send_notification(obs.token, message, now, confirmable=False)
        else:
            session.layer.send_notification(obs.token, message, now)
        if ended:
            session.observations.pop(obs.token, None)


def _asked_szx(msg: CoapMessage) -> int | None:
    try:
        block = msg.block2
    except BadOptionError:
        return None
    return None if block is None else block.szx
