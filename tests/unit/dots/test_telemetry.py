"""RFC 9244 telemetry in the pure core: /tm-setup and /tm rules, codes and diagnostics, and
the server core's routing (durable save before the answer, the /tm change event)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.dots.client import DotsClientCore
from gateway.dots.codes import AttackStatus, Code, Method
from gateway.dots.errors import DotsProtocolError
from gateway.dots.message import DotsRequest, Requester
from gateway.dots.mitigation_lifecycle import MitigationTelemetry
from gateway.dots.model import Scope, parse_prefix
from gateway.dots.server import DotsServerCore, TelemetryChanged
from gateway.dots.telemetry import (
    TelemetryConflict,
    TelemetryStore,
    body_from_json,
    body_to_json,
)
from gateway.dots.uri import Resource, build_path

CUID = "dz6pHjaADkaFTbjr0JGBpw"
SETUP = "ietf-dots-telemetry:telemetry-setup"
TM = "ietf-dots-telemetry:telemetry"


def setup_body(*entries: dict[str, Any], **head: Any) -> bytes:
    return body_from_json({SETUP: {**head, "telemetry": list(entries)}})


def config(**values: Any) -> dict[str, Any]:
    return {"current-config": {k.replace("_", "-"): v for k, v in values.items()}}


def pipe(*links: tuple[str, int]) -> dict[str, Any]:
    return {"total-pipe-capacity": [{"link-id": link, "capacity": str(capacity),
                                     "unit": "gigabit-ps"} for link, capacity in links]}


def tm_body(*prefixes: str, peak: int = 900, **extra: Any) -> bytes:
    entry = {"target": {"target-prefix": list(prefixes)},
             "total-attack-traffic": [{"unit": "megabit-ps", "peak-g": str(peak)}], **extra}
    return body_from_json({TM: {"pre-or-ongoing-mitigation": [entry]}})


def refused(call: Any, *args: Any) -> DotsProtocolError:
    with pytest.raises(DotsProtocolError) as info:
        call(*args)
    return info.value


def put_setup(store: TelemetryStore, tsid: int, body: bytes) -> Code:
    plan = store.plan_setup_put(CUID, tsid, body)
    store.apply(plan)
    return plan.code


def installed(store: TelemetryStore) -> dict[int, Any]:
    doc = body_to_json(store.setup_body(CUID, None))[SETUP]
    return {e["tsid"]: e for e in doc["telemetry"] if "tsid" in e}


# --- /tm-setup ----------------------------------------------------------------------------------


def test_setup_put_get_delete_codes() -> None:
    store = TelemetryStore()
    body = setup_body(config(low_percentile="5.00", mid_percentile="65.00",
                             high_percentile="95.00"))  # RFC 9244 Figure 4
    assert put_setup(store, 123, body) is Code.CREATED
    assert put_setup(store, 123, body) is Code.CHANGED
    one = body_to_json(store.setup_body(CUID, 123))[SETUP]["telemetry"]
    assert one == [{"tsid": 123, "current-config": {"low-percentile": "5.00",
                                                     "mid-percentile": "65.00",
                                                     "high-percentile": "95.00"}}]
    assert refused(store.setup_body, CUID, 7).code is Code.NOT_FOUND  # §7.1.3
    plan = store.plan_setup_delete(CUID, 999)  # §7.1.4: 2.02 even for an unknown tsid
    assert plan.code is Code.DELETED and plan.changes == ()
    plan = store.plan_setup_delete(CUID, 123)
    store.apply(plan)
    assert [c.body for c in plan.changes] == [None]
    assert installed(store) == {}


def test_get_without_tsid_lists_limits_units_and_the_defaults() -> None:
    doc = body_to_json(TelemetryStore().setup_body(CUID, None))[SETUP]
    assert doc["max-config-values"]["high-percentile"] == "100.00"
    assert doc["max-config-values"]["server-originated-telemetry"] is False
    assert doc["min-config-values"]["measurement-interval"] == "5-minutes"
    units = doc["supported-unit-classes"]["unit-config"]
    assert [u["unit"] for u in units] == ["packet-ps", "bit-ps", "byte-ps"]
    # §7.1.2 defaults: 10th, 50th, 90th percentiles while nothing is configured.
    assert doc["telemetry"] == [{"current-config": {
        "low-percentile": "10.00", "mid-percentile": "50.00", "high-percentile": "90.00",
        "server-originated-telemetry": False}}]


def test_higher_tsid_replaces_the_configuration_and_a_lower_one_is_stale() -> None:
    store = TelemetryStore()
    put_setup(store, 123, setup_body(config(high_percentile="95.00")))
    plan = store.plan_setup_put(CUID, 124, setup_body(config(low_percentile="0.00",
                                                             mid_percentile="0.00",
                                                             high_percentile="95.00")))
    store.apply(plan)
    assert {(c.ident, c.body is None) for c in plan.changes} == {(123, True), (124, False)}
    assert list(installed(store)) == [124]  # §7.1.2: the lower tsid MUST be deleted
    error = refused(store.plan_setup_put, CUID, 122, setup_body(config(low_percentile="1.00")))
    assert isinstance(error, TelemetryConflict) and error.code is Code.CONFLICT
    assert "older than the installed tsid 124" in error.diagnostic
    assert list(installed(store)) == [124]  # refused: nothing changed


def test_a_newer_pipe_replaces_the_links_it_names_only() -> None:
    store = TelemetryStore()
    put_setup(store, 126, setup_body(pipe(("link1", 10), ("link2", 20))))
    put_setup(store, 127, setup_body(pipe(("link1", 40))))  # §7.2.1, Figure 15
    setups = installed(store)
    assert [link["link-id"] for link in setups[126]["total-pipe-capacity"]] == ["link2"]
    assert setups[127]["total-pipe-capacity"][0]["capacity"] == "40"
    # §7.2.1: capacity 0 deletes that link; the tsid keeps the others.
    put_setup(store, 128, setup_body(pipe(("link2", 0), ("link3", 5))))
    setups = installed(store)
    assert 126 not in setups
    assert [link["link-id"] for link in setups[128]["total-pipe-capacity"]] == ["link3"]


def test_baselines_override_by_id_and_target() -> None:
    store = TelemetryStore()
    first = {"baseline": [{"id": 1, "target-prefix": ["2001:db8:6401::/48"]},
                          {"id": 2, "target-prefix": ["192.0.2.0/24"]}]}
    put_setup(store, 129, setup_body(first))
    put_setup(store, 130, setup_body({"baseline": [{"id": 3,
                                                     "target-prefix": ["192.0.2.0/25"]}]}))
    setups = installed(store)
    assert [b["id"] for b in setups[129]["baseline"]] == [1]  # id 2 overlapped the prefix
    assert [b["id"] for b in setups[130]["baseline"]] == [3]


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        pytest.param(lambda: setup_body(config(low_percentile="5.00"), pipe(("l", 1))),
                     Code.BAD_REQUEST, "one 'telemetry' entry per tsid", id="two-entries"),
        pytest.param(lambda: setup_body({**config(low_percentile="5.00"), **pipe(("l", 1))}),
                     Code.BAD_REQUEST, "a mix is refused", id="mixed-types"),
        pytest.param(lambda: setup_body({"tsid": 3, **config(low_percentile="5.00")}),
                     Code.BAD_REQUEST, "'tsid' must not appear", id="tsid-in-body"),
        pytest.param(lambda: setup_body(config(low_percentile="5.00"),
                                        **{"max-config-values": {"low-percentile": "9.00"}}),
                     Code.BAD_REQUEST, "server-to-client only", id="max-config-from-client"),
        pytest.param(lambda: setup_body({"current-config": {}}), Code.BAD_REQUEST,
                     "at least one attribute", id="empty-config"),
        pytest.param(lambda: setup_body(config(high_percentile="100.50")),
                     Code.UNPROCESSABLE_ENTITY, "outside 0.00-100.00", id="percentile-range"),
        pytest.param(lambda: setup_body(config(low_percentile="60.00", mid_percentile="50.00")),
                     Code.BAD_REQUEST, "low-percentile <= mid-percentile", id="decreasing"),
        pytest.param(lambda: setup_body(config(telemetry_notify_interval=0)),
                     Code.UNPROCESSABLE_ENTITY, "telemetry-notify-interval 0", id="notify-0"),
        pytest.param(lambda: setup_body(config(server_originated_telemetry=True)),
                     Code.UNPROCESSABLE_ENTITY, "does not originate", id="server-originated"),
        pytest.param(lambda: setup_body({"current-config": {"unit-config": [
            {"unit": "bit-ps", "unit-status": True},
            {"unit": "bit-ps", "unit-status": False}]}}),
            Code.BAD_REQUEST, "conflicting statuses", id="unit-conflict"),
        pytest.param(lambda: setup_body(pipe(("link1", 0), ("link2", 0))), Code.BAD_REQUEST,
                     "use DELETE", id="all-links-zero"),
        pytest.param(lambda: setup_body({"total-pipe-capacity": [{"link-id": "l",
                                                                  "unit": "bit-ps"}]}),
                     Code.BAD_REQUEST, "needs 'capacity'", id="link-without-capacity"),
        pytest.param(lambda: setup_body({"baseline": [{"target-prefix": ["192.0.2.0/24"]}]}),
                     Code.BAD_REQUEST, "needs its 'id'", id="baseline-without-id"),
        pytest.param(lambda: setup_body({"baseline": [{"id": 1,
                                                       "target-prefix": ["192.0.2.0/40"]}]}),
                     Code.BAD_REQUEST, "not an IP prefix", id="baseline-bad-prefix"),
        pytest.param(lambda: b"", Code.BAD_REQUEST, "needs a body", id="no-body"),
        pytest.param(lambda: tm_body("192.0.2.0/24"), Code.BAD_REQUEST,
                     "exactly one of ietf-dots-telemetry:telemetry-setup", id="tm-body"),
    ],
)
def test_setup_refusals(body: Any, code: Code, fragment: str) -> None:
    store = TelemetryStore()
    error = refused(store.plan_setup_put, CUID, 1, body())
    assert error.code is code
    assert fragment in error.diagnostic
    assert store.clients == {}


# --- /tm ----------------------------------------------------------------------------------------


def test_tm_put_get_override_and_delete() -> None:
    store = TelemetryStore()
    plan = store.plan_tm_put(CUID, 567, tm_body("192.0.2.0/24"))
    assert plan.code is Code.CHANGED  # §8.2: 2.04
    store.apply(plan)
    store.apply(store.plan_tm_put(CUID, 568, tm_body("2001:db8::/32")))
    doc = body_to_json(store.tm_body(CUID, None))[TM]["pre-or-ongoing-mitigation"]
    assert [e["tmid"] for e in doc] == [567, 568]
    assert doc[0]["total-attack-traffic"] == [{"unit": "megabit-ps", "peak-g": "900"}]
    # §8.2: a higher tmid with an overlapping target deletes the lower one.
    store.apply(store.plan_tm_put(CUID, 570, tm_body("192.0.2.128/25", peak=1200)))
    doc = body_to_json(store.tm_body(CUID, None))[TM]["pre-or-ongoing-mitigation"]
    assert [e["tmid"] for e in doc] == [568, 570]
    error = refused(store.plan_tm_put, CUID, 569, tm_body("192.0.2.0/24"))
    assert error.code is Code.CONFLICT and "older than the active tmid 570" in error.diagnostic
    assert refused(store.tm_body, CUID, 567).code is Code.NOT_FOUND
    store.apply(store.plan_tm_delete(CUID, 568))
    assert [e["tmid"] for e in body_to_json(store.tm_body(CUID, None))[TM][
        "pre-or-ongoing-mitigation"]] == [570]
    store.apply(store.plan_tm_delete(CUID, None))  # §8.2: all of them
    assert body_to_json(store.tm_body(CUID, None))[TM]["pre-or-ongoing-mitigation"] == []
    assert store.clients == {}


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        pytest.param({"total-traffic": [{"unit": "bit-ps", "peak-g": "1"}]},
                     "needs a 'target'", id="no-target"),
        pytest.param({"target": {"target-prefix": ["192.0.2.0/24"]}, "tmid": 4},
                     "'tmid' must not appear", id="tmid-in-body"),
        pytest.param({"target": {"target-prefix": ["192.0.2.0/33"]}}, "not an IP prefix",
                     id="bad-prefix"),
        pytest.param({"target": {"target-prefix": []}}, "non-empty list", id="empty-list"),
        pytest.param({"target": {"target-protocol": [300]}}, "target-protocol value",
                     id="protocol-range"),
        pytest.param({"target": {"target-port-range": [{"lower-port": 90, "upper-port": 80}]}},
                     "below lower-port", id="port-order"),
    ],
)
def test_tm_refusals(entry: dict[str, Any], fragment: str) -> None:
    store = TelemetryStore()
    body = body_from_json({TM: {"pre-or-ongoing-mitigation": [entry]}})
    error = refused(store.plan_tm_put, CUID, 1, body)
    assert error.code is Code.BAD_REQUEST
    assert fragment in error.diagnostic


@pytest.mark.parametrize("target", [{186: [{}]}, {186: [-1]}, {7: [1]}, {10: ["x"]}],
                         ids=["mid-list-map", "mid-list-negative", "port-not-map",
                              "protocol-text"])
def test_bad_target_values_are_refused_not_crashed(target: dict[int, Any]) -> None:
    # Found writing the fuzz test: a map in mid-list crashed the overlap check (unhashable).
    store = TelemetryStore()
    store.apply(store.plan_tm_put(CUID, 2, tm_body("192.0.2.0/24")))
    error = refused(store.plan_tm_put, CUID, 3, cbor2.dumps({208: {138: [{189: target}]}}))
    assert error.code is Code.BAD_REQUEST


def test_json_bodies_are_checked_strictly() -> None:
    with pytest.raises(DotsProtocolError, match="two fraction digits"):
        setup_body(config(low_percentile="1"))
    with pytest.raises(DotsProtocolError, match="unknown attribute 'low'"):
        setup_body({"current-config": {"low": "1.00"}})
    with pytest.raises(DotsProtocolError, match="unexpected attribute"):
        body_from_json({"ietf-dots-signal-channel:heartbeat": {"peer-hb-status": True}})


def test_restore_reads_back_what_plans_write() -> None:
    store = TelemetryStore()
    rows = []
    for make in (lambda: store.plan_setup_put(CUID, 5, setup_body(pipe(("link1", 3)))),
                 lambda: store.plan_tm_put(CUID, 9, tm_body("192.0.2.0/24"))):
        plan = make()
        store.apply(plan)
        rows += [(c.cuid, c.kind, c.ident, c.cdid, c.body, c.domain) for c in plan.changes]
    again = TelemetryStore()
    assert again.restore(rows) == 2
    assert again.setup_body(CUID, 5) == store.setup_body(CUID, 5)
    assert again.tm_body(CUID, None) == store.tm_body(CUID, None)


# --- the server core ----------------------------------------------------------------------------


def core_request(server: DotsServerCore, request: DotsRequest):  # type: ignore[no-untyped-def]
    session = server.open_session(Requester(CUID), 0.0)
    return server.receive_request(session, request, 0.0)


def test_core_answers_5_03_and_changes_nothing_when_the_save_fails() -> None:
    server = DotsServerCore()
    saved: list[Any] = []
    server.save_telemetry = lambda changes: saved.append(changes) or False
    client = DotsClientCore(CUID, 0.0)
    response = core_request(server, client.telemetry_put(tm_body("192.0.2.0/24"), 1))
    assert response is not None and response.code is Code.SERVICE_UNAVAILABLE
    assert response.max_age is not None and saved
    assert server.telemetry.clients == {}
    assert list(server.events()) == []
    server.save_telemetry = lambda changes: True
    response = core_request(server, client.telemetry_put(tm_body("192.0.2.0/24"), 1))
    assert response is not None and response.code is Code.CHANGED
    assert list(server.events()) == [TelemetryChanged(CUID)]


def test_core_routes_methods_and_paths() -> None:
    server = DotsServerCore()
    client = DotsClientCore(CUID, 0.0)
    no_tsid = DotsRequest(Method.PUT, build_path(Resource.TM_SETUP, cuid=CUID),
                          payload=setup_body(config(low_percentile="1.00")))
    response = core_request(server, no_tsid)
    assert response is not None and response.code is Code.BAD_REQUEST
    assert "needs the 'tsid'" in response.diagnostic
    post = DotsRequest(Method.POST, build_path(Resource.TM, cuid=CUID))
    response = core_request(server, post)
    assert response is not None and response.code is Code.METHOD_NOT_ALLOWED
    response = core_request(server, DotsRequest(Method.GET, build_path(Resource.TM, cuid=CUID),
                                                query=("target-prefix=192.0.2.0/24",)))
    assert response is not None and response.code is Code.BAD_REQUEST
    response = core_request(server, client.telemetry_setup_get())
    assert response is not None and response.code is Code.CONTENT
    assert SETUP in body_to_json(response.payload)


def test_efficacy_update_telemetry_reaches_the_mitigator_events() -> None:
    server = DotsServerCore()
    client = DotsClientCore(CUID, 0.0)
    scope = Scope(target_prefix=(parse_prefix("192.0.2.0/24"),), lifetime=3600)
    session = server.open_session(Requester(CUID), 0.0)
    assert server.receive_request(session, client.mitigation_request(scope, 7), 0.0)
    list(server.events())
    attack = ((205, [{134: 8, 143: 800}]),)  # total-attack-traffic: megabit-ps, peak-g
    update = client.efficacy_update(7, Scope(target_prefix=scope.target_prefix,
                                             extensions=attack), AttackStatus.UNDER_ATTACK)
    response = server.receive_request(session, update, 0.0)
    assert response is not None and response.code is Code.CHANGED
    events = [e for e in server.events() if isinstance(e, MitigationTelemetry)]
    assert events == [MitigationTelemetry(CUID, 7, attack, AttackStatus.UNDER_ATTACK)]


# --- fuzz: any body either is accepted or raises the protocol error -----------------------------

_KEYS = st.sampled_from([6, 7, 10, 11, 12, 13, 128, 129, 130, 133, 134, 135, 136, 137, 138,
                         163, 174, 175, 176, 179, 180, 181, 182, 186, 189, 190, 205])
_LEAVES = st.one_of(st.integers(-5, 2**64), st.text(max_size=8), st.booleans(), st.none(),
                    st.sampled_from(["192.0.2.0/24", "2001:db8::/32", "10.0.0.0/33"]),
                    st.builds(lambda: cbor2.CBORTag(4, [-2, 950])), st.floats(allow_nan=True))
_VALUES = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _VALUES, max_size=4), st.sampled_from([203, 208]),
       st.integers(0, 3))
def test_any_body_is_accepted_or_refused_with_a_code(inner: dict[int, Any], top: int,
                                                     ident: int) -> None:
    store = TelemetryStore()
    store.apply(store.plan_tm_put(CUID, 2, tm_body("192.0.2.0/24")))
    store.apply(store.plan_setup_put(CUID, 2, setup_body(pipe(("link1", 4)))))
    payload = cbor2.dumps({top: inner})
    for plan in (store.plan_setup_put, store.plan_tm_put):
        try:
            store.apply(plan(CUID, ident, payload))
        except DotsProtocolError:
            continue
        store.setup_body(CUID, None)  # what was accepted can be rendered
        store.tm_body(CUID, None)


def test_telemetry_targets_are_authorized_like_mitigation_targets() -> None:
    from gateway.dots.authz import Authorizer, ClientRule

    rule = ClientRule("site-a", cuid=CUID, prefixes=(parse_prefix("192.0.2.0/24"),),
                      fqdns=("example.com",))
    server = DotsServerCore(authorizer=Authorizer([rule]))
    session = server.open_session(Requester(CUID), 0.0)
    client = DotsClientCore(CUID, 0.0)

    def code(request: DotsRequest) -> Code:
        response = server.receive_request(session, request, 0.0)
        assert response is not None
        return response.code

    assert code(client.telemetry_put(tm_body("192.0.2.0/25"), 1)) is Code.CHANGED
    assert code(client.telemetry_put(tm_body("198.51.100.0/24"), 2)) is Code.UNAUTHORIZED
    outside = setup_body({"baseline": [{"id": 1, "target-fqdn": ["www.example.net"]}]})
    assert code(client.telemetry_setup_put(outside, 3)) is Code.UNAUTHORIZED
    domain_wide = setup_body({"baseline": [{"id": 1, "total-traffic-normal": [
        {"unit": "megabit-ps", "peak-g": "100"}]}]})
    assert code(client.telemetry_setup_put(domain_wide, 3)) is Code.CREATED
    other = DotsClientCore("another-cuid-not-ours", 0.0)
    assert code(other.telemetry_get()) is Code.UNAUTHORIZED
    assert [t for t in server.telemetry.clients[CUID].pre] == [1]
