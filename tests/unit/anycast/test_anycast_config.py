"""The ``[anycast]`` section: defaults, the example, and one test per kind of error."""

from __future__ import annotations

import ipaddress
from decimal import Decimal

import pytest

from gateway.config import (
    AnycastBackend,
    ConfigError,
    InterfaceKind,
    default_settings,
    parse_config,
)

SERVER = '[server]\naddresses = ["192.0.2.46", "2001:db8::4646", "10.0.0.1"]\n'
ENABLED = SERVER + '[anycast]\nenabled = true\naddresses = ["192.0.2.46", "2001:db8::4646"]\n'


def errors(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return {e.key: e.message for e in caught.value.errors}


def test_anycast_is_off_by_default() -> None:
    a = default_settings().anycast
    assert not a.enabled and a.addresses == ()
    assert a.backend is AnycastBackend.KERNEL_TABLE and a.table == 46
    assert a.interface_kind is InterfaceKind.DUMMY and a.grace == Decimal("5.00")
    assert (a.health.rise, a.health.fall) == (3, 2) and a.health.command == ""


def test_a_full_section_is_read() -> None:
    s = parse_config(ENABLED + 'interface = "anycast0"\ninterface_kind = "ifb"\n'
                     'backend = "exabgp"\ntable = 100\ngrace = 0.5\n'
                     '[anycast.health]\ninterval = 0.1\nrise = 5\nfall = 1\nhold_down = 2\n'
                     'max_hold_down = 60\nhalf_life = 30\ncommand = "test ! -e /run/x"\n'
                     'command_timeout = 0.5\n')
    a = s.anycast
    assert a.enabled and a.addresses == (ipaddress.ip_address("192.0.2.46"),
                                         ipaddress.ip_address("2001:db8::4646"))
    assert (a.interface, a.interface_kind, a.backend, a.table) == (
        "anycast0", InterfaceKind.IFB, AnycastBackend.EXABGP, 100)
    assert a.grace == Decimal("0.50") and a.health.interval == Decimal("0.10")
    assert (a.health.rise, a.health.fall, a.health.hold_down) == (5, 1, Decimal("2.00"))
    assert a.health.command == "test ! -e /run/x"


def test_a_wildcard_server_address_covers_its_family() -> None:
    s = parse_config('[server]\naddresses = ["0.0.0.0", "::"]\n'
                     '[anycast]\nenabled = true\naddresses = ["192.0.2.46", "2001:db8::4646"]\n')
    assert len(s.anycast.addresses) == 2


@pytest.mark.parametrize(("text", "key", "fragment"), [
    (SERVER + "[anycast]\nenabled = true\n", "anycast.addresses", "at least one address"),
    (SERVER + '[anycast]\nenabled = true\naddresses = ["198.51.100.1"]\n',
     "anycast.addresses[0]", "not in server.addresses"),
    (SERVER + '[anycast]\naddresses = ["224.0.0.1"]\n', "anycast.addresses[0]", "unicast"),
    (SERVER + '[anycast]\naddresses = ["fe80::1"]\n', "anycast.addresses[0]", "link-local"),
    (SERVER + '[anycast]\naddresses = ["192.0.2.46", "192.0.2.46"]\n', "anycast.addresses[1]",
     "duplicate"),
    (SERVER + '[anycast]\naddresses = ["dots.example"]\n', "anycast.addresses[0]",
     "not an IP address"),
    (ENABLED + 'interface = "has space"\n', "anycast.interface", "not an interface name"),
    (ENABLED + 'interface = "a-very-long-name0"\n', "anycast.interface", "1-15 characters"),
    (ENABLED + 'interface_kind = "vrf"\n', "anycast.interface_kind", "must be one of"),
    (ENABLED + 'backend = "birdc"\n', "anycast.backend", "must be one of"),
    (ENABLED + "table = 254\n", "anycast.table", "main table"),
    (ENABLED + "table = 0\n", "anycast.table", "must be from 1"),
    (ENABLED + "grace = 0\n", "anycast.grace", "greater than 0"),
    (ENABLED + "[anycast.health]\nrise = 0\n", "anycast.health.rise", "must be from 1"),
    (ENABLED + "[anycast.health]\ninterval = 0.001\n", "anycast.health.interval",
     "two digits"),
    (ENABLED + "[anycast.health]\nhold_down = 100\nmax_hold_down = 50\n",
     "anycast.health.max_hold_down", "at least hold_down"),
    (ENABLED + "[anycast.health]\ncommand = \"check 'unbalanced\"\n",
     "anycast.health.command", "cannot be split"),
    (ENABLED + "[anycast.health]\nrises = 3\n", "anycast.health.rises",
     "did you mean 'rise'"),
    (ENABLED + "enable = true\n", "anycast.enable", "did you mean 'enabled'"),
])
def test_errors_name_their_key(text: str, key: str, fragment: str) -> None:
    found = errors(text)
    assert key in found, found
    assert fragment in found[key]
