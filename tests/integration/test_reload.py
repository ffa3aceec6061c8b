"""Reload of the real ``dots-gateway server`` process (issue 16 item 5): SIGHUP and
``dots-gateway reload`` re-read the file and apply it, a bad file keeps the running
configuration, and established sessions lose their access with their credential: PSK or
``[[clients]]`` rule removed, certificate revoked in a new CRL, certificate expired."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.devpki import init_dev_pki
from certs.identity import PeerIdentity, cuid_from_certificate
from gateway.transport.dtls_client import HandshakeError, connect_dtls
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind
from tests.integration.test_operations import (
    CHANGED,
    CREATED,
    dots_gateway,
    free_port,
    heartbeat,
    mitigate,
    scrape,
)
from tests.support.daemon import serving

UNAUTHORIZED = 0x81  # 4.01
KEYS = {"alpha": "alpha-key-0123456789", "beta": "beta-key-0123456789ab"}


@dataclass
class Setup:
    directory: Path
    pki: Path
    port: int
    metrics_port: int
    crl: Path | None = None

    @property
    def config(self) -> Path:
        return self.directory / "server.toml"

    @property
    def log(self) -> Path:
        return self.directory / "daemon.log"

    @property
    def socket(self) -> Path:
        return self.directory / "state" / "control.sock"

    @property
    def cuid(self) -> str:
        return cuid_from_certificate((self.pki / "client.pem").read_bytes())

    def write(self, *, psk: tuple[str, ...] = ("alpha", "beta"), cert_rule: bool = True,
              port: int | None = None, extra: str = "") -> None:
        crl = f'crl = "{self.crl}"\n' if self.crl is not None else ""
        text = (f'[general]\nstate_dir = "{self.directory / "state"}"\n'
                f'[server]\naddresses = ["127.0.0.1"]\nport = {port or self.port}\n'
                'transports = ["udp"]\n'
                f'[tls]\nca = "{self.pki}/ca.pem"\ncert = "{self.pki}/server.pem"\n'
                f'key = "{self.pki}/server.key"\n{crl}'
                f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n')
        for identity in psk:
            text += (f'[[psk]]\nidentity = "{identity}"\nkey = "{KEYS[identity]}"\n'
                     f'[[clients]]\nname = "{identity}"\npsk_identity = "{identity}"\n'
                     'prefixes = ["2001:db8::/32"]\n')
        if cert_rule:
            text += (f'[[clients]]\nname = "cert-client"\ncuid = "{self.cuid}"\n'
                     'prefixes = ["2001:db8::/32"]\n')
        self.config.write_text(text + extra)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    pki = tmp_path / "tls"
    init_dev_pki(pki)
    return Setup(tmp_path, pki, free_port(), free_port())


@pytest.fixture
def daemon(setup: Setup) -> Iterator[subprocess.Popen[str]]:
    setup.write()
    with serving("server", setup.config, setup.log) as proc:
        yield proc


async def cert_session(setup: Setup, cert: Path | None = None, key: Path | None = None
                       ) -> tuple[Any, asyncio.Queue[bytes]]:
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    ctx = ClientContext(Kind.DTLS, ClientCredentials(cert or setup.pki / "client.pem",
                                                     key or setup.pki / "client.key",
                                                     setup.pki / "ca.pem"))
    conn = await connect_dtls("127.0.0.1", setup.port, ctx, replies.put_nowait,
                              server_name="localhost", timeout=10)
    return conn, replies


async def psk_session(setup: Setup, identity: str) -> tuple[Any, asyncio.Queue[bytes]]:
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    ctx = ClientContext(Kind.DTLS, ClientCredentials(psk_identity=identity.encode(),
                                                     psk_key=KEYS[identity].encode()))
    conn = await connect_dtls("127.0.0.1", setup.port, ctx, replies.put_nowait, timeout=10)
    return conn, replies


def psk_cuid(identity: str) -> str:
    return PeerIdentity.from_psk_identity(identity.encode()).cuid


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` (generous bounds: the machine may be busy)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.1)


async def sighup(proc: subprocess.Popen[str], setup: Setup, done: str) -> None:
    """SIGHUP, then wait for the daemon's log line saying the reload ended (``done``)."""
    before = setup.log.read_text().count(done)
    os.kill(proc.pid, signal.SIGHUP)
    await until(lambda: setup.log.read_text().count(done) > before, 30, f"log line {done!r}")


RELOADED = "configuration reloaded from"


