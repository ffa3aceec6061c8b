"""The data channel's resources (RFC 8783 over RESTCONF) against the real SQLite store:
the RFC's example bodies, status codes and ``ietf-restconf:errors`` bodies, limits, expiry."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.dots.authz import Authorizer, ClientRule
from gateway.dots.data_acls import CAPABILITIES
from gateway.dots.data_channel import DataChannelCore, DataLimits, DataRequest, DataResponse
from gateway.dots.data_nodes import RestconfError
from gateway.dots.message import Requester
from gateway.server.data_store import DataStoreDatabase
from tests.support import rfc8783 as rfc

ROOT = "/restconf/data/ietf-dots-data-channel:dots-data"
CLIENT = f"{ROOT}/dots-client={rfc.EXAMPLE_CUID}"
NOW = 1_800_000_000.0
ME = Requester(rfc.EXAMPLE_CUID)
RULE = ClientRule("example", cuid=rfc.EXAMPLE_CUID,
                  prefixes=(ipaddress.ip_network("2001:db8::/32"),
                            ipaddress.ip_network("198.51.100.0/24")),
                  fqdns=("example.com",))


@pytest.fixture
def store(tmp_path: Path) -> Any:
    db = DataStoreDatabase(tmp_path / "dots.sqlite")
    yield db
    db.close()


def core_for(store: DataStoreDatabase, **limits: int) -> DataChannelCore:
    return DataChannelCore(store, Authorizer([RULE]), DataLimits(**limits))


def call(core: DataChannelCore, method: str, path: str, body: Any = None, *,
         query: str = "", who: Requester = ME, now: float = NOW) -> DataResponse:
    raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    return core.handle(DataRequest(method, path, query, raw, who), now)


def error_of(answer: DataResponse) -> dict[str, Any]:
    assert answer.document is not None
    (error,) = answer.document["ietf-restconf:errors"]["error"]
    return error


def registered(store: DataStoreDatabase, **limits: int) -> DataChannelCore:
    core = core_for(store, **limits)
    assert call(core, "POST", ROOT, rfc.REGISTER).status == 201
    return core


def test_registration_follows_rfc8783_section_6_1(store: DataStoreDatabase) -> None:
    core = core_for(store)
    answer = call(core, "POST", ROOT, rfc.REGISTER)
    assert answer.status == 201 and dict(answer.headers)["Location"] == CLIENT
    again = call(core, "POST", ROOT, rfc.REGISTER)
    assert again.status == 409 and error_of(again)["error-tag"] == "data-exists"
    got = call(core, "GET", CLIENT)
    assert got.status == 200
    assert got.document == {"ietf-dots-data-channel:dots-client": [{"cuid": rfc.EXAMPLE_CUID}]}
    assert call(core, "PUT", CLIENT, rfc.REGISTER).status == 204  # refresh
    assert call(core, "DELETE", CLIENT).status == 204
    assert call(core, "GET", CLIENT).status == 404
    assert call(core, "PUT", CLIENT, rfc.REGISTER).status == 201


def test_cdid_only_from_a_trusted_gateway(store: DataStoreDatabase) -> None:
    core = core_for(store)
    body = {"ietf-dots-data-channel:dots-client": [{"cuid": rfc.EXAMPLE_CUID, "cdid": "x"}]}
    assert call(core, "POST", ROOT, body).status == 201
    assert store.clients()[rfc.EXAMPLE_CUID].cdid is None
    gateway = Requester(rfc.EXAMPLE_CUID, trusted_gateway=True)
    assert call(core, "PUT", CLIENT, body, who=gateway).status == 204
    assert store.clients()[rfc.EXAMPLE_CUID].cdid == "x"


def test_another_clients_cuid_is_forbidden(store: DataStoreDatabase) -> None:
    core = registered(store)
    other = {"ietf-dots-data-channel:dots-client": [{"cuid": "someone-else"}]}
    answer = call(core, "POST", ROOT, other)
    assert answer.status == 403 and error_of(answer)["error-tag"] == "access-denied"
    assert call(core, "GET", f"{ROOT}/dots-client=someone-else").status == 403
    stranger = Requester("unknown-cuid")
    assert call(core, "GET", CLIENT, who=stranger).status == 403


def test_alias_example_create_get_refresh_delete(store: DataStoreDatabase) -> None:
    core = registered(store)
    answer = call(core, "POST", CLIENT, rfc.ALIAS)
    assert answer.status == 201
    assert dict(answer.headers)["Location"] == f"{CLIENT}/aliases/alias=https1"
    got = call(core, "GET", f"{CLIENT}/aliases/alias=https1", now=NOW + 240)
    assert got.status == 200
    expected = copy.deepcopy(rfc.ALIAS)
    expected["ietf-dots-data-channel:aliases"]["alias"][0]["pending-lifetime"] = 10080 - 4
    assert got.document == expected
    config_only = call(core, "GET", f"{CLIENT}/aliases", query="content=config")
    assert config_only.document == rfc.ALIAS
    again = call(core, "POST", CLIENT, rfc.ALIAS)
    assert again.status == 409
    assert error_of(again)["error-path"].endswith("/aliases/alias=https1")
    entry = {"ietf-dots-data-channel:alias": rfc.ALIAS["ietf-dots-data-channel:aliases"]["alias"]}
    assert call(core, "PUT", f"{CLIENT}/aliases/alias=https1", entry).status == 204
    assert call(core, "DELETE", f"{CLIENT}/aliases/alias=https1").status == 204
    assert call(core, "GET", f"{CLIENT}/aliases/alias=https1").status == 404
    assert call(core, "DELETE", f"{CLIENT}/aliases/alias=https1").status == 404


@pytest.mark.parametrize("example", [rfc.ACL_IPV6_UDP, rfc.ACL_DNS_FRAGMENTS],
                         ids=["ipv6-udp", "dns-fragments"])
def test_acl_examples_round_trip(store: DataStoreDatabase, example: dict[str, Any]) -> None:
    core = registered(store)
    assert call(core, "POST", CLIENT, example).status == 201
    name = example["ietf-dots-data-channel:acls"]["acl"][0]["name"]
    got = call(core, "GET", f"{CLIENT}/acls/acl={name}", query="content=config")
    expected = copy.deepcopy(example)
    acl = expected["ietf-dots-data-channel:acls"]["acl"][0]
    acl.setdefault("activation-type", "activate-when-mitigating")  # the YANG default
    assert got.document == expected
    full = call(core, "GET", f"{CLIENT}/acls")
    assert full.document["ietf-dots-data-channel:acls"]["acl"][0]["pending-lifetime"] == 10080
    assert store.lookup(rfc.EXAMPLE_CUID, name) == acl


def test_capabilities(store: DataStoreDatabase) -> None:
    answer = call(core_for(store), "GET", f"{ROOT}/capabilities")
    assert answer.status == 200
    caps = answer.document["ietf-dots-data-channel:capabilities"]
    assert set(rfc.CAPABILITY_MEMBERS) <= set(caps) and caps == CAPABILITIES
    assert call(core_for(store), "DELETE", f"{ROOT}/capabilities").status == 405


def _alias(**fields: Any) -> dict[str, Any]:
    return {"ietf-dots-data-channel:aliases": {"alias": [{"name": "a", **fields}]}}


def _acl(ace: dict[str, Any], **fields: Any) -> dict[str, Any]:
    entry = {"name": "x", **fields, "aces": {"ace": [{"name": "r", **ace}]}}
    return {"ietf-dots-data-channel:acls": {"acl": [entry]}}


DROP = {"forwarding": "drop"}


@pytest.mark.parametrize(("body", "status", "tag", "path_end"), [
    (b"{not json", 400, "malformed-message", None),
    (_alias(**{"target-prefix": ["2001:db8::/32"], "colour": "red"}),
     400, "unknown-element", "/aliases/alias=a/colour"),
    (_alias(**{"target-prefix": "2001:db8::/32"}),
     400, "invalid-value", "/aliases/alias=a/target-prefix"),
    (_alias(**{"target-prefix": ["2001:db8::1/32"]}),
     400, "invalid-value", "/aliases/alias=a/target-prefix[1]"),
    (_alias(**{"target-protocol": [6]}), 400, "missing-element", "/aliases/alias=a"),
    (_alias(**{"target-prefix": ["192.0.2.0/24"]}), 403, "access-denied", "/aliases/alias=a"),
    (_acl({"matches": {"ipv4": {"destination-ipv4-network": "203.0.113.0/24"}},
           "actions": DROP}), 403, "access-denied", "/acls/acl=x"),
    (_acl({"actions": {"forwarding": "reject"}}),
     400, "invalid-value", "/acls/acl=x/aces/ace=r/actions/forwarding"),
    (_acl({"matches": {"ipv6": {"protocol": 6}}, "actions": DROP}, type="ipv4-acl-type"),
     400, "invalid-value", "/acls/acl=x/aces/ace=r/matches/ipv6"),
    (_acl({"matches": {"ipv4": {"protocol": 17}, "tcp": {}}, "actions": DROP}),
     400, "invalid-value", "/acls/acl=x/aces/ace=r/matches/tcp"),
    (_acl({"actions": {"forwarding": "drop", "rate-limit": "10.00"}}),
     400, "invalid-value", "/acls/acl=x/aces/ace=r/actions/rate-limit"),
    (_acl({"actions": DROP}, **{"activation-type": "sometimes"}),
     400, "invalid-value", "/acls/acl=x/activation-type"),
    (_acl({"actions": DROP}, **{"pending-lifetime": 5}),
     400, "invalid-value", "/acls/acl=x/pending-lifetime"),
    (_acl({"matches": {"udp": {"destination-port-range-or-operator":
                               {"lower-port": 90, "upper-port": 80}}}, "actions": DROP}),
     400, "invalid-value", "/udp/destination-port-range-or-operator/upper-port"),
    (_acl({"matches": {"ipv4": {"ttl": 256}}, "actions": DROP}),
     400, "invalid-value", "/matches/ipv4/ttl"),
    (_acl({"matches": {"tcp": {"flags": "syn bogus"}}, "actions": DROP}),
     400, "invalid-value", "/matches/tcp/flags"),
    ({"something-else": {}}, 400, "unknown-element", "/something-else"),
])
def test_bad_requests_name_the_node(store: DataStoreDatabase, body: Any, status: int, tag: str,
                                    path_end: str | None) -> None:
    core = registered(store)
    answer = call(core, "POST", CLIENT, body)
    assert answer.status == status, answer.document
    error = error_of(answer)
    assert error["error-tag"] == tag and error["error-message"]
    if path_end is not None:
        assert error["error-path"].endswith(path_end), error
    assert store.clients()[rfc.EXAMPLE_CUID].aliases == {}
    assert store.clients()[rfc.EXAMPLE_CUID].acls == {}


def test_unregistered_client_and_unknown_resources(store: DataStoreDatabase) -> None:
    core = core_for(store)
    assert call(core, "POST", CLIENT, rfc.ALIAS).status == 404
    assert call(core, "GET", "/restconf/data/other:thing").status == 404
    assert call(core, "GET", f"{CLIENT}/filters").status == 404
    answer = call(core, "PATCH", ROOT, {})
    assert answer.status == 405 and ("Allow", "GET, POST, PUT, DELETE") in answer.headers
    assert call(core, "GET", ROOT, query="depth=2").status == 400


def test_limits_answer_with_a_clear_error(store: DataStoreDatabase) -> None:
    core = registered(store, max_aliases=1, max_aces=2)
    assert call(core, "POST", CLIENT, rfc.ALIAS).status == 201
    second = copy.deepcopy(rfc.ALIAS)
    second["ietf-dots-data-channel:aliases"]["alias"][0]["name"] = "https2"
    answer = call(core, "POST", CLIENT, second)
    assert answer.status == 409 and error_of(answer)["error-tag"] == "resource-denied"
    assert "more than 1 aliases" in error_of(answer)["error-message"]
    answer = call(core, "POST", CLIENT, rfc.ACL_DNS_FRAGMENTS)  # three ACEs
    assert answer.status == 413 and error_of(answer)["error-tag"] == "too-big"


def test_pending_lifetime_runs_out(store: DataStoreDatabase) -> None:
    core = registered(store, lifetime=10)
    assert call(core, "POST", CLIENT, rfc.ALIAS).status == 201
    assert call(core, "GET", f"{CLIENT}/aliases/alias=https1", now=NOW + 599).status == 200
    assert call(core, "GET", f"{CLIENT}/aliases/alias=https1", now=NOW + 600).status == 404


def test_everything_acknowledged_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "dots.sqlite"
    store = DataStoreDatabase(path)
    core = registered(store)
    assert call(core, "POST", CLIENT, rfc.ALIAS).status == 201
    assert call(core, "POST", CLIENT, rfc.ACL_IPV6_UDP).status == 201
    store.update_activation(rfc.EXAMPLE_CUID, "test-acl-ipv6-udp", "immediate")
    store.close()
    again = DataStoreDatabase(path)
    try:
        client = again.clients()[rfc.EXAMPLE_CUID]
        assert list(client.aliases) == ["https1"]
        assert again.lookup(rfc.EXAMPLE_CUID, "test-acl-ipv6-udp")["activation-type"] == "immediate"
        assert again.alias(rfc.EXAMPLE_CUID, "https1") is not None
        assert again.lookup(rfc.EXAMPLE_CUID, "nope") is None
        with pytest.raises(KeyError):
            again.update_activation(rfc.EXAMPLE_CUID, "nope", "immediate")
        with pytest.raises(ValueError):
            again.update_activation(rfc.EXAMPLE_CUID, "test-acl-ipv6-udp", "sometimes")
    finally:
        again.close()


def test_the_mitigation_database_opens_the_shared_file(tmp_path: Path) -> None:
    from gateway.server.persistence import MitigationDatabase

    DataStoreDatabase(tmp_path / "dots.sqlite").close()  # data store first, on a new file
    MitigationDatabase(tmp_path / "dots.sqlite").close()
    MitigationDatabase(tmp_path / "b.sqlite").close()  # and the other way round
    DataStoreDatabase(tmp_path / "b.sqlite").close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "aces", "ace", "matches", "ipv4", "ipv6", "tcp", "udp", "icmp",
                         "actions", "forwarding", "target-prefix", "alias", "acl", "x",
                         "ietf-dots-data-channel:acls", "ietf-dots-data-channel:aliases"]),
        inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values, method=st.sampled_from(["POST", "PUT"]))
def test_any_json_is_answered_never_raises(store: DataStoreDatabase, body: Any,
                                           method: str) -> None:
    core = core_for(store)
    if rfc.EXAMPLE_CUID not in store.clients():
        call(core, "POST", ROOT, rfc.REGISTER)
    for path in (CLIENT, f"{CLIENT}/acls/acl=x", f"{CLIENT}/aliases/alias=a", ROOT):
        answer = call(core, method, path, body)
        assert answer.status in (201, 204, 400, 403, 404, 405, 409, 413)


def test_vet_checks_without_storing_and_inserts_the_cdid(store: DataStoreDatabase) -> None:
    """Gateway mode: the gateway's checks, the body it relays, nothing stored."""
    core = core_for(store)
    request = DataRequest("POST", ROOT, "", json.dumps(rfc.REGISTER).encode(), ME)
    relayed = json.loads(core.vet(request, NOW, cdid="site-cdid"))
    assert relayed == {"ietf-dots-data-channel:dots-client": [
        {"cuid": rfc.EXAMPLE_CUID, "cdid": "site-cdid"}]}
    assert json.loads(core.vet(request, NOW)) == rfc.REGISTER  # client-domain gateway
    alias = DataRequest("POST", CLIENT, "", json.dumps(rfc.ALIAS).encode(), ME)
    assert core.vet(alias, NOW) == alias.body
    assert store.clients() == {}
    outside = DataRequest("POST", CLIENT, "", json.dumps(_alias(
        **{"target-prefix": ["192.0.2.0/24"]})).encode(), ME)
    with pytest.raises(RestconfError) as refused:
        core.vet(outside, NOW)
    assert refused.value.status == 403
    with pytest.raises(RestconfError) as other:
        core.vet(DataRequest("GET", f"{ROOT}/dots-client=someone-else", "", b"", ME), NOW)
    assert other.value.status == 403


