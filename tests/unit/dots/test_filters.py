"""RFC 9133 filter control in the pure core: the acl-list of a mitigation request, the ACL
catalog, and what the server core answers, stores and tells the mitigator."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dots.codec import cbor_to_json, decode_message, encode_message, json_to_cbor
from gateway.dots.codes import Code, Method
from gateway.dots.errors import DotsProtocolError
from gateway.dots.filters import (
    AclActivation,
    MemoryAclCatalog,
    NullAclCatalog,
    acl_list_of,
    active_acls,
    carry_acl_list,
    merge_acl_lists,
    with_acl_list,
)
from gateway.dots.message import DotsRequest, Requester
from gateway.dots.mitigation_lifecycle import (
    ApplyMitigation,
    MitigationStatusChanged,
    UpdateFilters,
    WithdrawMitigation,
)
from gateway.dots.model import MitigationScope, Scope, parse_prefix
from gateway.dots.relay import carry_acl_list_body
from gateway.dots.server import DotsServerCore

CUID = "dz6pHjaADkaFTbjr0JGBpw"
ATTACK_STATUS = 29
SCOPE_KEY = "ietf-dots-signal-channel:mitigation-scope"
ACL_KEY = "ietf-dots-signal-control:acl-list"
# RFC 9133 Figure 8-like request: an ACL made over the data channel, activated now.
FILTER_CONTROL = {SCOPE_KEY: {"scope": [{
    "target-prefix": ["2001:db8:6401::2/127"],
    "target-protocol": [17],
    ACL_KEY: [{"acl-name": "my-accept-list", "activation-type": "immediate"}],
    "lifetime": 3600,
}]}}
# RFC 8783 §7.1 style ACL, as the data channel holds it.
ACCEPT_LIST = {
    "name": "my-accept-list",
    "type": "ipv6-acl-type",
    "activation-type": "activate-when-mitigating",
    "aces": {"ace": [{"name": "accept-udp", "matches": {"ipv6": {
        "destination-ipv6-network": "2001:db8:6401::2/127"}, "udp": {}},
        "actions": {"forwarding": "accept"}}]},
}
RATE_LIMIT = {"name": "rate-limit-udp", "type": "ipv6-acl-type",
              "activation-type": "deactivate",
              "aces": {"ace": [{"name": "rl", "matches": {"udp": {}},
                                "actions": {"forwarding": "accept",
                                            "rate-limit": "20000.00"}}]}}


def scope_of(body: dict[str, Any]) -> Scope:
    message = decode_message(json_to_cbor(json.dumps(body)))
    assert isinstance(message, MitigationScope)
    return message.scope[0]


def raw_scope(acl_list: Any) -> Scope:
    return Scope(target_prefix=(parse_prefix("192.0.2.0/24"),), lifetime=60,
                 extensions=((53, acl_list),))


# --- the acl-list ---------------------------------------------------------------------------


def test_acl_list_of_the_rfc_example() -> None:
    assert acl_list_of(scope_of(FILTER_CONTROL)) == (
        AclActivation("my-accept-list", "immediate"),)


def test_no_acl_list_and_an_empty_one_differ() -> None:
    assert acl_list_of(Scope(target_prefix=(parse_prefix("192.0.2.0/24"),))) is None
    assert acl_list_of(raw_scope([])) == ()


def test_activation_type_defaults_to_activate_when_mitigating() -> None:
    # RFC 9133 §3.2: absent activation-type means activate-when-mitigating.
    assert acl_list_of(raw_scope([{23: "a"}])) == (AclActivation("a"),)
    assert AclActivation("a").activation_type == "activate-when-mitigating"


@pytest.mark.parametrize(("acl_list", "code", "diagnostic"), [
    pytest.param(["a"], "4.00", "acl-list[0]: expected a map", id="not-a-map"),
    pytest.param([{52: 2}], "4.00", "acl-name is mandatory", id="no-name"),
    pytest.param([{23: ""}], "4.00", "non-empty text string", id="empty-name"),
    pytest.param([{23: 7}], "4.00", "non-empty text string", id="name-not-text"),
    pytest.param([{23: "a", 52: 4}], "4.00", "activation-type 4 is not", id="bad-type"),
    pytest.param([{23: "a", 52: "immediate"}], "4.00", "activation-type 'immediate'",
                 id="type-as-text"),
    pytest.param([{23: "a"}, {23: "a", 52: 3}], "4.00", "names the ACL 'a' twice",
                 id="twice"),
    pytest.param([{23: "a", 24: "x"}], "4.00", "unknown comprehension-required CBOR keys: 24",
                 id="required-key"),
])
def test_malformed_acl_lists_get_4_00(acl_list: Any, code: str, diagnostic: str) -> None:
    with pytest.raises(DotsProtocolError) as caught:
        acl_list_of(raw_scope(acl_list))
    assert caught.value.code.dotted == code
    assert diagnostic in caught.value.diagnostic


def test_comprehension_optional_keys_in_an_entry_are_ignored() -> None:
    assert acl_list_of(raw_scope([{23: "a", 52: 2, 49152: "x"}])) == (
        AclActivation("a", "immediate"),)


def test_with_acl_list_spells_every_activation_type_and_round_trips() -> None:
    scope = with_acl_list(raw_scope([{23: "a"}]), (AclActivation("a"),))
    assert dict(scope.extensions)[53] == [{23: "a", 52: 1}]
    data = encode_message(MitigationScope((scope,)))
    assert cbor_to_json(data)[SCOPE_KEY]["scope"][0][ACL_KEY] == [
        {"acl-name": "a", "activation-type": "activate-when-mitigating"}]
    assert acl_list_of(with_acl_list(scope, None)) is None


@pytest.mark.parametrize(("text", "name", "kind"), [
    ("drop-udp", "drop-udp", "activate-when-mitigating"),
    ("drop-udp:immediate", "drop-udp", "immediate"),
    ("drop-udp:deactivate", "drop-udp", "deactivate"),
    ("urn:acl", "urn:acl", "activate-when-mitigating"),  # not a type: part of the name
])
def test_parse_name_and_type(text: str, name: str, kind: str) -> None:
    assert AclActivation.parse(text) == AclActivation(name, kind)


def test_merge_changes_named_entries_and_keeps_the_others() -> None:
    current = (AclActivation("a", "immediate"), AclActivation("b"))
    merged = merge_acl_lists(current, (AclActivation("a", "deactivate"), AclActivation("c")))
    assert merged == (AclActivation("a", "deactivate"), AclActivation("b"), AclActivation("c"))
    assert merge_acl_lists(None, ()) == ()


def test_active_acls_skip_deactivated_and_vanished_ones() -> None:
    catalog = MemoryAclCatalog()
    catalog.add(CUID, ACCEPT_LIST)
    catalog.add(CUID, RATE_LIMIT)
    acls = active_acls(catalog, CUID, (AclActivation("my-accept-list", "immediate"),
                                       AclActivation("rate-limit-udp", "deactivate"),
                                       AclActivation("deleted-since")))
    assert [a.acl_name for a in acls] == ["my-accept-list"]
    entry = acls[0].to_json()
    assert entry["activation-type"] == "immediate"  # the one in force, not the stored one
    assert entry["aces"] == ACCEPT_LIST["aces"]


# --- the server core ------------------------------------------------------------------------


class Server:
    def __init__(self, catalog: Any = None) -> None:
        self.now = 0.0
        self.catalog = catalog
        self.core = DotsServerCore(acl_catalog=catalog)
        self.session = self.core.open_session(Requester(CUID), self.now)

    def request(self, method: Method, mid: int | None = None, body: Any = None, *,
                efficacy: bool = False) -> Any:
        path = (".well-known", "dots", "mitigate", f"cuid={CUID}",
                *((f"mid={mid}",) if mid is not None else ()))
        payload = b"" if body is None else cbor2.dumps(body)
        request = DotsRequest(method, path, payload=payload,
                              if_match=(b"",) if efficacy else ())
        return self.core.receive_request(self.session, request, self.now)

    def outputs(self) -> list[Any]:
        return [e for e in self.core.events()
                if isinstance(e, ApplyMitigation | UpdateFilters | WithdrawMitigation)]

    def acl_list(self, mid: int) -> Any:
        got = self.request(Method.GET, mid)
        assert got.code is Code.CONTENT
        return cbor_to_json(got.payload)[SCOPE_KEY]["scope"][0].get(ACL_KEY)


def body(acl_list: Any = None, *, lifetime: int | None = 3600,
         extra: dict[int, Any] | None = None) -> dict[int, Any]:
    scope: dict[int, Any] = {6: ["2001:db8:6401::/64"], **(extra or {})}
    if lifetime is not None:
        scope[14] = lifetime
    if acl_list is not None:
        scope[53] = acl_list
    return {1: {2: [scope]}}


def catalog() -> MemoryAclCatalog:
    c = MemoryAclCatalog()
    c.add(CUID, ACCEPT_LIST)
    c.add(CUID, RATE_LIMIT)
    return c


def test_put_with_acl_list_activates_and_the_mitigator_gets_the_acls() -> None:
    s = Server(catalog())
    created = s.request(Method.PUT, 1, body([{23: "my-accept-list", 52: 2}]))
    assert created.code is Code.CREATED
    [apply] = s.outputs()
    assert isinstance(apply, ApplyMitigation)
    assert [(a.acl_name, a.activation_type) for a in apply.acls] == [
        ("my-accept-list", "immediate")]
    assert apply.acls[0].acl["aces"] == ACCEPT_LIST["aces"]
    # RFC 9133 §3.2: the new activation type stays with the ACL, beyond the mitigation.
    assert s.catalog.lookup(CUID, "my-accept-list")["activation-type"] == "immediate"
    assert s.acl_list(1) == [{"acl-name": "my-accept-list", "activation-type": "immediate"}]


def test_absent_activation_type_is_stored_and_returned_as_the_default() -> None:
    s = Server(catalog())
    assert s.request(Method.PUT, 1, body([{23: "rate-limit-udp"}])).code is Code.CREATED
    assert s.acl_list(1) == [{"acl-name": "rate-limit-udp",
                              "activation-type": "activate-when-mitigating"}]
    assert s.catalog.lookup(CUID, "rate-limit-udp")["activation-type"] == (
        "activate-when-mitigating")
    [apply] = s.outputs()
    # The client's other 'activate-when-mitigating' ACL is active too (RFC 8783 §7.1).
    assert [a.acl_name for a in apply.acls] == ["rate-limit-udp", "my-accept-list"]


def test_unknown_acl_name_is_4_04_and_changes_nothing() -> None:
    s = Server(catalog())
    refused = s.request(Method.PUT, 1, body([{23: "my-accept-list", 52: 2}, {23: "nope"}]))
    assert refused.code is Code.NOT_FOUND
    assert "no ACL named 'nope'" in refused.diagnostic
    assert s.outputs() == []
    assert s.request(Method.GET, 1).code is Code.NOT_FOUND
    assert s.catalog.lookup(CUID, "my-accept-list")["activation-type"] == (
        "activate-when-mitigating")


def test_without_a_data_channel_any_acl_name_is_4_04_that_says_why() -> None:
    s = Server()  # the null catalog
    refused = s.request(Method.PUT, 1, body([{23: "my-accept-list"}]))
    assert refused.code is Code.NOT_FOUND
    assert "this server has no data channel (RFC 8783)" in refused.diagnostic
    # An empty acl-list asks for nothing: accepted, and returned as sent.
    assert s.request(Method.PUT, 2, body([])).code is Code.CREATED
    assert s.acl_list(2) == []


def test_acl_list_in_a_refresh_changes_activation_during_the_mitigation() -> None:
    s = Server(catalog())
    s.request(Method.PUT, 1, body([{23: "my-accept-list", 52: 2}]))
    s.outputs()
    changed = s.request(Method.PUT, 1, body([{23: "my-accept-list", 52: 3},
                                             {23: "rate-limit-udp", 52: 2}]))
    assert changed.code is Code.CHANGED
    events = list(s.core.events())
    # Observers are told: the mitigation's representation changed.
    assert any(isinstance(e, MitigationStatusChanged) and e.mid == 1 for e in events)
    [update] = [e for e in events if isinstance(e, UpdateFilters | ApplyMitigation)]
    assert isinstance(update, UpdateFilters)
    assert [(a.acl_name, a.activation_type) for a in update.acls] == [
        ("rate-limit-udp", "immediate")]
    assert s.catalog.lookup(CUID, "my-accept-list")["activation-type"] == "deactivate"
    assert s.acl_list(1) == [
        {"acl-name": "my-accept-list", "activation-type": "deactivate"},
        {"acl-name": "rate-limit-udp", "activation-type": "immediate"}]
    # A refresh that does not carry acl-list leaves it, and tells the mitigator nothing.
    assert s.request(Method.PUT, 1, body(lifetime=600)).code is Code.CHANGED
    assert s.outputs() == []
    assert len(s.acl_list(1)) == 2
    # The same acl-list again changes nothing either.
    s.request(Method.PUT, 1, body([{23: "rate-limit-udp", 52: 2}]))
    assert s.outputs() == []


def test_efficacy_update_may_carry_acl_list() -> None:
    s = Server(catalog())
    s.request(Method.PUT, 1, body())
    s.outputs()
    updated = s.request(Method.PUT, 1, body([{23: "rate-limit-udp", 52: 2}], lifetime=None,
                                            extra={ATTACK_STATUS: 2}), efficacy=True)
    assert updated.code is Code.CHANGED
    [update] = s.outputs()
    assert isinstance(update, UpdateFilters) and update.acls[0].acl_name == "rate-limit-udp"


def test_withdraw_reaches_the_mitigator() -> None:
    s = Server(catalog())
    s.request(Method.PUT, 1, body([{23: "my-accept-list", 52: 2}]))
    s.outputs()
    assert s.request(Method.DELETE, 1).code is Code.DELETED
    s.now = 200.0
    s.core.handle_timer(s.now)
    assert any(isinstance(o, WithdrawMitigation) for o in s.outputs())


class FailingCatalog(MemoryAclCatalog):
    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing = failing

    def update_activation(self, cuid: str, acl_name: str, activation_type: str) -> None:
        if acl_name == self.failing:
            raise OSError("the data channel store is read-only")
        super().update_activation(cuid, acl_name, activation_type)


def test_failed_catalog_update_is_5_03_naming_it_and_changes_nothing() -> None:
    failing = FailingCatalog("rate-limit-udp")
    failing.add(CUID, ACCEPT_LIST)
    failing.add(CUID, RATE_LIMIT)
    s = Server(failing)
    refused = s.request(Method.PUT, 1, body([{23: "my-accept-list", 52: 2},
                                             {23: "rate-limit-udp", 52: 2}]))
    assert refused.code is Code.SERVICE_UNAVAILABLE
    # RFC 9133 §3.2 / Figure 1: the failed update is the diagnostic payload.
    assert cbor_to_json(refused.payload) == {SCOPE_KEY: {"scope": [{
        "mid": 1, ACL_KEY: [{"acl-name": "rate-limit-udp", "activation-type": "immediate"}]}]}}
    assert s.outputs() == []
    assert s.request(Method.GET, 1).code is Code.NOT_FOUND
    # The update made before the failing one was undone.
    assert failing.lookup(CUID, "my-accept-list")["activation-type"] == (
        "activate-when-mitigating")
    assert s.core.failed_activations == 1


def test_unsaved_change_undoes_the_catalog_update() -> None:
    s = Server(catalog())
    s.core.save = lambda: False
    refused = s.request(Method.PUT, 1, body([{23: "my-accept-list", 52: 2}]))
    assert refused.code is Code.SERVICE_UNAVAILABLE
    assert s.catalog.lookup(CUID, "my-accept-list")["activation-type"] == (
        "activate-when-mitigating")


def test_null_catalog_has_nothing() -> None:
    null = NullAclCatalog()
    assert null.lookup(CUID, "x") is None
    with pytest.raises(LookupError):
        null.update_activation(CUID, "x", "immediate")


# --- what a client or gateway keeps to send a request again ---------------------------------


def test_carry_acl_list_keeps_what_a_refresh_left_out() -> None:
    first = with_acl_list(raw_scope([]), (AclActivation("a", "immediate"),))
    refresh = Scope(target_prefix=(parse_prefix("192.0.2.0/24"),), lifetime=60)
    kept = carry_acl_list(refresh, first)
    assert acl_list_of(kept) == (AclActivation("a", "immediate"),)
    changed = carry_acl_list(with_acl_list(refresh, (AclActivation("a", "deactivate"),
                                                     AclActivation("b"))), kept)
    assert acl_list_of(changed) == (AclActivation("a", "deactivate"), AclActivation("b"))
    assert carry_acl_list(refresh, None) is refresh
    assert carry_acl_list(refresh, refresh) is refresh
    assert carry_acl_list(raw_scope(["bad"]), first).extensions == ((53, ["bad"]),)


def test_a_gateway_keeps_the_acl_list_for_a_reinstall() -> None:
    first = encode_message(MitigationScope((with_acl_list(
        raw_scope([]), (AclActivation("a", "immediate"),)),)))
    refresh = encode_message(MitigationScope((Scope(
        target_prefix=(parse_prefix("192.0.2.0/24"),), lifetime=600),)))
    kept = decode_message(carry_acl_list_body(first, refresh))
    assert isinstance(kept, MitigationScope)
    assert kept.scope[0].lifetime == 600
    assert acl_list_of(kept.scope[0]) == (AclActivation("a", "immediate"),)
    assert carry_acl_list_body(refresh, refresh) == refresh
    assert carry_acl_list_body(b"\xff", refresh) == refresh


class LookupOnly:
    """A catalog with the agreed minimum: no listing of a client's ACLs."""

    def __init__(self, inner: MemoryAclCatalog) -> None:
        self.inner = inner

    def lookup(self, cuid: str, acl_name: str) -> Any:
        return self.inner.lookup(cuid, acl_name)

    def update_activation(self, cuid: str, acl_name: str, activation_type: str) -> None:
        self.inner.update_activation(cuid, acl_name, activation_type)


