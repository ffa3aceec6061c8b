"""``dots-gateway tls-secrets --rotate`` (issue 20 item 11) against the real daemon: the new
ticket key encrypts, the previous one still decrypts after the rotation's reload (a client
resumes with the ticket it held), and one more rotation retires it (a full handshake)."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from gateway import cli
from gateway.transport.dtls_client import connect_dtls
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind
from tests.integration.test_operations import CHANGED, dots_gateway, free_port, heartbeat
from tests.support.daemon import serving


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """(secrets dir, PKI, port) of a daemon that reads its secrets from the fleet files."""
    pki, secrets = tmp_path / "pki", tmp_path / "secrets"
    init_dev_pki(pki)
    assert cli.main(["tls-secrets", str(secrets)]) == 0
    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'cookie_secret_file = "{secrets}/cookie.secret"\n'
        f'ticket_key_file = "{secrets}/ticket.keys"\n')
    with serving("server", config, tmp_path / "daemon.log"):
        yield secrets, pki, port


async def session(pki: Path, port: int, resume: bytes | None = None) -> tuple[Any, Any]:
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    ctx = ClientContext(Kind.DTLS, ClientCredentials(pki / "client.pem", pki / "client.key",
                                                     pki / "ca.pem"))
    conn = await connect_dtls("127.0.0.1", port, ctx, replies.put_nowait,
                              server_name="localhost", timeout=10, resume=resume)
    return conn, replies


async def rotate_and_reload(secrets: Path) -> str:
    code, out, err = await dots_gateway("tls-secrets", "--rotate", str(secrets))
    assert code == 0, err
    code, reloaded, err = await dots_gateway("reload", "--state-dir",
                                             str(secrets.parent / "state"))
    assert code == 0, err
    return out


async def test_rotation_keeps_the_previous_ticket_key_until_the_next(
        fleet: tuple[Path, Path, int]) -> None:
    secrets, pki, port = fleet
    conn, replies = await session(pki, port)
    assert await heartbeat(conn, replies, 1) == CHANGED
    ticket = conn.ticket
    conn.close()
    assert ticket is not None

    out = await rotate_and_reload(secrets)
    assert "cookie.secret: new secret first, 1 previous kept" in out
    assert "ticket.keys: new secret first, 1 previous kept" in out
    conn, replies = await session(pki, port, resume=ticket)  # cookie: the new secret
    assert conn.session.resumed, "a ticket of the previous key must still resume"
    assert await heartbeat(conn, replies, 2) == CHANGED
    conn.close()

    out = await rotate_and_reload(secrets)
    assert "1 older removed" in out
    conn, replies = await session(pki, port, resume=ticket)
    assert not conn.session.resumed, "the key two rotations old must be retired"
    assert await heartbeat(conn, replies, 3) == CHANGED
    conn.close()


def test_rotated_files_are_private_and_newest_first(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tls-secrets", str(tmp_path)]) == 0
    before = [ln for ln in (tmp_path / "ticket.keys").read_text().splitlines()]
    assert cli.main(["tls-secrets", "--rotate", "--keep", "2", str(tmp_path)]) == 0
    assert cli.main(["tls-secrets", "--rotate", "--keep", "2", str(tmp_path)]) == 0
    for name in ("cookie.secret", "ticket.keys"):
        path = tmp_path / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
        assert len(lines) == 3 and len(set(lines)) == 3
    keys = [ln for ln in (tmp_path / "ticket.keys").read_text().splitlines()
            if not ln.startswith("#")]
    assert keys[2] == before[0]
    assert list(tmp_path.glob(".*")) == []  # no temporary file left


@pytest.mark.parametrize("content,message", [
    (None, "no such file to rotate"),
    ("not hex\n", "cookie secret is not hex"),
    ("abcd\n", "must be 32 bytes"),
])
def test_rotate_refuses_what_is_not_a_secret_file_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
        message: str) -> None:
    assert cli.main(["tls-secrets", str(tmp_path)]) == 0
    cookie = tmp_path / "cookie.secret"
    tickets_before = (tmp_path / "ticket.keys").read_text()
    if content is None:
        cookie.unlink()
    else:
        cookie.write_text(content)
    capsys.readouterr()
    assert cli.main(["tls-secrets", "--rotate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "ticket.keys").read_text() == tickets_before  # nothing half-done
    assert cli.main(["tls-secrets", "--rotate", "--keep", "0", str(tmp_path)]) == 2


def test_creating_over_existing_files_points_to_rotate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["tls-secrets", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main(["tls-secrets", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "exists; `dots-gateway tls-secrets --rotate" in err and len(err.splitlines()) == 1
