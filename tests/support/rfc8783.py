"""Bodies of the RFC 8783 examples (JSON structure copied from the RFC's figures), shared
by the unit tests of the data channel's core and the curl interop tests."""

from __future__ import annotations

from typing import Any

EXAMPLE_CUID = "dz6pHjaADkaFTbjr0JGBpw"  # RFC 8783 §6.1

#: §6.1: registering a DOTS client.
REGISTER: dict[str, Any] = {
    "ietf-dots-data-channel:dots-client": [{"cuid": EXAMPLE_CUID}]
}

#: §6.2: creating an alias.
ALIAS: dict[str, Any] = {
    "ietf-dots-data-channel:aliases": {
        "alias": [{
            "name": "https1",
            "target-protocol": [6],
            "target-prefix": ["2001:db8:6401::1/128", "2001:db8:6401::2/128"],
            "target-port-range": [{"lower-port": 443}],
        }]
    }
}

#: §7.3: an IPv6/UDP filter that accepts (activate-when-mitigating).
ACL_IPV6_UDP: dict[str, Any] = {
    "ietf-dots-data-channel:acls": {
        "acl": [{
            "name": "test-acl-ipv6-udp",
            "type": "ipv6-acl-type",
            "activation-type": "activate-when-mitigating",
            "aces": {"ace": [{
                "name": "my-test-ace",
                "matches": {
                    "ipv6": {
                        "destination-ipv6-network": "2001:db8:6401::2/127",
                        "source-ipv6-network": "2001:db8:1234::/96",
                        "protocol": 17,
                        "flow-label": {"operator": "lte", "label": 10000},
                    },
                    "udp": {
                        "source-port-range-or-operator": {"operator": "lte", "port": 80},
                        "destination-port-range-or-operator": {"operator": "neq", "port": 1010},
                    },
                },
                "actions": {"forwarding": "accept"},
            }]},
        }]
    }
}

#: §7.3: DNS fragments: drop every fragment but the last, accept DNS, rate-limit the rest.
ACL_DNS_FRAGMENTS: dict[str, Any] = {
    "ietf-dots-data-channel:acls": {
        "acl": [{
            "name": "dns-fragments",
            "type": "ipv4-acl-type",
            "aces": {"ace": [
                {"name": "drop-all-except-last-fragment",
                 "matches": {"ipv4": {"fragment": {"operator": "match", "type": "isf"}}},
                 "actions": {"forwarding": "drop"}},
                {"name": "allow-dns-packets",
                 "matches": {"ipv4": {"destination-ipv4-network": "198.51.100.0/24"},
                             "udp": {"destination-port-range-or-operator":
                                     {"operator": "eq", "port": 53}}},
                 "actions": {"forwarding": "accept"}},
                {"name": "rate-limit-the-rest",
                 "matches": {"ipv4": {"destination-ipv4-network": "198.51.100.0/24"}},
                 "actions": {"forwarding": "accept", "rate-limit": "20.00"}},
            ]},
        }]
    }
}

#: §7.1: the capabilities a server answers (the members this server must have).
CAPABILITY_MEMBERS = ("address-family", "forwarding-actions", "rate-limit",
                      "transport-protocols", "ipv4", "ipv6", "tcp", "udp", "icmp")
