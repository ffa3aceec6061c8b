"""Configuration loading: defaults, the shipped example, and one test per kind of error.

Every error test checks the exact dotted key, because naming the key is the whole point of the
error (docs/style.md: "Config errors stop start-up with a message that names the key").
"""

from __future__ import annotations

import dataclasses
import ipaddress
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.config import (
    Backend,
    ConfigError,
    ConflictPolicy,
    LogFormat,
    LogLevel,
    Mode,
    PskEntry,
    Settings,
    Transport,
    check_config,
    default_settings,
    load_config,
    parse_config,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "dots-gateway.example.toml"
CUID = "jsx0P0wXmLcnNz8QDR63JQ"  # first 16 bytes of a SHA-256, base64url, unpadded
PSK = '[[psk]]\nidentity = "cpe"\nkey = "0123456789abcdef"\n'
CLIENT = '[[clients]]\nname = "c"\ncuid = "' + CUID + '"\nprefixes = ["192.0.2.0/24"]\n'


def errors_of(text: str) -> tuple[ConfigError, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.toml")
    return info.value.errors


def one_error(text: str) -> ConfigError:
    errors = errors_of(text)
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


# --- defaults and valid files -------------------------------------------------------------


def test_default_settings_are_the_embedded_defaults() -> None:
    s = default_settings(Path("/tmp/state"))
    assert s.source == "<defaults>"
    assert s.general.mode is Mode.TERMINAL
    assert s.general.state_dir == Path("/tmp/state")
    assert s.general.node_name == "dots-gateway"
    assert s.logging.format is LogFormat.KV and s.logging.level is LogLevel.INFO
    assert s.server.addresses == (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    assert s.server.port == 4646
    assert s.server.transports == (Transport.UDP, Transport.TCP)
    assert s.tls.dev_pki and s.tls.dev_pki_dir == Path("/tmp/state/pki")
    assert s.tls.ca is None and s.tls.cert is None and s.tls.key is None
    assert s.psk == () and s.clients == () and s.upstream == ()
    assert s.trusted_gateways.identities == ()
    assert s.metrics.listen is None
    assert s.control.socket == Path("/tmp/state/control.sock")


def test_default_session_and_mitigation_values() -> None:
    s = default_settings()
    assert s.general.state_dir == Path("state")  # ./state, the same for every command
    for config in (s.session.idle, s.session.mitigating):
        hb = config.heartbeat_interval
        assert (hb.min, hb.max, hb.default) == (15, 240, 30)
        assert config.missing_hb_allowed.default == 15
        assert config.probing_rate.default == 5
        assert config.max_retransmit.default == 3
        assert config.ack_timeout.default == Decimal("2.00")
        assert config.ack_random_factor.min == Decimal("1.10")
    assert s.session.max_age == 3600
    m = s.mitigation
    assert (m.active_but_terminating, m.active_but_terminating_max) == (120, 300)
    assert m.allow_indefinite_lifetime and m.max_lifetime == 0
    assert m.max_requests_per_client == 1000 and s.session.max_observations == 1024
    assert m.conflict_policy is ConflictPolicy.REJECT_NEW
    assert m.backend is Backend.LOG and m.command == ""


def test_empty_file_gives_the_defaults() -> None:
    # Except the data channel: a file opens only the listeners it names ([data_channel]).
    defaults = default_settings()
    assert defaults.data_channel.enabled
    assert parse_config("") == dataclasses.replace(
        defaults, source="<string>",
        data_channel=dataclasses.replace(defaults.data_channel, enabled=False))
    assert parse_config("[data_channel]\n").data_channel == defaults.data_channel


def test_example_file_loads_without_errors() -> None:
    assert check_config(EXAMPLE) == []
    s = load_config(EXAMPLE)
    assert s.source == str(EXAMPLE)
    assert s.tls.ca == EXAMPLE.parent / "tls" / "ca.pem" and not s.tls.dev_pki
    assert [p.identity for p in s.psk] == ["cpe-42", "ids-7"]
    assert s.psk[1].key == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert {c.name for c in s.clients} == {"example-enterprise", "example-cpe-42", "example-ids"}
    assert s.upstream[1].server_name == "dots.example.net"
    assert s.metrics.listen == ("127.0.0.1", 9464)


def test_example_documents_every_key() -> None:
    # A key added to the schema but not to the example would leave operators guessing.
    text = EXAMPLE.read_text()
    for field in dataclasses.fields(Settings):
        assert field.name == "source" or field.name in text


def test_relative_paths_resolve_against_the_file_directory(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "gw.toml"
    config.parent.mkdir()
    config.write_text(
        '[general]\nstate_dir = "state"\n'
        '[tls]\nca = "pki/ca.pem"\ncert = "/abs/cert.pem"\nkey = "pki/key.pem"\n'
        '[control]\nsocket = "run/gw.sock"\n'
    )
    s = load_config(config)
    assert s.general.state_dir == config.parent / "state"
    assert s.tls.ca == config.parent / "pki/ca.pem"
    assert s.tls.cert == Path("/abs/cert.pem")
    assert s.control.socket == config.parent / "run/gw.sock"


def test_parse_config_without_base_dir_keeps_relative_paths() -> None:
    s = parse_config('[general]\nstate_dir = "state"\n')
    assert s.general.state_dir == Path("state")
    assert s.control.socket == Path("state/control.sock")
    assert s.tls.dev_pki_dir == Path("state/pki")


def test_load_config_default_state_dir() -> None:
    assert parse_config("", default_state_dir=Path("/srv/gw")).general.state_dir == Path("/srv/gw")


def test_command_line_state_dir_wins_over_the_file(tmp_path: Path) -> None:
    """--state-dir (``state_dir=``) beats general.state_dir, and everything derived from
    the state directory follows it; the file's value is still checked."""
    config = tmp_path / "gw.toml"
    config.write_text('[general]\nstate_dir = "/srv/from-file"\n')
    s = load_config(config, state_dir=Path("/srv/cli"))
    assert s.general.state_dir == Path("/srv/cli")
    assert s.control.socket == Path("/srv/cli/control.sock")
    assert s.tls.dev_pki_dir == Path("/srv/cli/pki")
    assert load_config(config).general.state_dir == Path("/srv/from-file")
    config.write_text("[general]\nstate_dir = 4\n")
    with pytest.raises(ConfigError, match="general.state_dir"):
        load_config(config, state_dir=Path("/srv/cli"))


def test_full_valid_sections() -> None:
    s = parse_config(
        PSK
        + CLIENT.replace(f'cuid = "{CUID}"', 'psk_identity = "cpe"')
        + '[[clients]]\nname = "d"\ncert_subject = "CN=d,O=Example\\\\, Inc"\n'
        'prefixes = ["2001:db8::/32", "198.51.100.7"]\nfqdns = ["example.com."]\n'
        "allow_any_cuid = true\n"
        '[general]\nmode = "gateway"\nnode_name = ""\n'
        '[server]\naddresses = ["0.0.0.0"]\nport = 5684\ntransports = ["tcp"]\n'
        "[session.idle]\nack_timeout = { min = 1, max = 2.5 }\n"
        "heartbeat_interval = { min = 0, default = 0 }\n"
        '[mitigation]\nbackend = "command"\ncommand = "/usr/local/bin/mitigate"\n'
        'conflict_policy = "accept-both"\nmax_lifetime = 86400\nmax_requests_per_client = 50\n'
        "[session]\nmax_observations = 8\n"
        '[[upstream]]\nname = "u"\nhost = "dots.example.net"\n'
        '[metrics]\nlisten = "[::1]:9464"\n'
        '[control]\nsocket = ""\n'
    )
    assert s.general.mode is Mode.GATEWAY and s.general.node_name == "dots-gateway"
    assert s.server.transports == (Transport.TCP,) and s.server.port == 5684
    assert s.session.idle.ack_timeout.min == Decimal("1.00")
    assert s.session.idle.ack_timeout.max == Decimal("2.50")
    assert s.session.idle.ack_timeout.default == Decimal("2.00")  # built-in kept
    assert s.session.idle.heartbeat_interval.default == 0  # heartbeats disabled
    assert s.clients[0].psk_identity == "cpe" and s.clients[0].cuid is None
    assert s.clients[1].cert_subject == "CN=d,O=Example\\, Inc"
    assert s.clients[1].prefixes[1] == ipaddress.ip_network("198.51.100.7/32")
    assert s.clients[1].allow_any_cuid
    assert s.mitigation.backend is Backend.COMMAND
    assert s.mitigation.max_requests_per_client == 50 and s.session.max_observations == 8
    assert s.upstream[0].address is None and s.upstream[0].server_name == "dots.example.net"
    assert s.upstream[0].port == 4646 and s.upstream[0].transport is Transport.UDP
    assert s.metrics.listen == ("::1", 9464)


def test_settings_are_frozen_and_psk_keys_stay_out_of_repr() -> None:
    s = parse_config(PSK)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.server.port = 1  # type: ignore[misc]
    assert not hasattr(s, "__dict__")  # slots
    assert "0123456789abcdef" not in repr(s)
    assert s.psk == (PskEntry("cpe", b"0123456789abcdef"),)


# --- one error, exact key ---------------------------------------------------------------

SINGLE_ERRORS = [
    # wrong type, and TOML booleans are not integers
    ("wrong-type", '[server]\nport = "30"', "server.port", "expected an integer, got string '30'"),
    ("bool-as-int", "[server]\nport = true", "server.port", "got boolean true"),
    (
        "bool-as-int-nested",
        "[session.mitigating]\nprobing_rate = { min = false }",
        "session.mitigating.probing_rate.min",
        "expected an integer, got boolean false",
    ),
    ("float-as-int", "[server]\nport = 4646.0", "server.port", "got float 4646.0"),
    ("date", "[server]\nport = 1979-05-27", "server.port", "got date 1979-05-27"),
    ("long-value", f'[server]\nport = "{"x" * 60}"', "server.port", "..."),
    (
        "int-as-bool",
        "[mitigation]\nallow_indefinite_lifetime = 1",
        "mitigation.allow_indefinite_lifetime",
        "boolean",
    ),
    ("section-type", "server = 5", "server", "expected a table, got integer 5"),
    (
        "array-type",
        '[server]\naddresses = "::1"',
        "server.addresses",
        "expected an array of strings",
    ),
    (
        "array-element",
        "[server]\naddresses = [1]",
        "server.addresses[0]",
        "expected a string, got integer 1",
    ),
    ("empty-element", '[server]\naddresses = [""]', "server.addresses[0]", "must not be empty"),
    (
        "param-not-table",
        "[session.idle]\nheartbeat_interval = 30",
        "session.idle.heartbeat_interval",
        "expected a table such as { min = 15, max = 240, default = 30 }",
    ),
    # out of range
    ("port-0", "[server]\nport = 0", "server.port", "must be from 1 to 65535, got 0"),
    ("handshake-nice", "[limits]\nhandshake_nice = 20", "limits.handshake_nice",
     "must be from 0 to 19, got 20"),
    ("port-high", '[metrics]\nlisten = "127.0.0.1:65536"', "metrics.listen", "port '65536'"),
    (
        "uint16",
        "[session.idle]\nheartbeat_interval = { max = 65536 }",
        "session.idle.heartbeat_interval.max",
        "must be from 0 to 65535",
    ),
    (
        "probing-floor",
        "[session.idle]\nprobing_rate = { min = 0 }",
        "session.idle.probing_rate.min",
        "must be from 1 to 65535",
    ),
    ("max-age", "[session]\nmax_age = 0", "session.max_age", "Max-Age"),
    (
        "max-observations",
        "[session]\nmax_observations = 0",
        "session.max_observations",
        "must be from 1 to 1000000 observations per session",
    ),
    (
        "max-requests-per-client",
        "[mitigation]\nmax_requests_per_client = 0",
        "mitigation.max_requests_per_client",
        "must be from 1 to 10000000 requests per client",
    ),
    (
        "abt",
        "[mitigation]\nactive_but_terminating = 301",
        "mitigation.active_but_terminating",
        "must be from 0 to 300",
    ),
    (
        "abt-max-below",
        "[mitigation]\nactive_but_terminating = 200\nactive_but_terminating_max = 100",
        "mitigation.active_but_terminating_max",
        "at least active_but_terminating (200)",
    ),
    # decimals
    (
        "decimal-digits",
        "[session.idle]\nack_timeout = { min = 1.005 }",
        "session.idle.ack_timeout.min",
        "at most two digits",
    ),
    (
        "decimal-floor",
        "[session.idle]\nack_random_factor = { min = 1.0 }",
        "session.idle.ack_random_factor.min",
        "greater than 1",
    ),
    (
        "decimal-zero",
        "[session.idle]\nack_timeout = { min = 0 }",
        "session.idle.ack_timeout.min",
        "greater than 0",
    ),
    (
        "decimal-inf",
        "[session.idle]\nack_timeout = { max = inf }",
        "session.idle.ack_timeout.max",
        "got inf",
    ),
    (
        "decimal-nan",
        "[session.idle]\nack_timeout = { max = nan }",
        "session.idle.ack_timeout.max",
        "got nan",
    ),
    (
        "decimal-huge",
        "[session.idle]\nack_timeout = { max = 1e20 }",
        "session.idle.ack_timeout.max",
        "must be at most 92233720368547758.07",
    ),
    (
        "decimal-type",
        '[session.idle]\nack_timeout = { max = "2.0" }',
        "session.idle.ack_timeout.max",
        "expected a number, got string '2.0'",
    ),
    (
        "decimal-bool",
        "[session.idle]\nack_timeout = { max = true }",
        "session.idle.ack_timeout.max",
        "expected a number, got boolean true",
    ),
    # min <= default <= max, blaming what the operator wrote
    (
        "max-below-default",
        "[session.mitigating]\nheartbeat_interval = { max = 10 }",
        "session.mitigating.heartbeat_interval.max",
        "default 30 (built-in) is greater than max 10",
    ),
    (
        "min-above-default",
        "[session.idle]\nmissing_hb_allowed = { min = 16 }",
        "session.idle.missing_hb_allowed.min",
        "min 16 is greater than default 15 (built-in)",
    ),
    (
        "min-above-max",
        "[session.idle]\nmax_retransmit = { min = 9, max = 5, default = 4 }",
        "session.idle.max_retransmit.default",
        "min 9 is greater than default 4",
    ),
    (
        "min-above-max-decimal",
        "[session.idle]\nack_timeout = { min = 5.5, max = 5.25, default = 5.5 }",
        "session.idle.ack_timeout.max",
        "default 5.50 is greater than max 5.25",
    ),
    # unknown keys
    (
        "unknown-suggest",
        "[session.idle]\nheartbeat_intervall = { min = 1 }",
        "session.idle.heartbeat_intervall",
        "did you mean 'heartbeat_interval'?",
    ),
    ("unknown-section", "[sever]\nport = 1", "sever", "did you mean 'server'?"),
    (
        "unknown-part",
        "[session.idle]\nprobing_rate = { mn = 1 }",
        "session.idle.probing_rate.mn",
        "'min'",
    ),
    (
        "unknown-list",
        "[logging]\ncolour = true",
        "logging.colour",
        "known keys here: format, level",
    ),
    ("unknown-quoted", '[logging]\n"log file" = "x"', 'logging."log file"', "unknown key"),
    ("unknown-in-array", PSK + "secret = 1", "psk[0].secret", "unknown key"),
    # choices
    ("choice-suggest", '[general]\nmode = "gatway"', "general.mode", "did you mean 'gateway'?"),
    (
        "choice",
        '[logging]\nlevel = "verbose"',
        "logging.level",
        "'debug', 'info', 'warning', 'error'",
    ),
    (
        "choice-type",
        "[logging]\nformat = 1",
        "logging.format",
        "expected a string, one of 'kv', 'json'",
    ),
    # general
    ("node-name", '[general]\nnode_name = "a\\nb"', "general.node_name", "printable"),
    ("empty-path", '[general]\nstate_dir = ""', "general.state_dir", "must not be empty"),
    # server
    ("address", '[server]\naddresses = ["localhost"]', "server.addresses[0]", "not an IP address"),
    (
        "address-dup",
        '[server]\naddresses = ["::1", "0::1"]',
        "server.addresses[1]",
        "duplicate address '::1', also at server.addresses[0]",
    ),
    ("address-empty", "[server]\naddresses = []", "server.addresses", "at least one"),
    ("transport", '[server]\ntransports = ["sctp"]', "server.transports[0]", "'udp' or 'tcp'"),
    ("transport-dup", '[server]\ntransports = ["udp", "udp"]', "server.transports[1]", "duplicate"),
    ("transport-empty", "[server]\ntransports = []", "server.transports", "at least one"),
    # psk
    (
        "psk-table",
        '[psk]\nidentity = "a"',
        "psk",
        "expected an array of tables ([[psk]]), got table",
    ),
    ("psk-element", "psk = [1]", "psk[0]", "expected a table, got integer 1"),
    (
        "psk-missing-identity",
        '[[psk]]\nkey = "0123456789abcdef"',
        "psk[0].identity",
        "required key is missing",
    ),
    (
        "psk-identity-type",
        '[[psk]]\nidentity = 7\nkey = "0123456789abcdef"',
        "psk[0].identity",
        "got integer 7",
    ),
    (
        "psk-identity-long",
        f'[[psk]]\nidentity = "{"é" * 65}"\nkey = "0123456789abcdef"',
        "psk[0].identity",
        "128 bytes",
    ),
    (
        "psk-dup",
        PSK + PSK.replace("0123", "abcd"),
        "psk[1].identity",
        "duplicate identity 'cpe', also at psk[0].identity",
    ),
    ("psk-no-key", '[[psk]]\nidentity = "a"', "psk[0]", "needs a key"),
    (
        "psk-both",
        PSK + 'key_hex = "00112233445566778899aabbccddeeff"',
        "psk[0].key_hex",
        "either key or key_hex",
    ),
    (
        "psk-short-no-cascade",
        '[[psk]]\nidentity = "a"\nkey = "short"\n' + CLIENT + 'psk_identity = "a"',
        "psk[0].key",
        "at least 16 bytes",
    ),
    (
        "psk-short",
        '[[psk]]\nidentity = "a"\nkey = "short"',
        "psk[0].key",
        "at least 16 bytes, got 5",
    ),
    (
        "psk-short-hex",
        '[[psk]]\nidentity = "a"\nkey_hex = "0011"',
        "psk[0].key_hex",
        "at least 16 bytes, got 2",
    ),
    (
        "psk-odd-hex",
        '[[psk]]\nidentity = "a"\nkey_hex = "001"',
        "psk[0].key_hex",
        "even number of hex digits",
    ),
    (
        "psk-unprintable",
        '[[psk]]\nidentity = "a"\nkey = "0123456789abcdef\\u0007"',
        "psk[0].key",
        "printable",
    ),
    # tls
    (
        "tls-partial",
        '[tls]\nca = "ca.pem"\ncert = "c.pem"',
        "tls.key",
        "required when tls.ca and tls.cert is set",
    ),
    # clients
    (
        "client-no-identity",
        '[[clients]]\nname = "c"\nprefixes = ["192.0.2.0/24"]',
        "clients[0]",
        "needs cuid, psk_identity or cert_subject",
    ),
    (
        "client-no-name",
        CLIENT.replace('name = "c"\n', ""),
        "clients[0].name",
        "required key is missing",
    ),
    (
        "client-empty-name",
        CLIENT.replace('name = "c"', 'name = ""'),
        "clients[0].name",
        "must not be empty",
    ),
    (
        "client-no-prefixes",
        CLIENT.replace('prefixes = ["192.0.2.0/24"]\n', ""),
        "clients[0].prefixes",
        "required key is missing",
    ),
    (
        "client-empty-prefixes",
        CLIENT.replace('["192.0.2.0/24"]', "[]"),
        "clients[0].prefixes",
        "at least one prefix",
    ),
    (
        "host-bits",
        CLIENT.replace('["192.0.2.0/24"]', '["2001:db8::/32", "192.0.2.1/24"]'),
        "clients[0].prefixes[1]",
        "'192.0.2.1/24' has host bits set; did you mean '192.0.2.0/24'?",
    ),
    (
        "bad-prefix",
        CLIENT.replace("192.0.2.0/24", "192.0.2.0/33"),
        "clients[0].prefixes[0]",
        "not a prefix",
    ),
    ("cuid-length", CLIENT.replace(CUID, CUID[:-1]), "clients[0].cuid", "22 base64url characters"),
    ("cuid-padding-bits", CLIENT.replace(CUID, CUID[:-1] + "R"), "clients[0].cuid", "22 base64url"),
    ("cuid-alphabet", CLIENT.replace(CUID, CUID[:-1] + "+"), "clients[0].cuid", "22 base64url"),
    (
        "client-psk-unknown",
        CLIENT + 'psk_identity = "nobody"',
        "clients[0].psk_identity",
        "not the identity of any [[psk]]",
    ),
    ("cert-subject", CLIENT + 'cert_subject = "CN=a, O=b"', "clients[0].cert_subject", "RFC 4514"),
    (
        "client-dup-cuid",
        CLIENT + CLIENT.replace('"c"', '"d"'),
        "clients[1].cuid",
        f"duplicate cuid '{CUID}', also at clients[0].cuid",
    ),
    (
        "client-dup-name",
        CLIENT + CLIENT.replace(CUID, "oRY4w50JuftNGn5h2RBezA"),
        "clients[1].name",
        "duplicate name 'c'",
    ),
    ("fqdn", CLIENT + 'fqdns = ["-bad-.example"]', "clients[0].fqdns[0]", "not a DNS name"),
    ("fqdn-ip", CLIENT + 'fqdns = ["192.0.2.1"]', "clients[0].fqdns[0]", "not a DNS name"),
    # trusted gateways
    (
        "trusted-dup",
        '[trusted_gateways]\nidentities = ["a", "a"]',
        "trusted_gateways.identities[1]",
        "duplicate",
    ),
    # upstream
    (
        "upstream-address-only",
        '[[upstream]]\nname = "u"\naddress = "192.0.2.10"',
        "upstream[0].reference_identifier",
        "required when only an address is given",
    ),
    ("upstream-nothing", '[[upstream]]\nname = "u"', "upstream[0]", "needs address or host"),
    (
        "upstream-address",
        '[[upstream]]\nname = "u"\naddress = "dots.example"\nhost = "h.example"',
        "upstream[0].address",
        "not an IP address literal",
    ),
    (
        "upstream-host-ip",
        '[[upstream]]\nname = "u"\nhost = "192.0.2.10"',
        "upstream[0].host",
        "not a DNS name",
    ),
    (
        "upstream-ri",
        '[[upstream]]\nname = "u"\naddress = "::1"\nreference_identifier = "a..b"',
        "upstream[0].reference_identifier",
        "not a DNS name",
    ),
    (
        "upstream-dup",
        '[[upstream]]\nname = "u"\nhost = "a.example"\n'
        '[[upstream]]\nname = "u"\nhost = "b.example"',
        "upstream[1].name",
        "duplicate name",
    ),
    (
        "upstream-transport",
        '[[upstream]]\nname = "u"\nhost = "a.example"\ntransport = "quic"',
        "upstream[0].transport",
        "'udp', 'tcp'",
    ),
    # mitigation backend
    (
        "command-missing",
        '[mitigation]\nbackend = "command"',
        "mitigation.command",
        'required (non-empty) when backend = "command"',
    ),
    (
        "backend-bad",
        '[mitigation]\nbackend = "script"\ncommand = "x"',
        "mitigation.backend",
        "'log', 'command'",
    ),
    (
        "command-forbidden",
        '[mitigation]\ncommand = "/bin/true"',
        "mitigation.command",
        'only used with backend = "command"',
    ),
    # metrics
    ("metrics-v6", '[metrics]\nlisten = "::1:9464"', "metrics.listen", "in brackets"),
    (
        "metrics-no-port",
        '[metrics]\nlisten = "127.0.0.1"',
        "metrics.listen",
        'expected "host:port"',
    ),
    ("metrics-bracket", '[metrics]\nlisten = "[::1]9464"', "metrics.listen", '"[address]:port"'),
    (
        "metrics-v4-bracket",
        '[metrics]\nlisten = "[127.0.0.1]:9464"',
        "metrics.listen",
        "not an IPv6 address",
    ),
    (
        "metrics-host",
        '[metrics]\nlisten = "metrics.example:9464"',
        "metrics.listen",
        "IP literal or 'localhost'",
    ),
    ("metrics-port", '[metrics]\nlisten = "localhost:http"', "metrics.listen", "port 'http'"),
    # control
    (
        "socket-long",
        f'[control]\nsocket = "/{"s" * 120}"',
        "control.socket",
        "longer than the 107 bytes",
    ),
    (
        "socket-derived",
        f'[general]\nstate_dir = "/{"s" * 100}"',
        "control.socket",
        "derived from general.state_dir",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [case[1:] for case in SINGLE_ERRORS],
    ids=[c[0] for c in SINGLE_ERRORS],
)
def test_single_error_names_the_key(text: str, key: str, expected: str) -> None:
    error = one_error(text)
    assert error.key == key
    assert expected in error.message
    assert str(error) == f"test.toml: {key}: {error.message}"


def test_raised_error_for_one_problem_is_that_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[server]\nport = 0", "gw.toml")
    assert info.value.key == "server.port"
    assert info.value.errors == (info.value,)
    assert str(info.value).startswith("gw.toml: server.port: must be from 1 to 65535")


def test_psk_key_is_not_echoed_in_type_errors() -> None:
    error = one_error('[[psk]]\nidentity = "a"\nkey = 98765432109876543')
    assert error.key == "psk[0].key"
    assert "98765432109876543" not in str(error)


def test_syntax_error_does_not_echo_the_line() -> None:
    error = one_error('[[psk]]\nidentity = "a"\nkey = "hunter2-hunter2-hunter2\n')
    assert "line 3" in error.message
    assert "hunter2" not in str(error)


# --- many errors at once, files -----------------------------------------------------------


def test_all_errors_are_collected_in_section_order() -> None:
    text = (
        '[general]\nmode = "relay"\n'
        '[server]\nport = "4646"\naddresses = ["192.0.2.1", "nope"]\n'
        "[session.idle]\nheartbeat_interval = { min = 300 }\n"
        '[mitigation]\nbackend = "command"\n'
        "[[upstream]]\nname = 1\n"
        "[typo]\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.toml")
    keys = [e.key for e in info.value.errors]
    assert keys == [
        "general.mode",
        "server.addresses[1]",
        "server.port",
        "session.idle.heartbeat_interval.min",
        "mitigation.command",
        "upstream[0].name",
        "upstream[0]",
        "typo",
    ]
    assert info.value.key == "" and info.value.message == "8 problems"
    rendered = str(info.value)
    assert rendered.splitlines()[0] == "gw.toml: 8 problems"
    assert all(key in rendered for key in keys)


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[logging]\nlevel = "loud"\n[server]\nport = 0\n')
    problems = check_config(config)
    assert problems == [
        f"{config}: logging.level: must be one of 'debug', 'info', 'warning', 'error', got 'loud'",
        f"{config}: server.port: must be from 1 to 65535, got 0",
    ]


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('[server]\nport = 4646\naddresses = ["::1",\n  oops]\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.key == ""
    assert "broken.toml" in str(info.value)
    assert "TOML syntax error" in str(info.value) and "line 4" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: cannot read config file: No such file or directory"
    assert check_config(missing) == [str(info.value)]


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'[general]\nnode_name = "caf\xe9"\n')
    with pytest.raises(
        ConfigError, match=r"latin1\.toml: not UTF-8 text \(line 2, byte offset 26\)"
    ):
        load_config(config)
