"""The [gateway] section: the relay's rules and the gateway's own upstream credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayDomain, Mode, parse_config
from gateway.config.schema import ConfigError
from gateway.relay.startup import UpstreamCredentialError, server_spec, upstream_credentials


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.toml")
    found = caught.value.errors or (caught.value,)
    return [f"{e.key}: {e.message}" for e in found]


def test_gateway_defaults() -> None:
    g = parse_config("").gateway
    assert g.domain is GatewayDomain.SERVER and g.insert_cdid and g.hop_limit == 16
    assert g.request_timeout == 10 and g.reconnect_interval == 60
    assert g.reconnect_max_interval == 300
    assert g.cert is None and g.psk_identity is None


def test_gateway_keys_are_read() -> None:
    settings = parse_config(
        '[general]\nmode = "gateway"\n'
        '[gateway]\ndomain = "client"\ninsert_cdid = false\nhop_limit = 4\nidentity = "cpe-1"\n'
        'request_timeout = 3\nheartbeat_interval = 5\nmissing_hb_allowed = 2\n'
        'reconnect_interval = 60\npsk_identity = "gw"\n'
        'psk_key_hex = "00112233445566778899aabbccddeeff"\n'
        '[[upstream]]\nname = "up"\naddress = "192.0.2.1"\nreference_identifier = "dots.example"\n'
        'transport = "tcp"\nport = 5000\n', base_dir=Path("/etc/x"))
    g = settings.gateway
    assert settings.general.mode is Mode.GATEWAY and g.domain is GatewayDomain.CLIENT
    assert (g.insert_cdid, g.hop_limit, g.identity) == (False, 4, "cpe-1")
    assert (g.heartbeat_interval, g.missing_hb_allowed, g.reconnect_interval) == (5, 2, 60)
    assert g.psk_key == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert "psk_key" not in repr(g).replace("psk_key=", "")  # never printed
    credentials = upstream_credentials(settings)
    assert credentials.psk_identity == b"gw" and credentials.cert_chain is None
    spec = server_spec(settings.upstream[0])
    assert (spec.host, spec.port, spec.reference_identifier) == ("192.0.2.1", 5000,
                                                                 "dots.example")
    assert [t.value for t in spec.transports] == ["tcp"]


@pytest.mark.parametrize(("text", "expected"), [
    ('domain = "both"', "gateway.domain"),
    ("hop_limit = 0", "gateway.hop_limit"),
    ("hop_limit = 256", "gateway.hop_limit"),
    ("reconnect_interval = 10", "gateway.reconnect_interval"),
    ("reconnect_interval = 120\nreconnect_max_interval = 60", "gateway.reconnect_max_interval"),
    ('cert = "a.pem"', "gateway.key"),
    ('psk_identity = "gw"', "gateway.psk_key_hex"),
    ('psk_identity = "gw"\npsk_key_hex = "0011"', "gateway.psk_key_hex"),
    ("no_such_key = 1", "gateway.no_such_key"),
])
def test_gateway_errors_name_the_key(text: str, expected: str) -> None:
    assert any(line.startswith(expected) for line in errors_of(f"[gateway]\n{text}\n"))


def test_gateway_mode_without_any_client_credential_says_what_to_set(tmp_path: Path) -> None:
    settings = parse_config(
        f'[general]\nmode = "gateway"\nstate_dir = "{tmp_path}"\n'
        f'[tls]\nca = "{tmp_path}/ca.pem"\ncert = "{tmp_path}/s.pem"\nkey = "{tmp_path}/s.key"\n')
    with pytest.raises(UpstreamCredentialError, match="gateway.cert and gateway.key"):
        upstream_credentials(settings)


def test_redirect_static_by_cuid_or_prefixes() -> None:
    settings = parse_config(
        '[redirect]\nname = "dots-a.example.net"\n'
        '[[redirect.static]]\ncuid = "abc"\nname = "dots-b.example.net"\n'
        '[[redirect.static]]\nprefixes = ["198.51.100.0/24"]\nname = "dots-c.example.net"\n')
    first, second = settings.redirect.static
    assert (first.cuid, first.prefixes) == ("abc", ())
    assert second.cuid is None and [str(p) for p in second.prefixes] == ["198.51.100.0/24"]
    for body in ('name = "dots-b.example.net"\n',
                 'cuid = "abc"\nprefixes = ["198.51.100.0/24"]\nname = "dots-b.example.net"\n'):
        assert any(line.startswith("redirect.static[0]") and "cuid or prefixes" in line
                   for line in errors_of(f"[[redirect.static]]\n{body}"))
