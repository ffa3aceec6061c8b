"""Client authorization (RFC 9132 §4.4.1, §8) in the server core."""

from __future__ import annotations

import pytest

from gateway.dots.authz import ANY_NAME, EVERYWHERE, Authorizer, ClientRule
from gateway.dots.client import DotsClientCore
from gateway.dots.codes import Code
from gateway.dots.errors import InvalidValue, NotAuthorized
from gateway.dots.message import Requester
from gateway.dots.model import Scope, parse_prefix
from gateway.dots.server import DotsServerCore

CUID = "dz6pHjaADkaFTbjr0JGBpw"
RULES = [
    ClientRule("site-a", cuid=CUID, prefixes=(parse_prefix("192.0.2.0/24"),
                                              parse_prefix("2001:db8::/32")),
               fqdns=("example.com",)),
    ClientRule("cpe-42", psk_identity="cpe-42", prefixes=EVERYWHERE, allow_any_cuid=True),
    ClientRule("by-subject", cert_subject="CN=gw.example", prefixes=EVERYWHERE,
               fqdns=(ANY_NAME,)),
]


def put(requester: Requester, scope: Scope, cuid: str = CUID) -> tuple[Code, str]:
    core = DotsServerCore(authorizer=Authorizer(RULES))
    session = core.open_session(requester, 0.0)
    response = core.receive_request(session, DotsClientCore(cuid, 0.0).mitigation_request(scope),
                                    0.0)
    assert response is not None
    return response.code, response.diagnostic


def test_known_client_inside_its_domain_is_served() -> None:
    scope = Scope(target_prefix=(parse_prefix("192.0.2.128/25"),),
                  target_fqdn=("www.example.com",),
                  target_uri=("https://192.0.2.7/x",), lifetime=60)
    assert put(Requester(CUID), scope)[0] is Code.CREATED


@pytest.mark.parametrize(("scope", "fragment"), [
    (Scope(target_prefix=(parse_prefix("198.51.100.0/24"),), lifetime=60),
     "target-prefix 198.51.100.0/24 is outside"),
    (Scope(target_prefix=(parse_prefix("192.0.0.0/16"),), lifetime=60),
     "target-prefix 192.0.0.0/16 is outside"),
    (Scope(target_fqdn=("example.org",), lifetime=60), "target-fqdn example.org is outside"),
    (Scope(target_uri=("https://198.51.100.1/",), lifetime=60), "target-uri"),
])
def test_targets_outside_the_domain_are_4_01(scope: Scope, fragment: str) -> None:
    code, diagnostic = put(Requester(CUID), scope)
    assert code is Code.UNAUTHORIZED and fragment in diagnostic


def test_unknown_client_and_borrowed_cuid_are_4_01() -> None:
    scope = Scope(target_prefix=(parse_prefix("192.0.2.0/24"),), lifetime=60)
    stranger = "unknown-credential-00A"
    code, diagnostic = put(Requester(stranger), scope, cuid=stranger)
    assert code is Code.UNAUTHORIZED and "no configured DOTS client" in diagnostic
    code, diagnostic = put(Requester(CUID), scope, cuid="f30d281ce6b64fc5a0b91e")
    assert code is Code.UNAUTHORIZED and "not the one derived" in diagnostic


def test_rules_match_by_psk_identity_and_subject() -> None:
    scope = Scope(target_prefix=(parse_prefix("203.0.113.0/24"),), lifetime=60)
    gateway = Requester("gw-cuid-000000000000AA", psk_identity="cpe-42")
    assert put(gateway, scope, cuid="any-cuid-it-relays-0AA")[0] is Code.CREATED
    by_subject = Requester("subj-cuid-0000000000AA", subject="CN=gw.example")
    assert put(by_subject, scope, cuid="subj-cuid-0000000000AA")[0] is Code.CREATED


def test_aliases_are_unknown_without_a_data_channel() -> None:
    with pytest.raises(InvalidValue, match="alias-name web is unknown"):
        Authorizer.check_targets(RULES[0], Scope(alias_name=("web",), lifetime=60))


def test_get_and_delete_need_the_own_cuid_too() -> None:
    core = DotsServerCore(authorizer=Authorizer(RULES))
    session = core.open_session(Requester(CUID), 0.0)
    other = DotsClientCore("f30d281ce6b64fc5a0b91e", 0.0)
    for request in (other.retrieve(), other.withdraw(1)):
        response = core.receive_request(session, request, 0.0)
        assert response is not None and response.code is Code.UNAUTHORIZED
    with pytest.raises(NotAuthorized):
        Authorizer(RULES).rule_for(Requester("nobody-000000000000000"))
