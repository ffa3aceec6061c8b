"""Start-up on a bad state directory (issue 17, item 2): truncated, corrupt and read-only
databases are refused with one clear line that names the file and says what to do; never a
traceback. Both files: the server's mitigations and the gateway's relay table.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from gateway.dots.mitigation import MitigationStore
from gateway.dots.mitigation_lifecycle import Owner
from gateway.dots.model import Scope, parse_prefix
from gateway.dots.relay import RelayedMitigation, RelayTable
from gateway.relay.store import RelayDatabase
from gateway.server.persistence import MitigationDatabase
from tests.integration.test_bad_input import free_udp_port

ROOT = Path(__file__).resolve().parents[2]


def saved_mitigations(state: Path) -> Path:
    db = MitigationDatabase.in_state_dir(state)
    store = MitigationStore()
    for mid in range(1, 200):  # a few pages, so that damage lands inside the file
        store.put("cuid-a", mid, Scope(target_prefix=(parse_prefix(f"10.0.{mid}.0/24"),),
                                       lifetime=600), Owner("cred"), 0.0)
    assert db.sync(store)
    db.close()
    return db.path


def saved_relay(state: Path) -> Path:
    db = RelayDatabase.in_state_dir(state)
    table = RelayTable()
    for mid in range(1, 200):
        table.put(RelayedMitigation("cuid-a", mid, "cred", None, b"\xa0" * 200, True, 600))
    assert db.sync(table)
    db.close()
    return db.path


def truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2 + 100)


def corrupt(path: Path) -> None:
    """The header stays, the pages after it are garbage (a torn or scribbled file)."""
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(8192))


def corrupt_tail(path: Path) -> None:
    """The last page (mitigation rows) is garbage; the schema pages are intact."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - 4096)
        f.write(os.urandom(4096))


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 100)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """The state directory on a read-only mount (root bypasses file permissions)."""
    subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=False)


def start(tmp: Path, state: Path, *, gateway: bool) -> subprocess.CompletedProcess[str]:
    pki = tmp / "pki"
    if not pki.exists():
        init_dev_pki(pki)
    port = free_udp_port()
    text = (f'[general]\nstate_dir = "{state}"\n'
            + ('mode = "gateway"\n' if gateway else "")
            + f'[logging]\nlevel = "warning"\n[control]\nsocket = "{tmp / "c.sock"}"\n'
            f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp"]\n'
            f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n')
    if gateway:
        text += (f'[gateway]\ncert = "{pki}/client.pem"\nkey = "{pki}/client.key"\n'
                 f'ca = "{pki}/ca.pem"\n'
                 f'[[upstream]]\nname = "up"\naddress = "127.0.0.1"\n'
                 f'port = {free_udp_port()}\nreference_identifier = "localhost"\n')
    config = tmp / "config.toml"
    config.write_text(text)
    command = [sys.executable, "-m", "gateway.cli", "run" if gateway else "server", "--config",
               str(config)]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, stdin=subprocess.DEVNULL) as proc:
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # it started on the bad state: stop it
            proc.terminate()
            out, err = proc.communicate(timeout=15)
        return subprocess.CompletedProcess(command, proc.returncode, out, err)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate, "corrupt": corrupt, "corrupt-tail": corrupt_tail,
    "not-sqlite": garbage}


def assert_refused(result: subprocess.CompletedProcess[str], path: Path) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "dots-gateway serving" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if str(path) in line]
    assert len(lines) == 1, result.stderr
    assert any(what in lines[0] for what in ("move it aside", "writable", "restore")), lines[0]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_mitigation_database_is_refused_in_one_line(tmp_path: Path, damage: str
                                                            ) -> None:
    state = tmp_path / "state"
    path = saved_mitigations(state)
    DAMAGE[damage](path)
    assert_refused(start(tmp_path, state, gateway=False), path)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_relay_database_is_refused_in_one_line(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    path = saved_relay(state)
    DAMAGE[damage](path)
    assert_refused(start(tmp_path, state, gateway=True), path)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts file systems (root)")
@pytest.mark.parametrize("gateway", [False, True], ids=["server", "gateway"])
def test_read_only_state_is_refused_in_one_line(tmp_path: Path, gateway: bool) -> None:
    state = tmp_path / "state"
    path = saved_mitigations(state)
    if gateway:
        saved_relay(state)
    with read_only(state):
        result = start(tmp_path, state, gateway=gateway)
    assert_refused(result, path)
