"""A client core and a server core joined in memory: requests, codes, loss, config."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.dots.client import MID_ROLLOVER, DotsClientCore
from gateway.dots.codec import decode_message, encode_message
from gateway.dots.codes import AttackStatus, Code, Method, Status
from gateway.dots.errors import DotsUsageError
from gateway.dots.message import DotsRequest, DotsResponse, Requester
from gateway.dots.mitigation_lifecycle import ApplyMitigation, MitigationRemoved
from gateway.dots.model import MitigationScope, RedirectedSignal, Scope, SignalConfig, parse_prefix
from gateway.dots.server import DotsServerCore, SendSessionHeartbeat, SessionLost
from gateway.dots.uri import ContentFilter

CUID = "dz6pHjaADkaFTbjr0JGBpw"


class Pair:
    def __init__(self, *, trusted: bool = False, credential: str = CUID) -> None:
        self.now = 0.0
        self.server = DotsServerCore()
        self.session = self.server.open_session(Requester(credential, trusted), self.now)
        self.client = DotsClientCore(CUID, self.now, new_cuid=lambda: "f30d281ce6b64fc5a0b91e")

    def send(self, request: DotsRequest) -> DotsResponse | None:
        return self.server.receive_request(self.session, request, self.now)

    def exchange(self, request: DotsRequest):  # type: ignore[no-untyped-def]
        response = self.send(request)
        assert response is not None
        return self.client.receive_response(request, response, self.now)


def target(lifetime: int | None = 3600, **kw: object) -> Scope:
    return Scope(target_prefix=(parse_prefix("2001:db8:6401::/64"),), lifetime=lifetime,
                 **kw)  # type: ignore[arg-type]


def test_full_lifecycle_create_get_efficacy_withdraw_terminate() -> None:
    p = Pair()
    put = p.client.mitigation_request(target())
    outcome = p.exchange(put)
    assert outcome.code is Code.CREATED
    assert isinstance(outcome.message, MitigationScope)
    mid = outcome.message.scope[0].mid
    assert mid == 0
    assert any(isinstance(e, ApplyMitigation) for e in p.server.events())

    got = p.exchange(p.client.retrieve(mid, observe=True, content=ContentFilter.NON_CONFIG))
    assert got.code is Code.CONTENT
    assert got.message.scope[0].status is Status.ATTACK_MITIGATION_IN_PROGRESS  # type: ignore[union-attr]

    update = p.client.efficacy_update(mid, target(lifetime=None), AttackStatus.UNDER_ATTACK)
    assert update.if_match == (b"",)
    assert p.exchange(update).code is Code.CHANGED

    assert p.exchange(p.client.withdraw(mid)).code is Code.DELETED
    p.now = 121.0
    p.server.handle_timer(p.now)
    removed = [e for e in p.server.events() if isinstance(e, MitigationRemoved)]
    assert removed and removed[0].status is Status.ATTACK_MITIGATION_TERMINATED
    gone = p.exchange(p.client.retrieve())
    assert gone.code is Code.NOT_FOUND and "no mitigation" in gone.diagnostic


def test_efficacy_update_for_unknown_mid_gets_no_response() -> None:
    p = Pair()
    update = p.client.efficacy_update(42, target(lifetime=None), AttackStatus.UNDER_ATTACK)
    assert p.send(update) is None


@pytest.mark.parametrize(("request_", "code", "diagnostic"), [
    (DotsRequest(Method.POST, (".well-known", "dots", "mitigate", f"cuid={CUID}", "mid=1")),
     Code.METHOD_NOT_ALLOWED, "POST is not used on mitigate"),
    (DotsRequest(Method.PUT, (".well-known", "dots", "mitigate", f"cuid={CUID}")),
     Code.BAD_REQUEST, "needs the 'mid'"),
    (DotsRequest(Method.DELETE, (".well-known", "dots", "mitigate", f"cuid={CUID}")),
     Code.BAD_REQUEST, "needs the 'mid'"),
    (DotsRequest(Method.PUT, (".well-known", "dots", "mitigate", f"cuid={CUID}", "mid=1"),
                 payload=b"\xa1\x01", content_format=60),
     Code.UNSUPPORTED_CONTENT_FORMAT, "not application/dots+cbor"),
    (DotsRequest(Method.PUT, (".well-known", "dots", "mitigate", f"cuid={CUID}", "mid=1"),
                 payload=b"\xff\x00"), Code.BAD_REQUEST, "undecodable CBOR"),
    (DotsRequest(Method.PUT, (".well-known", "dots", "mitigate", f"cuid={CUID}", "mid=1")),
     Code.BAD_REQUEST, "needs an application/dots+cbor body"),
    (DotsRequest(Method.GET, (".well-known", "dots", "mitigate", "mid=1", f"cuid={CUID}")),
     Code.BAD_REQUEST, "must not follow"),
    (DotsRequest(Method.GET, (".well-known", "dots", "nothing")), Code.NOT_FOUND, "unknown DOTS"),
    (DotsRequest(Method.GET, (".well-known", "dots", "hb")), Code.METHOD_NOT_ALLOWED, "hb"),
    (DotsRequest(Method.POST, (".well-known", "dots", "config")), Code.METHOD_NOT_ALLOWED,
     "config"),
    (DotsRequest(Method.PUT, (".well-known", "dots", "config")), Code.BAD_REQUEST, "'sid'"),
    (DotsRequest(Method.GET, (".well-known", "dots", "config", "sid=9")), Code.NOT_FOUND, "sid 9"),
    (DotsRequest(Method.GET, (".well-known", "dots", "mitigate", f"cuid={CUID}"),
                 query=("c=x",)), Code.BAD_REQUEST, "must be c, n or a"),
])
def test_each_bad_request_gets_its_code_and_diagnostic(request_: DotsRequest, code: Code,
                                                      diagnostic: str) -> None:
    response = Pair().send(request_)
    assert response is not None and response.code is code
    assert response.content_format == 0
    assert diagnostic in response.diagnostic


def test_wrong_message_type_on_each_resource_is_4_00() -> None:
    p = Pair()
    hb_body = p.client.heartbeat_request(0.0).payload
    for path in ((".well-known", "dots", "mitigate", f"cuid={CUID}", "mid=1"),
                 (".well-known", "dots", "config", "sid=1")):
        response = p.send(DotsRequest(Method.PUT, path, payload=hb_body))
        assert response is not None and response.code is Code.BAD_REQUEST
    config_body = encode_message(SignalConfig())
    response = p.send(DotsRequest(Method.PUT, (".well-known", "dots", "hb"), payload=config_body))
    assert response is not None and "heartbeat container" in response.diagnostic


def test_cdid_is_ignored_from_clients_and_honoured_from_trusted_gateways() -> None:
    path = (".well-known", "dots", "mitigate", "cdid=7eeaf349529eb55ed50113", f"cuid={CUID}",
            "mid=1")
    body = encode_message(MitigationScope((target(),)))
    for trusted, expected_cdid in ((False, None), (True, "7eeaf349529eb55ed50113")):
        p = Pair(trusted=trusted)
        response = p.send(DotsRequest(Method.PUT, path, payload=body))
        assert response is not None and response.code is Code.CREATED
        record = p.server.store.lookup(CUID, 1)
        assert record is not None and record.owner.cdid == expected_cdid


def test_cuid_collision_makes_the_client_pick_a_new_cuid() -> None:
    p = Pair()
    p.exchange(p.client.mitigation_request(target()))
    intruder = p.server.open_session(Requester("someone-else"), 0.0)
    request = p.client.mitigation_request(target())
    response = p.server.receive_request(intruder, request, 0.0)
    assert response is not None and response.code is Code.CONFLICT
    outcome = p.client.receive_response(request, response, 0.0)
    assert outcome.cuid_changed and p.client.cuid == "f30d281ce6b64fc5a0b91e"


def test_config_negotiation_switches_sets_with_mitigation_activity() -> None:
    p = Pair()
    offered = p.exchange(p.client.config_get())
    assert offered.code is Code.CONTENT and offered.max_age == 3600
    assert isinstance(offered.message, SignalConfig)
    p.client.config.preferred[False] = replace(p.client.config.preferred[False],
                                               heartbeat_interval=120)
    p.client.config.preferred[True] = replace(p.client.config.preferred[True],
                                              heartbeat_interval=15)
    proposal = p.client.config_put(p.client.config.proposal(offered.message))
    assert p.exchange(proposal).code is Code.CREATED
    assert p.session.heartbeat.interval == 120  # idle set in force
    p.exchange(p.client.mitigation_request(target()))
    assert p.session.heartbeat.interval == 15  # mitigating set in force
    assert p.exchange(p.client.config_delete()).code is Code.DELETED
    assert p.session.heartbeat.interval == 30


def test_heartbeats_both_ways_and_loss_arms_preconfigured_requests() -> None:
    p = Pair()
    hb = p.exchange(p.client.heartbeat_request(0.0))
    assert hb.code is Code.CHANGED and hb.message is None
    # the client has not heard us yet (peer-hb-status false): the server answers at once
    assert [e for e in p.server.events() if isinstance(e, SendSessionHeartbeat)] == [
        SendSessionHeartbeat(p.session.id, True)]
    p.exchange(p.client.mitigation_request(target(trigger_mitigation=False)))
    p.now = 30.0
    p.server.handle_timer(p.now)
    sends = [e for e in p.server.events() if isinstance(e, SendSessionHeartbeat)]
    assert sends == [SendSessionHeartbeat(p.session.id, True)]
    p.server.heartbeat_answered(p.session, p.now)
    # the client goes silent: 15 unanswered heartbeats and 450 s without traffic
    lost: list[SessionLost] = []
    while (t := p.server.get_timer()) is not None and t < 2000:
        p.server.handle_timer(t)
        lost.extend(e for e in p.server.events() if isinstance(e, SessionLost))
    assert lost == [SessionLost(p.session.id, frozenset({CUID}))]
    record = p.server.store.lookup(CUID, 0)
    assert record is not None and record.status is Status.ATTACK_MITIGATION_IN_PROGRESS
    assert p.session.closed


def test_client_mid_allocation_rolls_over_unless_under_attack() -> None:
    client = DotsClientCore(CUID, 0.0, next_mid=MID_ROLLOVER)
    assert client.allocate_mid() == 0
    client = DotsClientCore(CUID, 0.0, next_mid=MID_ROLLOVER)
    client.set_under_attack(True)
    assert client.allocate_mid() == MID_ROLLOVER
    with pytest.raises(DotsUsageError):
        client.mitigation_request(Scope(lifetime=10))
    with pytest.raises(DotsUsageError):
        client.mitigation_request(target(lifetime=None))


def test_client_reads_redirects_and_bad_bodies() -> None:
    client = DotsClientCore(CUID, 0.0)
    request = client.heartbeat_request(0.0)
    redirect = RedirectedSignal("alt-server.example")
    outcome = client.receive_response(request, DotsResponse.with_body(
        Code.SERVICE_UNAVAILABLE, encode_message(redirect), max_age=600), 1.0)
    assert outcome.redirect == redirect and outcome.max_age == 600 and not outcome.ok
    garbage = client.receive_response(request, DotsResponse.with_body(Code.CONTENT, b"\xff"), 1.0)
    assert garbage.message is None and "undecodable" in garbage.diagnostic
    assert decode_message(request.payload)