async def test_a_psk_removed_then_sighup_refuses_new_psk_handshakes(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    held, held_replies = await psk_session(setup, "alpha")
    assert await heartbeat(held, held_replies, 1) == CHANGED
    setup.write(psk=("beta",))
    await sighup(daemon, setup, RELOADED)
    with pytest.raises(HandshakeError):
        await psk_session(setup, "alpha")
    await until(lambda: held.closed, 15, "the session of the withdrawn PSK closed")
    other, other_replies = await psk_session(setup, "beta")  # the PSK still configured
    assert await heartbeat(other, other_replies, 2) == CHANGED
    other.close()
    assert "reason=psk_withdrawn" in setup.log.read_text()


async def test_a_clients_rule_removed_refuses_that_clients_requests(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    held, held_replies = await cert_session(setup)
    assert await mitigate(held, held_replies, setup.cuid, 1) == CREATED
    setup.write(cert_rule=False)
    await sighup(daemon, setup, RELOADED)
    await until(lambda: held.closed, 15, "the session of the removed client closed")
    conn, replies = await cert_session(setup)  # the certificate is still valid...
    try:
        # ... but no rule lets it ask for anything any more.
        assert await mitigate(conn, replies, setup.cuid, 2) == UNAUTHORIZED
    finally:
        conn.close()
    assert "reason=client_withdrawn" in setup.log.read_text()


async def test_a_bad_file_on_reload_keeps_the_running_configuration(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    good = setup.config.read_text()
    setup.config.write_text(good.replace('transports = ["udp"]', 'transports = ["sctp"]')
                            + '[[psk]]\nidentity = "gamma"\nkey = "short"\n')
    await sighup(daemon, setup, "reload failed, keeping the running configuration")
    log = setup.log.read_text()
    # Every problem, as check-config prints them, one line each.
    problems = [line for line in log.splitlines() if "reload: " in line]
    assert any("server.transports" in line for line in problems), log
    assert any("psk" in line and "at least 16 bytes" in line for line in problems), log
    assert RELOADED not in log
    # The running configuration is kept: credentials and rules as they were.
    conn, replies = await psk_session(setup, "alpha")
    assert await mitigate(conn, replies, psk_cuid("alpha"), 1) == CREATED
    conn.close()
    assert daemon.poll() is None


def write_crl(setup: Setup, revoked: Path | None) -> None:
    """A CRL of the PKI's CA, revoking ``revoked`` (a PEM certificate) if given; replaced
    atomically, as an operator's tooling would."""
    ca_key = serialization.load_pem_private_key((setup.pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((setup.pki / "ca.pem").read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(now - datetime.timedelta(hours=1))
               .next_update(now + datetime.timedelta(days=1)))
    if revoked is not None:
        cert = x509.load_pem_x509_certificate(revoked.read_bytes())
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
            .revocation_date(now - datetime.timedelta(minutes=5)).build())
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    assert setup.crl is not None
    partial = setup.crl.with_suffix(".new")
    partial.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    partial.replace(setup.crl)


async def test_a_certificate_revoked_in_a_new_crl_closes_its_session(setup: Setup) -> None:
    setup.crl = setup.directory / "clients.crl"
    write_crl(setup, None)
    setup.write()
    with serving("server", setup.config, setup.log):
        held, held_replies = await cert_session(setup)
        assert await mitigate(held, held_replies, setup.cuid, 1) == CREATED
        other, other_replies = await psk_session(setup, "alpha")
        # The operator revokes the client's certificate; no signal: the file is watched.
        write_crl(setup, setup.pki / "client.pem")
        await until(lambda: held.closed, 45, "the revoked client's session closed")
        samples = await scrape(setup.metrics_port)
        assert samples['dots_gateway_sessions_withdrawn_total{reason="certificate_revoked"}'] == 1
        assert await heartbeat(other, other_replies, 2) == CHANGED  # the others stay
        other.close()
        with pytest.raises(HandshakeError):
            await cert_session(setup)
    assert "reason=certificate_revoked" in setup.log.read_text()


def short_lived_client(setup: Setup, seconds: int) -> tuple[Path, Path]:
    """A client certificate of the PKI's CA that expires ``seconds`` from now."""
    ca_key = serialization.load_pem_private_key((setup.pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((setup.pki / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "short-lived")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(seconds=seconds))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    cert_path, key_path = setup.directory / "short.pem", setup.directory / "short.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_a_session_is_closed_when_its_peer_certificate_expires(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    cert, key = short_lived_client(setup, 15)  # time enough for a handshake on a busy box
    conn, replies = await cert_session(setup, cert, key)
    assert await heartbeat(conn, replies, 1) == CHANGED
    await until(lambda: conn.closed, 60, "the session of the expired certificate closed")
    samples = await scrape(setup.metrics_port)
    assert samples['dots_gateway_sessions_withdrawn_total{reason="certificate_expired"}'] == 1
    assert "reason=certificate_expired" in setup.log.read_text()


async def test_dots_gateway_reload_prints_what_changed(
        setup: Setup, daemon: subprocess.Popen[str]) -> None:
    held, held_replies = await psk_session(setup, "beta")
    assert await heartbeat(held, held_replies, 1) == CHANGED
    setup.write(psk=("alpha",), port=free_port())
    code, out, err = await dots_gateway("reload", "--socket", str(setup.socket))
    assert code == 0, err
    assert f"reloaded {setup.config}" in out
    assert "changed: psk, clients" in out
    assert "needs a restart (kept as running): server.port" in out
    assert "sessions closed: 1" in out and "psk_withdrawn" in out
    # The port needs a restart: the daemon still serves where it did.
    conn, replies = await psk_session(setup, "alpha")
    assert await heartbeat(conn, replies, 2) == CHANGED
    conn.close()