def test_the_store_satisfies_the_agreed_acl_catalog_protocol(store: DataStoreDatabase) -> None:
    """The interface agreed with the signal channel's RFC 9133 work (gateway/dots/filters.py
    in its branch), restated here: structural typing is the whole contract."""
    from collections.abc import Mapping
    from typing import Protocol, runtime_checkable

    @runtime_checkable
    class AclCatalog(Protocol):
        def lookup(self, cuid: str, acl_name: str) -> Mapping[str, Any] | None: ...

        def update_activation(self, cuid: str, acl_name: str,
                              activation_type: str) -> None: ...

    catalog: AclCatalog = store  # mypy checks the signatures here
    assert isinstance(catalog, AclCatalog)
    core = registered(store)
    assert call(core, "POST", CLIENT, rfc.ACL_IPV6_UDP).status == 201
    assert catalog.lookup(rfc.EXAMPLE_CUID, "test-acl-ipv6-udp") is not None
    catalog.update_activation(rfc.EXAMPLE_CUID, "test-acl-ipv6-udp", "deactivate")
    got = call(core, "GET", f"{CLIENT}/acls/acl=test-acl-ipv6-udp")
    assert got.document["ietf-dots-data-channel:acls"]["acl"][0]["activation-type"] == \
        "deactivate"


