"""RFC 9244 §7.2/§7.3 conflicts between different clients of one domain: a total pipe
capacity or a baseline another client of the same cdid installed is refused with 4.09 and
conflict-information, and the conflict-cause number is the IANA registry's."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code, ConflictCause, Method
from gateway.dots.message import DotsRequest, Requester
from gateway.dots.server import DotsServerCore
from gateway.dots.telemetry import DomainConflict, TelemetryStore, body_from_json, body_to_json
from gateway.dots.uri import Resource, build_path

SETUP = "ietf-dots-telemetry:telemetry-setup"
ALICE, BOB = "alice-cuid-aaaaaaaaaaa", "bob-cuid-bbbbbbbbbbbbbb"


def setup_body(entry: dict[str, Any]) -> bytes:
    return body_from_json({SETUP: {"telemetry": [entry]}})


def pipe(*links: str) -> bytes:
    return setup_body({"total-pipe-capacity": [
        {"link-id": link, "capacity": "10", "unit": "gigabit-ps"} for link in links]})


def baseline(ident: int, prefix: str) -> bytes:
    return setup_body({"baseline": [{"id": ident, "target-prefix": [prefix]}]})


def install(store: TelemetryStore, cuid: str, tsid: int, body: bytes,
            cdid: str | None) -> Code:
    plan = store.plan_setup_put(cuid, tsid, body, cdid)
    store.apply(plan)
    return plan.code


def refusal(store: TelemetryStore, cuid: str, tsid: int, body: bytes,
            cdid: str | None) -> DomainConflict:
    with pytest.raises(DomainConflict) as info:
        store.plan_setup_put(cuid, tsid, body, cdid)
    return info.value


def test_overlapping_pipes_is_the_registry_number() -> None:
    # RFC 9244 §13, "DOTS Signal Channel Conflict Cause Codes": 4 overlapping-pipes (the
    # registry's next value after RFC 9132's 1-3); go-dots' 5 is its own enum's offset.
    assert int(ConflictCause.OVERLAPPING_PIPES) == 4
    assert ConflictCause.OVERLAPPING_PIPES.label == "overlapping-pipes"
    assert ConflictCause.from_label("overlapping-pipes") is ConflictCause.OVERLAPPING_PIPES


def test_pipe_of_another_client_of_the_domain_is_a_409_with_conflict_information() -> None:
    store = TelemetryStore()
    assert install(store, ALICE, 10, pipe("link1"), "example.com") is Code.CREATED
    error = refusal(store, BOB, 20, pipe("link2", "link1"), "example.com")
    assert error.code is Code.CONFLICT and "overlapping-pipes" in error.diagnostic
    response = error.to_response()
    assert response.code is Code.CONFLICT
    assert response.content_format == CONTENT_FORMAT_DOTS_CBOR
    body = cbor2.loads(response.payload)
    # {telemetry-setup: {telemetry: [{tsid, conflict-information: {status, cause}}]}}
    assert body == {203: {129: [{128: 20, 17: {18: 1, 19: 4}}]}}
    # Nothing of Bob's was installed, Alice's link stays.
    assert BOB not in store.clients
    assert store.clients[ALICE].setups[10].entry


def test_baseline_of_another_client_of_the_domain_is_overlapping_targets() -> None:
    store = TelemetryStore()
    install(store, ALICE, 1, baseline(1, "2001:db8:6401::/48"), "example.com")
    error = refusal(store, BOB, 2, baseline(7, "2001:db8:6401:1::/64"), "example.com")
    assert cbor2.loads(error.to_response().payload)[203][129][0][17][19] == 1
    # A baseline with the same id but a disjoint target conflicts too (§7.3.1: id or target).
    error = refusal(store, BOB, 2, baseline(1, "192.0.2.0/24"), "example.com")
    assert error.cause is ConflictCause.OVERLAPPING_TARGETS


@pytest.mark.parametrize(("alice_cdid", "bob_cdid"), [
    ("example.com", "example.net"),  # two domains
    (None, None),  # no domain given to the store: compared with none
    ("example.com", None),
])
def test_other_domains_and_direct_clients_do_not_conflict(alice_cdid: str | None,
                                                          bob_cdid: str | None) -> None:
    store = TelemetryStore()
    install(store, ALICE, 1, pipe("link1"), alice_cdid)
    assert install(store, BOB, 1, pipe("link1"), bob_cdid) is Code.CREATED


def test_same_client_still_replaces_its_lower_tsid() -> None:
    store = TelemetryStore()
    install(store, ALICE, 1, pipe("link1"), "example.com")
    install(store, BOB, 1, pipe("link9"), "example.com")
    assert install(store, ALICE, 2, pipe("link1"), "example.com") is Code.CREATED
    assert sorted(store.clients[ALICE].setups) == [2]  # §7.2.1: the lower tsid is deleted


def test_freed_link_can_be_taken_by_the_other_client() -> None:
    store = TelemetryStore()
    install(store, ALICE, 1, pipe("link1"), "example.com")
    store.apply(store.plan_setup_delete(ALICE, 1))
    assert install(store, BOB, 5, pipe("link1"), "example.com") is Code.CREATED


def test_configuration_is_per_client_and_never_conflicts() -> None:
    store = TelemetryStore()
    config = setup_body({"current-config": {"low-percentile": "5.00"}})
    install(store, ALICE, 1, config, "example.com")
    assert install(store, BOB, 1, config, "example.com") is Code.CREATED


def test_server_core_clients_behind_one_client_domain_gateway_share_a_domain() -> None:
    """Through the server core: the domain is the cdid a trusted gateway gave, else the
    session's credential, which every client behind a client-domain gateway shares."""
    server = DotsServerCore()
    gateway = server.open_session(Requester("client-domain-gateway"), 0.0)
    elsewhere = server.open_session(Requester("another-domain"), 0.0)

    def put(session: object, cuid: str, tsid: int):  # type: ignore[no-untyped-def]
        request = DotsRequest(Method.PUT, build_path(Resource.TM_SETUP, cuid=cuid, tsid=tsid),
                              payload=pipe("link1"))
        return server.receive_request(session, request, 0.0)  # type: ignore[arg-type]

    assert put(gateway, ALICE, 1).code is Code.CREATED
    refused = put(gateway, BOB, 1)
    assert refused.code is Code.CONFLICT
    assert refused.content_format == CONTENT_FORMAT_DOTS_CBOR
    (entry,) = body_to_json(refused.payload)[SETUP]["telemetry"]
    assert entry == {"tsid": 1, "conflict-information": {
        "conflict-status": "request-inactive-other-active",
        "conflict-cause": "overlapping-pipes"}}
    assert put(elsewhere, "carol-cuid-ccccccccccccc", 1).code is Code.CREATED
