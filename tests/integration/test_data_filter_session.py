"""Issue 18's scripted session, as an operator would type it: ``dots-client data`` registers,
creates an alias and an ACL over the data channel (RFC 8783), then ``dots-client mitigate``
names the alias and activates the ACL over the signal channel (RFC 9133); GET answers carry
the ACL state. Against a terminal server (restarted with kill -9 in the middle: everything
acknowledged is still there), then through a gateway to an upstream server. Every daemon
and every command is a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from tests.interop.peers import free_port
from tests.support.daemon import serving

ROOT = Path(__file__).resolve().parents[2]
#: Not named by the mitigation: active while a mitigation is (RFC 8783 §7.1).
WHEN_MITIGATING = ("shape-web", "--destination", "2001:db8:6401::/48", "--protocol", "6",
                   "--destination-port", "443", "--action", "drop", "--activation-type",
                   "activate-when-mitigating")
ALIAS = ("web", "--target-prefix", "2001:db8:6401::/48", "--protocol", "6", "--port", "443")
ACL = ("block-dns", "--destination", "2001:db8:6401::/48", "--protocol", "17",
       "--destination-port", "53", "--action", "drop", "--activation-type",
       "activate-when-mitigating")


class Client:
    """``dots-client`` with one credential, a data-channel URL and a signal-channel URL."""

    def __init__(self, pki: Path, state: Path, data_port: int, signal_port: int) -> None:
        self.credentials = ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"),
                            "--ca", str(pki / "ca.pem"), "--state-dir", str(state)]
        self.data_url = f"https://127.0.0.1:{data_port}"
        self.signal_url = f"coaps://127.0.0.1:{signal_port}"

    def run(self, *argv: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "gateway.client.cli", *argv],
                              capture_output=True, text=True, timeout=90, cwd=ROOT,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
        return dict(json.loads(done.stdout))

    def data(self, *argv: str) -> dict[str, Any]:
        return self.run("data", *argv, *self.credentials, "--server", self.data_url,
                        "--timeout", "20")

    def signal(self, *argv: str) -> dict[str, Any]:
        return self.run("--server", self.signal_url, *self.credentials[:-2], "--state-dir",
                        self.credentials[-1], *argv)


def session(client: Client) -> None:
    """Peacetime over the data channel, then the attack over the signal channel."""
    assert client.data("register")["response"]["status"] == 201
    assert client.data("alias", "create", *ALIAS)["response"]["status"] == 201
    assert client.data("acl", "create", *ACL)["response"]["status"] == 201
    assert client.data("acl", "create", *WHEN_MITIGATING)["response"]["status"] == 201
    created = client.signal("mitigate", "--alias", "web", "--acl", "block-dns:immediate",
                            "--lifetime", "3600", "--mid", "7")
    assert "2.01" in json.dumps(created), created


def check_state(client: Client) -> None:
    """The GET answer carries the alias and the ACL's activation; the data channel holds the
    ACL with the activation type the mitigation set (RFC 9133 §3.2: it outlives it)."""
    scope = find(client.signal("get", "--mid", "7"), "scope")[0]
    assert scope["alias-name"] == ["web"]
    assert scope["ietf-dots-signal-control:acl-list"] == [
        {"acl-name": "block-dns", "activation-type": "immediate"}]
    assert scope["status"] == "attack-mitigation-in-progress"
    acl = client.data("acl", "list", "block-dns")["response"]["body"][
        "ietf-dots-data-channel:acls"]["acl"][0]
    assert acl["activation-type"] == "immediate"
    (alias,) = client.data("alias", "list")["response"]["body"][
        "ietf-dots-data-channel:aliases"]["alias"]
    assert alias["name"] == "web"


def find(document: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a JSON document."""
    if isinstance(document, dict):
        if key in document:
            return document[key]
        values = list(document.values())
    elif isinstance(document, list):
        values = document
    else:
        return None
    for value in values:
        found = find(value, key)
        if found is not None:
            return found
    return None


def tls(pki: Path) -> str:
    return f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'


def cuid(pki: Path) -> str:
    return cuid_from_certificate((pki / "client.pem").read_bytes())