def test_the_sweep_expires_every_client(store: DataStoreDatabase) -> None:
    core = registered(store, lifetime=10)
    assert call(core, "POST", CLIENT, rfc.ALIAS).status == 201
    core.expire(NOW + 599)
    assert list(store.clients()[rfc.EXAMPLE_CUID].aliases) == ["https1"]
    core.expire(NOW + 600)  # the adapter's timer: no request of this client needed
    assert store.clients()[rfc.EXAMPLE_CUID].aliases == {}


def test_go_dots_forms_are_accepted_and_kept(store: DataStoreDatabase) -> None:
    """go-dots (the other public implementation) sends a bare flow label and uint32 TCP
    options / ICMP rest-of-header where RFC 8783 has a container and binary."""
    core = registered(store)
    body = _acl({"matches": {"ipv6": {"destination-ipv6-network": "2001:db8::/48",
                                      "flow-label": 5}, "icmp": {"rest-of-header": 7}},
                 "actions": DROP})
    assert call(core, "POST", CLIENT, body).status == 201
    tcp = _acl({"matches": {"ipv4": {"flags": "reserved more fragment", "ihl": 5},
                            "tcp": {"options": 3}}, "actions": DROP})
    tcp["ietf-dots-data-channel:acls"]["acl"][0]["name"] = "y"
    assert call(core, "POST", CLIENT, tcp).status == 201
    got = call(core, "GET", f"{CLIENT}/acls", query="content=config").document
    first, second = got["ietf-dots-data-channel:acls"]["acl"]
    assert first["aces"]["ace"][0]["matches"]["ipv6"]["flow-label"] == 5
    assert first["aces"]["ace"][0]["matches"]["icmp"] == {"rest-of-header": 7}
    assert second["aces"]["ace"][0]["matches"]["tcp"] == {"options": 3}
    assert second["aces"]["ace"][0]["matches"]["ipv4"]["flags"] == "reserved fragment more"
