"""The gateway's pure relay rules: Hop-Limit, cdid paths, the relay table and its database."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.dots.codec import decode_message, encode_message
from gateway.dots.codes import CONTENT_FORMAT_TEXT, Code, ConflictCause
from gateway.dots.conflict import ConflictingRequest
from gateway.dots.errors import InvalidValue
from gateway.dots.message import DotsResponse
from gateway.dots.model import MitigationScope, Scope, parse_prefix
from gateway.dots.relay import (
    DEFAULT_HOP_LIMIT,
    HopLimitReached,
    RelayedMitigation,
    RelayTable,
    forward_hop_limit,
    gateway_error,
    loop_report,
    single_scope,
    upstream_path,
    with_scope_changes,
)
from gateway.dots.uri import Resource, build_path, parse_path
from gateway.relay.store import RelayDatabase, RelayDatabaseError


def body(prefix: str = "192.0.2.0/24", lifetime: int = 3600,
         trigger: bool | None = None) -> bytes:
    scope = Scope(target_prefix=(parse_prefix(prefix),), lifetime=lifetime,
                  trigger_mitigation=trigger)
    return encode_message(MitigationScope((scope,)))


def record(cuid: str = "c1", mid: int = 1, owner: str = "o1", **kw: object) -> RelayedMitigation:
    fields: dict[str, object] = dict(cdid="o1", body=body(), trigger_mitigation=True,
                                     lifetime=3600)
    fields.update(kw)
    return RelayedMitigation(cuid, mid, owner, **fields)  # type: ignore[arg-type]


# --- Hop-Limit (RFC 8768 §3) -----------------------------------------------------------------


def test_hop_limit_is_inserted_when_absent_and_decremented_otherwise() -> None:
    assert forward_hop_limit(None) == DEFAULT_HOP_LIMIT == 16
    assert forward_hop_limit(None, initial=4) == 4
    assert forward_hop_limit(16) == 15
    assert forward_hop_limit(2) == 1


@pytest.mark.parametrize("received", [1, 0])
def test_hop_limit_reaching_zero_is_5_08(received: int) -> None:
    with pytest.raises(HopLimitReached) as caught:
        forward_hop_limit(received)
    assert caught.value.code is Code.HOP_LIMIT_REACHED


def test_loop_report_lists_the_gateways_newest_first() -> None:
    first = loop_report("gw-b")
    assert first.code is Code.HOP_LIMIT_REACHED and first.content_format == CONTENT_FORMAT_TEXT
    assert first.diagnostic == "hop limit reached: gw-b"
    relayed = loop_report("gw-a", first)
    assert relayed.diagnostic == "hop limit reached: gw-a gw-b"
    # A 5.08 from a server that is not one of ours keeps its text after our name.
    other = DotsResponse(Code.HOP_LIMIT_REACHED, b"proxy-x", CONTENT_FORMAT_TEXT)
    assert loop_report("gw-a", other).diagnostic == "hop limit reached: gw-a proxy-x"


# --- paths and bodies --------------------------------------------------------------------------


def test_upstream_path_replaces_any_client_cdid() -> None:
    path = parse_path(build_path(Resource.MITIGATE, cdid="forged", cuid="c1", mid=5))
    assert upstream_path(path, "real") == build_path(Resource.MITIGATE, cdid="real", cuid="c1",
                                                     mid=5)
    assert upstream_path(path, None) == build_path(Resource.MITIGATE, cuid="c1", mid=5)
    with pytest.raises(ValueError, match="only mitigate"):
        upstream_path(parse_path(build_path(Resource.HB)), None)


def test_gateway_errors_say_they_come_from_the_gateway() -> None:
    response = gateway_error(InvalidValue("bad lifetime"))
    assert response.code is Code.BAD_REQUEST and response.diagnostic == "gateway: bad lifetime"
    conflict = gateway_error(ConflictingRequest("x", _collision()))
    assert conflict.code is Code.CONFLICT and conflict.payload[:1] != b"g"  # CBOR body


def test_resend_body_keeps_unknown_keys_and_carries_the_remaining_lifetime() -> None:
    # An unknown comprehension-optional key inside the scope (32768+) survives the rewrite.
    original = body(lifetime=600)
    tree = decode_message(original)
    assert isinstance(tree, MitigationScope)
    scope = tree.scope[0]
    extended = encode_message(MitigationScope((Scope(
        target_prefix=scope.target_prefix, lifetime=600,
        extensions={40000: "kept"}),)))  # type: ignore[call-arg]
    r = record(body=extended, lifetime=600, expires_at=1000.0, confirmed=True)
    rewritten = single_scope(r.resend_body(now=700.0))
    assert rewritten.lifetime == 300
    assert rewritten.extensions == ((40000, "kept"),)
    r.activated_by_loss = True
    assert single_scope(r.resend_body(now=700.0)).trigger_mitigation is True
    indefinite = record(lifetime=-1, expires_at=None)
    assert single_scope(indefinite.resend_body(now=1.0)).lifetime == -1
    assert single_scope(with_scope_changes(original, lifetime=5)).lifetime == 5


# --- the table ---------------------------------------------------------------------------------


def _collision():  # type: ignore[no-untyped-def]
    from gateway.dots.model import ConflictInformation

    return ConflictInformation(ConflictCause.CUID_COLLISION)


def test_cuid_collisions_are_refused_by_the_gateway() -> None:
    table = RelayTable()
    table.check_owner("c1", "o1")
    table.check_owner("c1", "o1")  # the same client again
    with pytest.raises(ConflictingRequest) as caught:
        table.check_owner("c1", "o2")
    assert caught.value.conflict.conflict_cause is ConflictCause.CUID_COLLISION
    # Records keep the ownership even after the remembered-owner cache forgot it.
    table.put(record("c2", owner="o3"))
    with pytest.raises(ConflictingRequest):
        table.check_owner("c2", "o1")


def test_table_changes_expiry_and_activity() -> None:
    table = RelayTable()
    a = record("c1", 1, trigger_mitigation=True)
    b = record("c1", 2, trigger_mitigation=False)
    table.put(a)
    table.put(b)
    assert [key for key, _ in table.take_changes()] == [("c1", 1), ("c1", 2)]
    assert not table.active(now=0.0)  # nothing confirmed yet
    table.accepted(a, "coaps://up", 100, now=0.0)
    table.accepted(b, "coaps://up", None, now=0.0)
    assert a.expires_at == 100.0 and b.expires_at == 3600.0
    assert table.active(now=50.0) and table.is_mitigating("c1", 50.0)
    assert table.next_expiry() == 100.0
    assert [r.mid for r in table.expire(now=100.0)] == [1]
    assert not table.active(now=100.0)  # only a preconfigured one is left
    b.activated_by_loss = True
    assert table.is_mitigating("c1", 100.0)
    assert [key for key, rec in table.take_changes() if rec is None] == [("c1", 1)]
    assert table.cuids() == ["c1"] and len(table) == 1
    table.remove("c1", 2)
    assert table.cuids() == [] and table.of_cuid("c1") == []


def test_database_round_trip_and_retry(tmp_path: Path) -> None:
    db = RelayDatabase.in_state_dir(tmp_path)
    table = RelayTable()
    r = record("c1", 7, cdid=None, trigger_mitigation=False, lifetime=-1, confirmed=True,
               upstream="coaps://[::1]:4646", withdrawing=True, activated_by_loss=True)
    table.put(r)
    table.put(record("c2", 1))
    assert db.sync(table) and db.saves == 1
    table.remove("c2", 1)
    assert db.sync(table)
    db.close()
    again = RelayDatabase.in_state_dir(tmp_path)
    loaded = again.load()
    assert loaded == [r]
    restored = RelayTable()
    restored.restore(loaded)
    assert restored.take_changes() == [] and restored.get("c1", 7) == r
    again.close()
    assert (tmp_path / "relay.sqlite3").stat().st_mode & 0o077 == 0


def test_database_refuses_garbage(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite3"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(RelayDatabaseError, match="not a usable SQLite database"):
        RelayDatabase(path)


def test_rewritten_bodies_keep_registered_keys_we_do_not_act_on() -> None:
    # RFC 9133's acl-list (a comprehension-required key the gateway does not act on) and an
    # RFC 9244 telemetry attribute travel upstream as the client wrote them.
    acl_list = [{23: "an-accept-list", 52: 2}]
    telemetry = [{134: 8, 141: 900}]
    extended = encode_message(MitigationScope((Scope(
        target_prefix=(parse_prefix("192.0.2.0/24"),), lifetime=600,
        extensions=((53, acl_list), (205, telemetry))),)))
    rewritten = single_scope(with_scope_changes(extended, lifetime=5))
    assert rewritten.lifetime == 5
    assert rewritten.extensions == ((53, acl_list), (205, telemetry))
    assert with_scope_changes(extended) == extended


def test_relay_table_counts_installed_requests_by_the_upstream_status() -> None:
    from gateway.dots.codes import Status

    table = RelayTable()
    installed, pending, other = record(mid=1), record(mid=2), record(cuid="c2", mid=1)
    for r in (installed, pending, other):
        table.put(r)
    table.accepted(installed, "up0", 600, now=0.0)
    table.accepted(other, "up0", 600, now=0.0)
    assert table.by_status() == {"unknown": 2}  # the pending one is installed nowhere
    answer = MitigationScope((Scope(mid=1, status=Status.ATTACK_SUCCESSFULLY_MITIGATED),
                              Scope(mid=9, status=Status.ATTACK_STOPPED)))  # 9: not ours
    assert table.note_statuses("c1", answer) == 1
    assert table.by_status() == {"attack-successfully-mitigated": 1, "unknown": 1}
    # A notification body, raw; one that does not decode changes nothing.
    assert table.note_status_payload("c2", encode_message(MitigationScope(
        (Scope(mid=1, status=Status.ATTACK_MITIGATION_IN_PROGRESS),)))) == 1
    assert table.note_status_payload("c2", b"\xff not cbor") == 0
    assert table.by_status() == {"attack-successfully-mitigated": 1,
                                 "attack-mitigation-in-progress": 1}
