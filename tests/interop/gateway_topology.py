"""Processes for the gateway interop suite: one DOTS server to talk to directly, and a
gateway (``dots-gateway run``) in front of another DOTS server of the same kind.

::

    peer --(down PKI)--> direct  (dots-gateway server)
    peer --(down PKI)--> gateway (dots-gateway run, mode = "gateway") --(up PKI)--> upstream

``direct`` and the gateway's downstream side are configured alike ([tls], [[psk]],
[[clients]], [session]: ``client_side``), so a peer uses the very same credentials and
request bytes on both paths and only the port differs. ``upstream`` is the provider's
server: its own PKI, the gateway's certificate as a trusted gateway allowed any cuid.

Every process is a real daemon started with ``python -m gateway.cli``; readiness is its
"dots-gateway serving" line, and each wait is bounded.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate, cuid_from_psk_identity
from gateway.server.persistence import DATABASE_NAME
from tests.interop.peers import free_port
from tests.support.daemon import serving

REPO = Path(__file__).resolve().parents[2]
#: A PSK tinydtls (aiocoap's DTLS) can use: identity <= 32 bytes, key <= 16 bytes, and only
#: the non-ECDHE suites, hence ``allow_legacy_psk`` on both client-facing servers.
TINYDTLS_PSK = ("aiocoap-tinydtls", "0123456789abcdef")
#: What the clients may protect, on both paths alike.
CLIENT_PREFIXES = '["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"]'
LIMITS = (
    "[session.idle]\nheartbeat_interval = { min = 1, max = 240, default = 30 }\n"
    "missing_hb_allowed = { min = 1, max = 20, default = 15 }\n"
    "[session.mitigating]\nheartbeat_interval = { min = 1, max = 240, default = 30 }\n"
    "missing_hb_allowed = { min = 1, max = 20, default = 15 }\n")
#: Max-Age of GET config (RFC 9132 §4.5.3) on the client-facing servers, and upstream: a
#: different value, so that a config answer relayed from upstream would show.
CLIENT_MAX_AGE, UPSTREAM_MAX_AGE = 600, 900
START_TIMEOUT = 20.0  # seconds for a daemon to print its "serving" line (2 shared cores)
UPSTREAM_TIMEOUT = 15.0  # seconds for the gateway's own session to the upstream server


@dataclass(frozen=True)
class Pkis:
    down: Path  # the gateway's domain: its server certificate, the peers' credentials
    up: Path  # the provider's: the upstream server, the certificate of the gateway

    @property
    def client_cuid(self) -> str:
        return cuid_from_certificate((self.down / "client.pem").read_bytes())

    @property
    def psk_cuid(self) -> str:
        return cuid_from_psk_identity(TINYDTLS_PSK[0])

    @property
    def gateway_cuid(self) -> str:
        return cuid_from_certificate((self.up / "client.pem").read_bytes())


def make_pkis(directory: Path) -> Pkis:
    pkis = Pkis(directory / "pki-down", directory / "pki-up")
    init_dev_pki(pkis.down)
    init_dev_pki(pkis.up)
    return pkis


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen[str]
    port: int
    log_path: Path
    state_dir: Path  # <directory>/<name>, as the *_config functions write it

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def saved(self, cuid: str, mid: int) -> list[tuple[str, str | None]]:
        """(credential_id, cdid) of the mitigation request (cuid, mid) this server saved:
        who sent it and for which DOTS client domain."""
        db = sqlite3.connect(self.state_dir / DATABASE_NAME, timeout=5)
        try:
            return list(db.execute("SELECT credential_id, cdid FROM mitigation "
                                   "WHERE cuid = ? AND mid = ?", (cuid, mid)))
        finally:
            db.close()


def session(max_age: int) -> str:
    return f"[session]\nmax_age = {max_age}\n" + LIMITS


def client_side(pkis: Pkis) -> str:
    """[tls], [[psk]], [[clients]] and [session]: what a peer meets, on either path."""
    down = pkis.down
    return (
        f'[tls]\nca = "{down / "ca.pem"}"\ncert = "{down / "server.pem"}"\n'
        f'key = "{down / "server.key"}"\nallow_legacy_psk = true\n'
        f'[[psk]]\nidentity = "{TINYDTLS_PSK[0]}"\nkey = "{TINYDTLS_PSK[1]}"\n'
        f'[[clients]]\nname = "cert-client"\ncuid = "{pkis.client_cuid}"\n'
        f'prefixes = {CLIENT_PREFIXES}\n'
        f'[[clients]]\nname = "psk-client"\npsk_identity = "{TINYDTLS_PSK[0]}"\n'
        f'prefixes = {CLIENT_PREFIXES}\n' + session(CLIENT_MAX_AGE))


def direct_config(directory: Path, pkis: Pkis, port: int) -> str:
    return (f'[general]\nstate_dir = "{directory / "direct"}"\nnode_name = "direct"\n'
            f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\n'
            f'transports = ["udp", "tcp"]\n' + client_side(pkis))


def upstream_config(directory: Path, pkis: Pkis, port: int) -> str:
    up = pkis.up
    return (f'[general]\nstate_dir = "{directory / "upstream"}"\nnode_name = "upstream"\n'
            f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\n'
            f'transports = ["udp", "tcp"]\n'
            f'[tls]\nca = "{up / "ca.pem"}"\ncert = "{up / "server.pem"}"\n'
            f'key = "{up / "server.key"}"\n' + session(UPSTREAM_MAX_AGE) +
            f'[trusted_gateways]\nidentities = ["{pkis.gateway_cuid}"]\n'
            f'[[clients]]\nname = "gateway"\ncuid = "{pkis.gateway_cuid}"\n'
            f'prefixes = ["0.0.0.0/0", "::/0"]\nallow_any_cuid = true\n')


def gateway_config(directory: Path, pkis: Pkis, port: int, upstream_port: int) -> str:
    up = pkis.up
    return (f'[general]\nmode = "gateway"\nstate_dir = "{directory / "gateway"}"\n'
            f'node_name = "gw"\n'
            f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\n'
            f'transports = ["udp", "tcp"]\n' + client_side(pkis) +
            f'[gateway]\ncert = "{up / "client.pem"}"\nkey = "{up / "client.key"}"\n'
            f'ca = "{up / "ca.pem"}"\nrequest_timeout = 6\n'
            f'[[upstream]]\nname = "upstream"\naddress = "127.0.0.1"\nport = {upstream_port}\n'
            'reference_identifier = "localhost"\n')


@contextlib.contextmanager
def daemon(directory: Path, name: str, command: str, config: str, port: int
           ) -> Iterator[Daemon]:
    """``python -m gateway.cli <command> --config <name>.toml``, ready when it says so."""
    path = directory / f"{name}.toml"
    path.write_text(config)
    log_path = directory / f"{name}.log"
    with serving(command, path, log_path, timeout=START_TIMEOUT) as proc:
        yield Daemon(name, proc, port, log_path, directory / name)


@dataclass(frozen=True)
class Topology:
    pkis: Pkis
    direct: Daemon
    gateway: Daemon
    upstream: Daemon

    def port(self, path: str) -> int:
        return {"direct": self.direct.port, "gateway": self.gateway.port}[path]


@contextlib.contextmanager
def topology(directory: Path) -> Iterator[Topology]:
    """The three daemons, with the gateway's own upstream session already up (so the first
    relayed request does not race its establishment)."""
    pkis = make_pkis(directory)
    d, u, g = free_port(), free_port(), free_port()
    with daemon(directory, "direct", "server", direct_config(directory, pkis, d), d) as direct, \
            daemon(directory, "upstream", "server", upstream_config(directory, pkis, u),
                   u) as upstream, \
            daemon(directory, "gateway", "run", gateway_config(directory, pkis, g, u),
                   g) as gateway:
        # The upstream server logs each session with the peer's cuid: the gateway's is up.
        deadline = time.monotonic() + UPSTREAM_TIMEOUT
        while f"cuid={pkis.gateway_cuid}" not in upstream.log():
            if time.monotonic() > deadline or gateway.proc.poll() is not None:
                raise RuntimeError("the gateway did not open its upstream session:\n"
                                   f"{gateway.log()[-3000:]}")
            time.sleep(0.1)
        yield Topology(pkis, direct, gateway, upstream)
