"""The ``[discovery]`` section: defaults, the example, and errors that name their key."""

from __future__ import annotations

import ipaddress
from decimal import Decimal

import pytest

from gateway.config import ConfigError, default_settings, parse_config
from gateway.discovery.candidates import Mechanism, Transport
from gateway.discovery.lookups import FailureKind
from gateway.discovery.settings import Overrides, procedure_settings


def one_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml")
    errors = info.value.errors
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def test_defaults() -> None:
    d = default_settings().discovery
    assert d.interfaces == () and d.families == (4, 6) and not d.collect_all
    assert d.mechanisms == ("manual", "dhcp", "s-naptr", "dns-sd", "mdns", "anycast")
    assert d.anycast.addresses == () and d.dhcp.v4_seed_address_option is None
    assert d.retry["nxdomain"] == 300 and d.retry["timeout"] == 30


def test_full_section_maps_onto_the_procedure() -> None:
    s = parse_config("""
[[upstream]]
name = "a"
address = "192.0.2.10"
reference_identifier = "dots.example.net"
transport = "tcp"
[discovery]
interfaces = ["eth0"]
families = [6]
mechanisms = ["dhcp", "manual"]
collect_all = true
default_domain = "example.net"
dns_servers = ["2001:db8::53"]
trusted_domains = ["*.example.net"]
min_validity = 30
[discovery.dhcp]
timeout = 0.5
v4_seed_address_option = 224
[discovery.anycast]
ipv4 = ["192.0.2.46"]
reference_identifier = "dots.example.net"
[discovery.retry]
servfail = 5
""")
    d = s.discovery
    assert d.dhcp.timeout == Decimal("0.50") and d.dhcp.v4_seed_address_option == 224
    p = procedure_settings(s, Overrides(domains=("override.example",)))
    assert p.mechanisms == (Mechanism.DHCP, Mechanism.MANUAL) and p.collect_all
    assert p.manual[0].transport is Transport.SIGNAL_TCP
    assert p.anycast[0].address == ipaddress.ip_address("192.0.2.46")
    assert p.domains == ("override.example",) and p.default_domain == "example.net"
    assert p.retry_waits[FailureKind.SERVFAIL] == 5.0 and p.min_validity == 30.0
    assert p.dns_servers == (ipaddress.ip_address("2001:db8::53"),)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("families = [5]", "discovery.families[0]", "must be 4 or 6"),
        ("families = []", "discovery.families", "at least one"),
        ("families = [4, 4]", "discovery.families[1]", "duplicate"),
        ('mechanisms = ["dhcpv4"]', "discovery.mechanisms[0]", "did you mean 'dhcp'"),
        ('interfaces = ["eth/0"]', "discovery.interfaces[0]", "not an interface name"),
        ('default_domain = "not a name"', "discovery.default_domain", "not a DNS name"),
        ('dns_servers = ["dns.example"]', "discovery.dns_servers[0]", "not an IP address"),
        ('trusted_domains = ["*.bad name"]', "discovery.trusted_domains[0]", "DNS name"),
        ("min_validity = 0", "discovery.min_validity", "from 1"),
        ("colect_all = true", "discovery.colect_all", "did you mean 'collect_all'"),
        ("[discovery.retry]\nnxdomain = 0", "discovery.retry.nxdomain", "never 0"),
        ("[discovery.dhcp]\nv4_seed_address_option = 148", "discovery.dhcp.v4_seed_address_option",
         "already has a meaning"),
        ("[discovery.dhcp]\nv4_seed_address_option = 224\nv4_seed_ri_option = 224",
         "discovery.dhcp.v4_seed_ri_option", "must differ"),
        ("[discovery.dhcp]\ntimeout = 0", "discovery.dhcp.timeout", "greater than 0"),
        ('[discovery.anycast]\nipv4 = ["2001:db8::1"]\nreference_identifier = "a.example"',
         "discovery.anycast.ipv4[0]", "not an IPv4 address"),
        ('[discovery.anycast]\nipv6 = ["2001:db8::4646"]', "discovery.anycast.reference_identifier",
         "required when anycast addresses are given"),
        ('[discovery.mdns]\ninstance = "' + "x" * 64 + '"', "discovery.mdns.instance", "63 bytes"),
    ],
)
def test_errors_name_the_key(text: str, key: str, fragment: str) -> None:
    if not text.startswith("[discovery."):
        text = "[discovery]\n" + text
    error = one_error(text)
    assert error.key == key and fragment in error.message, str(error)


def test_address_only_upstream_still_needs_a_reference_identifier() -> None:
    # Seed §5: the [[upstream]] rule is what manual discovery relies on.
    error = one_error('[[upstream]]\nname = "u"\naddress = "192.0.2.10"')
    assert error.key == "upstream[0].reference_identifier"