def test_a_mitigation_activates_the_clients_activate_when_mitigating_acls() -> None:
    # RFC 8783 §7.1: while a mitigation is in progress, the client's
    # 'activate-when-mitigating' ACLs are active, named in the acl-list or not.
    s = Server(catalog())
    assert s.request(Method.PUT, 1, body()).code is Code.CREATED
    [apply] = s.outputs()
    assert [(a.acl_name, a.activation_type) for a in apply.acls] == [
        ("my-accept-list", "activate-when-mitigating")]
    # A catalog that cannot list them: only the named ones.
    s = Server(LookupOnly(catalog()))
    assert s.request(Method.PUT, 1, body()).code is Code.CREATED
    [apply] = s.outputs()
    assert apply.acls == ()
    assert s.request(Method.PUT, 2, body([{23: "rate-limit-udp", 52: 2}])).code is (
        Code.CREATED)


_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
            | st.text(max_size=8) | st.binary(max_size=8))
_keys = st.sampled_from([23, 52, 24, 200, 49152, 0, -1, 70000]) | _scalars.filter(
    lambda v: v == v)  # NaN keys are not findable again
_entries = st.dictionaries(_keys, _scalars | st.lists(_scalars, max_size=3), max_size=4)


@given(st.lists(_entries | _scalars, max_size=5))
@settings(max_examples=300)
def test_any_acl_list_parses_or_raises_the_protocol_error(value: list[Any]) -> None:
    catalog = MemoryAclCatalog()
    catalog.add(CUID, ACCEPT_LIST)
    try:
        acls = acl_list_of(raw_scope(value))
    except DotsProtocolError:
        return
    assert acls is not None
    active_acls(catalog, CUID, acls)
    assert acl_list_of(with_acl_list(raw_scope([]), acls)) == acls


def test_activations_are_counted() -> None:
    s = Server(catalog())
    s.request(Method.PUT, 1, body([{23: "my-accept-list", 52: 2}, {23: "rate-limit-udp"}]))
    s.request(Method.PUT, 2, body([{23: "nope"}]))  # refused: nothing counted
    assert (s.core.acl_activations, s.core.failed_activations) == (2, 0)
