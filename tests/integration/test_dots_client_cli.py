"""``dots-client`` end to end: the installed command as a subprocess against the real server.

The client finds the dev PKI in ``--state-dir``/pki by itself (as after
``dots-gateway certs init state/pki``); explicit ``--cert``/``--psk`` options and both URI
schemes are covered too. Output is one JSON document per exchange; exit codes 0, 2, 3, 4.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from gateway.client import cli as client_cli
from tests.integration.test_client_role import Server, free_port, read_psk, running_server

DOTS_CLIENT = Path(sys.executable).parent / "dots-client"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_dev_pki(directory)
    return directory


@pytest.fixture(scope="module")
def server(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("server"), pki) as running:
        yield running


@pytest.fixture(scope="module")
def state(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory holding the dev PKI in pki/, shared by the module's commands (the
    mid counter lives there too)."""
    directory = tmp_path_factory.mktemp("state")
    shutil.copytree(pki, directory / "pki")
    return directory


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DOTS_CLIENT), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def documents(text: str) -> list[dict[str, Any]]:
    """The JSON documents printed one after the other."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        doc, pos = decoder.raw_decode(text, pos)
        out.append(doc)
    return out


def scope_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["response"]["body"]["ietf-dots-signal-channel:mitigation-scope"]["scope"][0]


def test_mitigate_get_efficacy_withdraw(server: Server, state: Path) -> None:
    common = ["--server", server.uri("coaps", "::1"), "--state-dir", str(state)]
    made = run(*common, "mitigate", "--target-prefix", "192.0.2.0/28", "--port", "80",
               "443-444", "--protocol", "6", "17", "--lifetime", "600")
    assert made.returncode == 0, made.stderr
    (created,) = documents(made.stdout)
    mid = created["mid"]
    assert created["request"]["method"] == "PUT" and created["request"]["type"] == "NON"
    assert created["request"]["uri"].endswith(f"/mid={mid}")
    assert created["request"]["body"]["ietf-dots-signal-channel:mitigation-scope"]["scope"][
        0]["target-port-range"] == [{"lower-port": 80}, {"lower-port": 443, "upper-port": 444}]
    assert created["response"]["code"] == "2.01" and scope_of(created)["lifetime"] == 600

    got = run(*common, "get", "--mid", str(mid))
    assert got.returncode == 0, got.stderr
    (doc,) = documents(got.stdout)
    assert doc["response"]["code"] == "2.05"
    assert scope_of(doc)["status"] == "attack-mitigation-in-progress"
    assert scope_of(doc)["target-protocol"] == [6, 17]

    efficacy = run(*common, "efficacy", "--mid", str(mid), "--attack-status", "under-attack",
                   "--cbor")
    assert efficacy.returncode == 0, efficacy.stderr
    (doc,) = documents(efficacy.stdout)
    assert doc["response"]["code"] == "2.04" and doc["request"]["if-match"] == [""]
    assert doc["request"]["body"]["ietf-dots-signal-channel:mitigation-scope"]["scope"][0][
        "attack-status"] == "under-attack"
    assert bytes.fromhex(doc["request"]["cbor"])[:2] == b"\xa1\x01"  # {1: ...}

    gone = run(*common, "withdraw", "--mid", str(mid))
    assert gone.returncode == 0, gone.stderr
    assert documents(gone.stdout)[0]["response"]["code"] == "2.02"
    after = run(*common, "get", "--mid", str(mid))
    assert scope_of(documents(after.stdout)[0])["status"] == "dots-client-withdrawn-mitigation"


def test_mids_come_from_the_state_dir(server: Server, state: Path) -> None:
    common = ["--server", server.uri(), "--state-dir", str(state)]
    first = run(*common, "mitigate", "--target-prefix", "198.51.100.0/28")
    second = run(*common, "mitigate", "--target-prefix", "198.51.100.0/28")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert documents(second.stdout)[0]["mid"] > documents(first.stdout)[0]["mid"]
    assert documents(second.stdout)[0]["response"]["code"] == "2.01"


def test_hb_and_config_over_tls_with_explicit_certificates(server: Server, pki: Path,
                                                            tmp_path: Path) -> None:
    creds = ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"), "--ca",
             str(pki / "ca.pem"), "--state-dir", str(tmp_path)]
    hb = run("--server", server.uri("coaps+tcp", "::1"), *creds, "hb")
    assert hb.returncode == 0, hb.stderr
    (doc,) = documents(hb.stdout)
    assert doc["response"] == {"code": "2.04"} and "type" not in doc["request"]
    assert doc["request"]["uri"] == f"coaps+tcp://[::1]:{server.port}/.well-known/dots/hb"

    limits = run("config", "get", "--server", server.uri("coaps+tcp"), *creds)
    assert limits.returncode == 0, limits.stderr
    (doc,) = documents(limits.stdout)
    assert doc["response"]["code"] == "2.05" and doc["response"]["max-age"] == 3600
    idle = doc["response"]["body"]["ietf-dots-signal-channel:signal-config"]["idle-config"]
    assert idle["heartbeat-interval"]["min-value"] == 1

    put = run("--server", server.uri(), *creds, "config", "put", "--heartbeat-interval", "90")
    assert put.returncode == 0, put.stderr
    [stored] = documents(put.stdout)  # one document: the PUT, then what it negotiated
    assert stored["request"]["type"] == "CON" and stored["response"]["code"] == "2.01"
    negotiated = stored["negotiated"]
    assert negotiated["request"]["method"] == "GET"
    values = negotiated["response"]["body"]["ietf-dots-signal-channel:signal-config"]
    assert values["idle-config"]["heartbeat-interval"]["current-value"] == 90


def test_psk_over_dtls(server: Server, pki: Path, tmp_path: Path) -> None:
    identity, key = read_psk(pki)
    hb = run("--server", server.uri("coaps", "127.0.0.1"), "--psk-identity", identity, "--psk",
             key, "--state-dir", str(tmp_path), "hb")
    assert hb.returncode == 0, hb.stderr
    assert documents(hb.stdout)[0]["response"]["code"] == "2.04"


def test_dots_error_exits_3(server: Server, state: Path) -> None:
    missing = run("--server", server.uri(), "--state-dir", str(state), "get", "--mid", "999999")
    assert missing.returncode == client_cli.EXIT_DOTS_ERROR == 3
    assert documents(missing.stdout)[0]["response"]["code"] == "4.04"
    assert "4.04" in missing.stderr and "999999" in missing.stderr
    # Outside the client's configured prefixes: 4.01 with the server's diagnostic.
    foreign = run("--server", server.uri(), "--state-dir", str(state), "mitigate",
                  "--target-prefix", "10.0.0.0/8")
    assert foreign.returncode == 3 and "4.01" in foreign.stderr


def test_network_failure_exits_4(state: Path) -> None:
    port = free_port()  # nothing listens there: ICMP port unreachable, TCP RST
    down = run("--server", f"localhost:{port}", "--state-dir", str(state), "--timeout", "3",
               "hb", timeout=30)
    assert down.returncode == client_cli.EXIT_NETWORK == 4
    assert "network failure" in down.stderr and down.stdout == ""


@pytest.mark.parametrize("args", [
    ["mitigate"],  # no target
    ["mitigate", "--target-prefix", "not-a-prefix"],
    ["mitigate", "--target-prefix", "192.0.2.0/28", "--port", "http"],
    ["withdraw"],  # --mid is required
    ["get", "--count", "2"],  # --count needs --observe
    ["--server", "http://localhost", "hb"],
    ["--cert", "client.pem", "hb"],  # without --key and --ca
    ["efficacy", "--mid", "1", "--attack-status", "bored"],
    ["no-such-command"],
])
def test_usage_errors_exit_2(args: list[str], state: Path) -> None:
    result = run("--state-dir", str(state), *args)
    assert result.returncode == client_cli.EXIT_USAGE == 2, result.stderr
    assert result.stderr and result.stdout == ""


async def test_observe_prints_notifications(server: Server, state: Path) -> None:
    common = ["--server", server.uri("coaps", "::1"), "--state-dir", str(state)]
    made = run(*common, "mitigate", "--target-prefix", "203.0.113.0/28")
    mid = str(documents(made.stdout)[0]["mid"])
    proc = await asyncio.create_subprocess_exec(
        str(DOTS_CLIENT), *common, "get", "--mid", mid, "--observe", "--count", "1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        text = ""
        while not documents_complete(text):  # the registration's answer comes first
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, "dots-client ended before printing the registration"
            text += line.decode()
        (first,) = documents(text)
        assert first["request"]["observe"] == 0 and "observe" in first["response"]
        withdraw = run(*common, "withdraw", "--mid", mid)
        assert withdraw.returncode == 0, withdraw.stderr
        rest, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    (note,) = documents(rest.decode())
    assert scope_of(note)["status"] == "dots-client-withdrawn-mitigation"


def documents_complete(text: str) -> bool:
    try:
        return bool(text.strip()) and bool(documents(text))
    except json.JSONDecodeError:
        return False


def test_encode_decode_still_work(tmp_path: Path) -> None:
    body = tmp_path / "hb.json"
    body.write_text('{"ietf-dots-signal-channel:heartbeat": {"peer-hb-status": true}}')
    encoded = run("encode", str(body))
    assert encoded.returncode == 0 and encoded.stdout.strip() == "a11831a11833f5"
