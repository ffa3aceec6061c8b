"""The DOTS client core: builds requests and interprets responses (RFC 9132 §4, client side).

It owns the cuid, the monotonic mid and sid counters, session configuration tracking and
the client heartbeat monitor. Sending, retransmitting and Happy Eyeballs belong to the
client role; this core only says what to send and what an answer means.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from gateway.dots.codec import decode_message, encode_message
from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, AttackStatus, Code, ConflictCause, Method
from gateway.dots.errors import DotsProtocolError, DotsUsageError
from gateway.dots.heartbeat import HeartbeatMonitor, Role
from gateway.dots.message import DotsRequest, DotsResponse
from gateway.dots.model import (
    ConflictInformation,
    Heartbeat,
    Message,
    MitigationScope,
    RedirectedSignal,
    Scope,
    SignalConfig,
)
from gateway.dots.session_config import ClientSessionConfig
from gateway.dots.uri import ContentFilter, Resource, build_path

log = logging.getLogger(__name__)

#: RFC 9132 §4.4.1.1: at 3/4 of 2^32-1 the mid rolls over to 0 when no attack is detected.
MID_ROLLOVER = 3221225471


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a response means to the client."""

    code: Code
    message: Message | None = None
    diagnostic: str = ""
    max_age: int | None = None
    #: 4.09 with cause 3: a new cuid was generated; resend the request with it.
    cuid_changed: bool = False

    @property
    def ok(self) -> bool:
        return self.code.is_success

    @property
    def conflict(self) -> ConflictInformation | None:
        if isinstance(self.message, MitigationScope) and self.message.scope:
            return self.message.scope[0].conflict_information
        return None

    @property
    def redirect(self) -> RedirectedSignal | None:
        return self.message if isinstance(self.message, RedirectedSignal) else None