def server_config(directory: Path, pki: Path, signal: int, data: int, extra: str = "") -> Path:
    config = directory / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{directory / "state"}"\n[logging]\nlevel = "info"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {signal}\ntransports = ["udp"]\n'
        + tls(pki) + extra +
        f'[data_channel]\naddresses = ["127.0.0.1"]\nport = {data}\n')
    return config


def test_terminal_server_session_survives_a_kill9(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_dev_pki(pki)
    signal, data = free_port(), free_port()
    config = server_config(tmp_path, pki, signal, data, extra=(
        f'[[clients]]\nname = "site"\ncuid = "{cuid(pki)}"\nprefixes = ["2001:db8:6401::/48"]\n'))
    client = Client(pki, tmp_path / "client", data, signal)
    with serving("server", config, tmp_path / "server.log") as first:
        session(client)
        check_state(client)
        first.kill()  # kill -9: no shutdown path at all
        first.wait(10)
    with serving("server", config, tmp_path / "server.log"):
        check_state(client)
    journal = [json.loads(line) for line in
               (tmp_path / "state" / "mitigations.jsonl").read_text().splitlines()]
    applied = [e for e in journal if e["action"] == "apply" and e["mid"] == 7]
    assert len(applied) == 2  # before and after the restart, the same ACLs each time
    for entry in applied:
        # The one the request activated, then the client's other activate-when-mitigating.
        assert [(a["name"], a["activation-type"]) for a in entry["acls"]] == [
            ("block-dns", "immediate"), ("shape-web", "activate-when-mitigating")]


def test_the_same_session_through_a_gateway(tmp_path: Path) -> None:
    provider, site = tmp_path / "provider-pki", tmp_path / "site-pki"
    init_dev_pki(provider)  # the upstream server, and the certificate of the gateway
    init_dev_pki(site)  # the gateway's server certificate, and the client's
    up_signal, up_data, gw_signal, gw_data = (free_port() for _ in range(4))
    (tmp_path / "up").mkdir()
    (tmp_path / "gw").mkdir()
    upstream = server_config(tmp_path / "up", provider, up_signal, up_data, extra=(
        f'[[clients]]\nname = "gateway"\ncuid = "{cuid(provider)}"\nallow_any_cuid = true\n'
        'prefixes = ["2001:db8::/32"]\n'
        f'[trusted_gateways]\nidentities = ["{cuid(provider)}"]\n'))
    gateway = tmp_path / "gw" / "gateway.toml"
    gateway.write_text(
        f'[general]\nstate_dir = "{tmp_path / "gw" / "state"}"\nmode = "gateway"\n'
        '[logging]\nlevel = "info"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {gw_signal}\ntransports = ["udp"]\n'
        + tls(site) +
        f'[[clients]]\nname = "site"\ncuid = "{cuid(site)}"\nprefixes = ["2001:db8:6401::/48"]\n'
        f'[[upstream]]\nname = "provider"\naddress = "127.0.0.1"\nport = {up_signal}\n'
        'reference_identifier = "localhost"\ntransport = "udp"\n'
        f'[gateway]\ncert = "{provider}/client.pem"\nkey = "{provider}/client.key"\n'
        f'ca = "{provider}/ca.pem"\n'
        f'[data_channel]\naddresses = ["127.0.0.1"]\nport = {gw_data}\n'
        f'upstream = "https://127.0.0.1:{up_data}"\nupstream_server_name = "localhost"\n')
    client = Client(site, tmp_path / "client", gw_data, gw_signal)
    with (serving("server", upstream, tmp_path / "upstream.log"),
          serving("run", gateway, tmp_path / "gateway.log")):
        session(client)
        check_state(client)
    # The upstream acted on it: its mitigator applied the ACL the client made through the
    # gateway's data channel.
    journal = [json.loads(line) for line in
               (tmp_path / "up" / "state" / "mitigations.jsonl").read_text().splitlines()]
    (applied,) = [e for e in journal if e["action"] == "apply"]
    assert applied["cuid"] == cuid(site)
    assert [(a["name"], a["activation-type"]) for a in applied["acls"]] == [
        ("block-dns", "immediate"), ("shape-web", "activate-when-mitigating")]
