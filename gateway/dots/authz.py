"""Who may ask for what: DOTS client authorization (RFC 9132 §4.4.1, §8).

A client is known by a configured rule that matches its credential (derived cuid, PSK
identity or certificate subject). It must use the cuid derived from its credential unless
its rule allows others (a gateway may rewrite cuids, §4.4.1.1), and every target must lie
in its rule's domain: prefixes inside its configured prefixes (§4.4.1.1: the server MUST
validate that target prefixes are within the scope of the client domain), FQDNs inside its
configured names. An alias must be one the client created over the data channel (RFC 8783;
its targets were checked then), else 4.00 (§4.4.1.3).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.dots.errors import InvalidValue, NotAuthorized
from gateway.dots.message import Requester
from gateway.dots.model import IPNetwork, Scope

EVERYWHERE: tuple[IPNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"),
                                     ipaddress.ip_network("::/0"))
#: In a rule's ``fqdns``: any name (the dev defaults; configuration cannot express it).
ANY_NAME = "*"


@dataclass(frozen=True, slots=True)
class ClientRule:
    name: str
    cuid: str | None = None
    psk_identity: str | None = None
    cert_subject: str | None = None
    prefixes: tuple[IPNetwork, ...] = ()
    fqdns: tuple[str, ...] = ()
    allow_any_cuid: bool = False

    def matches(self, requester: Requester) -> bool:
        return ((self.cuid is not None and self.cuid == requester.credential_id)
                or (self.psk_identity is not None and self.psk_identity == requester.psk_identity)
                or (self.cert_subject is not None and self.cert_subject == requester.subject))


class Authorizer:
    def __init__(self, rules: Iterable[ClientRule]) -> None:
        self.rules = tuple(rules)

    def rule_for(self, requester: Requester) -> ClientRule:
        for rule in self.rules:
            if rule.matches(requester):
                return rule
        raise NotAuthorized(
            f"no configured DOTS client matches this credential (cuid {requester.credential_id}"
            + (f", PSK identity {requester.psk_identity}" if requester.psk_identity else "")
            + (f", subject {requester.subject}" if requester.subject else "") + ")"
        )

    def check_cuid(self, requester: Requester, cuid: str) -> ClientRule:
        """The rule of an authorized client using ``cuid`` (4.01 otherwise)."""
        rule = self.rule_for(requester)
        if cuid != requester.credential_id and not rule.allow_any_cuid:
            raise NotAuthorized(
                f"cuid {cuid} is not the one derived from your credential "
                f"({requester.credential_id}, RFC 9132 App. B); a DOTS gateway relaying its "
                f"clients' requests needs allow_any_cuid = true in its [[clients]] entry"
            )
        return rule

    @staticmethod
    def check_targets(rule: ClientRule, scope: Scope, *,
                      known_alias: Callable[[str], bool] | None = None) -> None:
        """Every target inside the client's domain (4.01), no unknown alias (4.00).
        ``known_alias(name)``: the client created that alias over the data channel, whose
        targets were checked against its domain then (None: no data channel)."""
        for prefix in scope.target_prefix:
            if not any(prefix.version == own.version and prefix.subnet_of(own)  # type: ignore[arg-type]
                       for own in rule.prefixes):
                raise NotAuthorized(f"target-prefix {prefix} is outside the prefixes "
                                    f"configured for client {rule.name}")
        for fqdn in scope.target_fqdn:
            if not _name_within(fqdn, rule.fqdns):
                raise NotAuthorized(f"target-fqdn {fqdn} is outside the names configured for "
                                    f"client {rule.name}")
        for uri in scope.target_uri:
            from urllib.parse import urlsplit

            host = urlsplit(uri).hostname or ""
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                inside = _name_within(host, rule.fqdns)
            else:
                inside = any(address in own for own in rule.prefixes)
            if not inside:
                raise NotAuthorized(f"target-uri {uri} is outside the domain of client "
                                    f"{rule.name}")
        unknown = [name for name in scope.alias_name
                   if known_alias is None or not known_alias(name)]
        if unknown:
            raise InvalidValue(  # RFC 9132 §4.4.1.3: aliases the client did not create
                "alias-name " + ", ".join(unknown) + " is unknown: aliases are created over "
                "the DOTS data channel" + (", which this server does not offer"
                                           if known_alias is None else
                                           " (RFC 8783), and this client has none by that name")
            )


def _name_within(name: str, domains: tuple[str, ...]) -> bool:
    name = name.lower().rstrip(".")
    for domain in domains:
        if domain == ANY_NAME:
            return True
        domain = domain.lower().rstrip(".")
        if name == domain or name.endswith("." + domain):
            return True
    return False