class DotsClientCore:
    def __init__(self, cuid: str, now: float, *, next_mid: int = 0,
                 new_cuid: Callable[[], str] | None = None,
                 config: ClientSessionConfig | None = None) -> None:
        self.cuid = cuid
        self.next_mid = next_mid
        self.under_attack = False
        self._new_cuid = new_cuid
        self.config = config or ClientSessionConfig()
        params = self.config.current[False]
        self.heartbeat = HeartbeatMonitor(Role.CLIENT, now,
                                          heartbeat_interval=params.heartbeat_interval,
                                          missing_hb_allowed=params.missing_hb_allowed)

    # --- identifiers -------------------------------------------------------------------------

    def allocate_mid(self) -> int:
        """The next mid: monotonic, rolling over to 0 at 3/4 of 2^32-1 unless under attack."""
        if self.next_mid >= MID_ROLLOVER and not self.under_attack:
            log.info("mid rollover cuid=%s", self.cuid)
            self.next_mid = 0
        if self.next_mid > 2**32 - 1:
            raise DotsUsageError("mid space exhausted")
        mid = self.next_mid
        self.next_mid += 1
        return mid

    def set_under_attack(self, under_attack: bool) -> None:
        """Attack time changes the rules: no loss declaration, no config refresh (§4.5.3, §4.7)."""
        self.under_attack = under_attack
        self.heartbeat.under_attack = under_attack

    # --- requests ----------------------------------------------------------------------------

    def mitigation_request(self, scope: Scope, mid: int | None = None) -> DotsRequest:
        """PUT a new request (or a refresh, when ``mid`` names an existing one)."""
        if scope.lifetime is None:
            raise DotsUsageError("a mitigation request needs a lifetime (RFC 9132 §4.4.1.1)")
        if not scope.has_target():
            raise DotsUsageError("a mitigation request needs a target")
        mid = self.allocate_mid() if mid is None else mid
        return self._put(Resource.MITIGATE, MitigationScope((scope,)), mid=mid)

    def efficacy_update(self, mid: int, scope: Scope, attack_status: AttackStatus) -> DotsRequest:
        """PUT with all original parameters, attack-status and an empty If-Match (§4.4.3)."""
        from dataclasses import replace

        body = MitigationScope((replace(scope, attack_status=attack_status),))
        request = self._put(Resource.MITIGATE, body, mid=mid)
        return replace(request, if_match=(b"",))

    def withdraw(self, mid: int) -> DotsRequest:
        return DotsRequest(Method.DELETE, build_path(Resource.MITIGATE, cuid=self.cuid, mid=mid))

    def retrieve(self, mid: int | None = None, *, observe: bool | None = None,
                 content: ContentFilter = ContentFilter.ALL) -> DotsRequest:
        query = () if content is ContentFilter.ALL else (f"c={content.value}",)
        return DotsRequest(Method.GET, build_path(Resource.MITIGATE, cuid=self.cuid, mid=mid),
                           query=query,
                           observe=None if observe is None else (0 if observe else 1))

    def config_get(self, sid: int | None = None) -> DotsRequest:
        return DotsRequest(Method.GET, build_path(Resource.CONFIG, sid=sid))

    def config_put(self, config: SignalConfig, sid: int | None = None) -> DotsRequest:
        sid = self.config.allocate_sid() if sid is None else sid
        return self._put(Resource.CONFIG, config, sid=sid)

    def config_delete(self, sid: int | None = None) -> DotsRequest:
        return DotsRequest(Method.DELETE, build_path(Resource.CONFIG, sid=sid))

    # --- telemetry (RFC 9244; bodies are ready-made CBOR, see gateway.dots.telemetry) -------

    def telemetry_setup_put(self, body: bytes, tsid: int) -> DotsRequest:
        """PUT /tm-setup/cuid/tsid (§7.1.2): 2.01 or 2.04; 4.22 for values out of range."""
        return DotsRequest(Method.PUT, build_path(Resource.TM_SETUP, cuid=self.cuid, tsid=tsid),
                           payload=body, content_format=CONTENT_FORMAT_DOTS_CBOR)

    def telemetry_setup_get(self, tsid: int | None = None) -> DotsRequest:
        """GET /tm-setup: the server's limits and all setups (§7.1.1), or one tsid."""
        return DotsRequest(Method.GET, build_path(Resource.TM_SETUP, cuid=self.cuid, tsid=tsid))

    def telemetry_setup_delete(self, tsid: int | None = None) -> DotsRequest:
        """DELETE one tsid (§7.1.4), or every setup of ours (§7.4)."""
        return DotsRequest(Method.DELETE,
                           build_path(Resource.TM_SETUP, cuid=self.cuid, tsid=tsid))

    def telemetry_put(self, body: bytes, tmid: int) -> DotsRequest:
        """PUT /tm/cuid/tmid: pre-or-ongoing-mitigation telemetry (§8.2): 2.04."""
        return DotsRequest(Method.PUT, build_path(Resource.TM, cuid=self.cuid, tmid=tmid),
                           payload=body, content_format=CONTENT_FORMAT_DOTS_CBOR)

    def telemetry_get(self, tmid: int | None = None, *,
                      observe: bool | None = None) -> DotsRequest:
        return DotsRequest(Method.GET, build_path(Resource.TM, cuid=self.cuid, tmid=tmid),
                           observe=None if observe is None else (0 if observe else 1))

    def telemetry_delete(self, tmid: int | None = None) -> DotsRequest:
        return DotsRequest(Method.DELETE, build_path(Resource.TM, cuid=self.cuid, tmid=tmid))

    def heartbeat_request(self, now: float) -> DotsRequest:
        body = Heartbeat(peer_hb_status=self.heartbeat.peer_hb_status(now))
        return DotsRequest(Method.PUT, build_path(Resource.HB), payload=encode_message(body),
                           content_format=CONTENT_FORMAT_DOTS_CBOR)

    def _put(self, resource: Resource, body: Message, *, mid: int | None = None,
             sid: int | None = None) -> DotsRequest:
        cuid = self.cuid if resource is Resource.MITIGATE else None
        return DotsRequest(Method.PUT, build_path(resource, cuid=cuid, mid=mid, sid=sid),
                           payload=encode_message(body),
                           content_format=CONTENT_FORMAT_DOTS_CBOR)

    # --- responses ---------------------------------------------------------------------------

    def receive_response(self, request: DotsRequest, response: DotsResponse,
                         now: float) -> Outcome:
        """Interpret a response; any answer at all proves the server is alive (§4.7)."""
        self.heartbeat.response_received(now)
        message: Message | None = None
        diagnostic = response.diagnostic
        telemetry = request.path[2:3] in (("tm",), ("tm-setup",))
        if (response.payload and response.content_format == CONTENT_FORMAT_DOTS_CBOR
                and not (telemetry and response.code.is_success)):
            # Telemetry bodies (RFC 9244) are not RFC 9132 messages: the caller reads them
            # with gateway.dots.telemetry; a redirect (5.03) still is one.
            try:
                message = decode_message(response.payload)
            except DotsProtocolError as exc:
                diagnostic = f"server sent an undecodable body: {exc.diagnostic}"
        outcome = Outcome(response.code, message, diagnostic, response.max_age)
        if response.code is Code.CONFLICT and outcome.conflict is not None and (
            outcome.conflict.conflict_cause is ConflictCause.CUID_COLLISION
        ):
            return self._cuid_collision(outcome)
        if isinstance(message, SignalConfig) and response.code is Code.CONTENT:
            self.config.adopt(message, response.max_age, now)
            self.apply_parameters(now)
        return outcome

    def _cuid_collision(self, outcome: Outcome) -> Outcome:
        # §4.4.1.1: a new cuid MUST be generated, e.g. a UUID (the role injects the generator).
        if self._new_cuid is None:
            return outcome
        old, self.cuid = self.cuid, self._new_cuid()
        log.warning("cuid collision: %s replaced by %s", old, self.cuid)
        return Outcome(outcome.code, outcome.message, outcome.diagnostic, outcome.max_age,
                       cuid_changed=True)

    def apply_parameters(self, now: float, *, mitigating: bool | None = None) -> None:
        """Switch the heartbeat to the set in force (mitigating while requests are active)."""
        params = self.config.current[self.under_attack if mitigating is None else mitigating]
        self.heartbeat.configure(params.heartbeat_interval, params.missing_hb_allowed, now)
