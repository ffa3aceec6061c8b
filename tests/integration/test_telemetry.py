"""RFC 9244 telemetry end to end: ``dots-client telemetry ...`` against a real daemon over
DTLS (dev PKI), persisted across a restart, Observe on /tm, and the telemetry of mitigation
requests and efficacy updates in the mitigator's journal."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from tests.integration.test_client_role import running_server
from tests.integration.test_dots_client_cli import DOTS_CLIENT, documents, run

SETUP = "ietf-dots-telemetry:telemetry-setup"
TM = "ietf-dots-telemetry:telemetry"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    init_dev_pki(directory)
    return directory


@pytest.fixture
def state(pki: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "client-state"
    directory.mkdir()
    shutil.copytree(pki, directory / "pki")
    return directory


def ok(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    (doc,) = documents(result.stdout)
    return doc


def pre_mitigation(doc: dict[str, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = doc["response"]["body"][TM]["pre-or-ongoing-mitigation"]
    return entries


def test_setup_and_telemetry_round_trip_observe_and_restart(pki: Path, state: Path,
                                                            tmp_path: Path) -> None:
    server_dir = tmp_path / "server"
    with running_server(server_dir, pki) as server:
        common = ["--server", server.uri("coaps"), "--state-dir", str(state)]
        limits = ok(run(*common, "telemetry", "get-setup"))
        assert limits["response"]["code"] == "2.05"
        assert "max-config-values" in limits["response"]["body"][SETUP]

        made = ok(run(*common, "telemetry", "setup", "--percentiles", "5,65,95"))
        assert made["response"]["code"] == "2.01"
        tsid = int(made["request"]["uri"].rsplit("tsid=", 1)[1])
        pipe = ok(run(*common, "telemetry", "setup", "--pipe", "link1=10:gigabit-ps"))
        assert pipe["response"]["code"] == "2.01"

        bad = run(*common, "telemetry", "setup", "--percentiles", "60,50,90")
        assert bad.returncode == 3
        assert "4.00 low-percentile <= mid-percentile" in bad.stderr

        put = ok(run(*common, "telemetry", "put", "--target-prefix", "192.0.2.0/24",
                     "--total-attack-traffic", "900:megabit-ps"))
        assert put["response"]["code"] == "2.04"
        (entry,) = pre_mitigation(ok(run(*common, "telemetry", "get")))
        assert entry["target"] == {"target-prefix": ["192.0.2.0/24"]}
        assert entry["total-attack-traffic"] == [{"unit": "megabit-ps", "peak-g": "900"}]
        tmid = entry["tmid"]

        # Observe on /tm (RFC 9244 §8.3): a newer tmid for the same target is notified.
        errors = tmp_path / "observer.err"
        with open(errors, "w") as err:
            observer = subprocess.Popen(
                [str(DOTS_CLIENT), *common, "telemetry", "get", "--observe", "--count", "1"],
                stdout=subprocess.PIPE, stderr=err, text=True, stdin=subprocess.DEVNULL)
        try:
            assert observer.stdout is not None
            first = ""
            for _ in range(200):  # the registration's document, printed with indent=2
                line = observer.stdout.readline()
                first += line
                if line in ("}\n", ""):
                    break
            assert first.endswith("}\n"), errors.read_text()
            ok(run(*common, "telemetry", "put", "--target-prefix", "192.0.2.0/24",
                   "--total-attack-traffic", "1500:megabit-ps"))
            observer.wait(timeout=30)
            out = observer.stdout.read()
        finally:
            if observer.poll() is None:
                observer.kill()
                observer.wait(timeout=5)
            if observer.stdout is not None:
                observer.stdout.close()
        assert observer.returncode == 0, errors.read_text()
        registered, notification = documents(first + out)
        assert registered["response"]["observe"] == 1
        (now,) = pre_mitigation(notification)
        assert now["tmid"] > tmid  # §8.2: the higher tmid replaced the lower one
        assert now["total-attack-traffic"][0]["peak-g"] == "1500"
        tmid = now["tmid"]

    # A new process reads the same state directory: everything is still there.
    with running_server(server_dir, pki) as server:
        common = ["--server", server.uri("coaps"), "--state-dir", str(state)]
        got = ok(run(*common, "telemetry", "get-setup", "--tsid", str(tsid)))
        assert got["response"]["body"][SETUP]["telemetry"] == [{
            "tsid": tsid, "current-config": {"low-percentile": "5.00",
                                             "mid-percentile": "65.00",
                                             "high-percentile": "95.00"}}]
        (entry,) = pre_mitigation(ok(run(*common, "telemetry", "get")))
        assert entry["tmid"] == tmid
        assert ok(run(*common, "telemetry", "delete"))["response"]["code"] == "2.02"
        missing = run(*common, "telemetry", "get", "--tmid", str(tmid))
        assert missing.returncode == 3 and "4.04" in missing.stderr
        assert ok(run(*common, "telemetry", "delete-setup"))["response"]["code"] == "2.02"
        limits = ok(run(*common, "telemetry", "get-setup"))
        assert all("tsid" not in e for e in limits["response"]["body"][SETUP]["telemetry"])


def test_mitigation_telemetry_reaches_the_mitigator(pki: Path, state: Path,
                                                    tmp_path: Path) -> None:
    """RFC 9244 §8, §9.1: what a mitigation request and its efficacy update carry goes to
    the mitigator backend (the default ``log`` journal) with the command."""
    telemetry = {"ietf-dots-telemetry:total-attack-traffic": [{"unit": "megabit-ps",
                                                               "peak-g": "700"}],
                 "ietf-dots-telemetry:attack-detail": [{
                     "vendor-id": 32473, "attack-id": 77, "attack-severity": "high",
                     "top-talker": {"talker": [{"source-prefix": "203.0.113.7/32",
                                                "spoofed-status": False}]}}]}
    server_dir = tmp_path / "server"
    with running_server(server_dir, pki) as server:
        common = ["--server", server.uri("coaps"), "--state-dir", str(state)]
        body = tmp_path / "mitigation.json"
        body.write_text(json.dumps(telemetry))
        made = ok(run(*common, "mitigate", "--target-prefix", "198.51.100.0/24",
                      "--telemetry", str(body)))
        mid = made["mid"]
        update = ok(run(*common, "efficacy", "--mid", str(mid), "--attack-status",
                        "under-attack", "--telemetry", str(body)))
        assert update["response"]["code"] == "2.04"
    journal = [json.loads(line) for line in
               (server_dir / "state" / "mitigations.jsonl").read_text().splitlines()]
    actions = [(e["action"], e["mid"]) for e in journal]
    assert actions == [("apply", mid), ("telemetry", mid)]
    for entry in journal:
        telemetry = entry["telemetry"]
        assert telemetry["ietf-dots-telemetry:total-attack-traffic"] == [
            {"unit": "megabit-ps", "peak-g": "700"}]
        detail = telemetry["ietf-dots-telemetry:attack-detail"][0]
        assert detail["top-talker"]["talker"][0]["source-prefix"] == "203.0.113.7/32"
    assert journal[1]["attack-status"] == "under-attack"


async def test_clients_of_one_domain_conflict_on_a_pipe_over_dtls(pki: Path,
                                                                  tmp_path: Path) -> None:
    """RFC 9244 §7.2 against a real server: two cuids behind one credential (the dev PSK
    client, allowed any cuid like a client-domain gateway) name the same link: the second
    gets 4.09 with conflict-information (cause overlapping-pipes, 4); a client with its own
    credential is another domain and may name it; once the first deletes its setup the
    link is free. Survives a restart (the domain is saved)."""
    from gateway.client.role import DotsClient, new_cuid
    from gateway.dots.codes import CONTENT_FORMAT_DOTS_CBOR, Code
    from gateway.dots.telemetry import body_from_json, body_to_json
    from tests.integration.test_client_role import cert_credentials, psk_credentials

    setup = body_from_json({SETUP: {"telemetry": [{"total-pipe-capacity": [
        {"link-id": "edge-1", "capacity": "10", "unit": "gigabit-ps"}]}]}})
    server_dir = tmp_path / "server"
    first_cuid, second_cuid = new_cuid(), new_cuid()
    with running_server(server_dir, pki) as server:
        async with DotsClient(psk_credentials(pki), server.uri(), state_dir=tmp_path / "a",
                              cuid=first_cuid, negotiate=False) as first:
            assert (await first.telemetry_setup(setup, tsid=1)).code is Code.CREATED
        async with DotsClient(cert_credentials(pki), server.uri(), state_dir=tmp_path / "c",
                              negotiate=False) as other_domain:
            assert (await other_domain.telemetry_setup(setup, tsid=1)).code is Code.CREATED
    with running_server(server_dir, pki) as server:
        async with DotsClient(psk_credentials(pki), server.uri(), state_dir=tmp_path / "b",
                              cuid=second_cuid, negotiate=False) as second:
            refused = await second.telemetry_setup(setup, tsid=7)
            assert refused.code is Code.CONFLICT, refused
            assert refused.response.content_format == CONTENT_FORMAT_DOTS_CBOR
            (entry,) = body_to_json(refused.response.payload)[SETUP]["telemetry"]
            assert entry == {"tsid": 7, "conflict-information": {
                "conflict-status": "request-inactive-other-active",
                "conflict-cause": "overlapping-pipes"}}
            async with DotsClient(psk_credentials(pki), server.uri(),
                                  state_dir=tmp_path / "a", cuid=first_cuid,
                                  negotiate=False) as first:
                assert (await first.telemetry_setup_delete(1)).code is Code.DELETED
            assert (await second.telemetry_setup(setup, tsid=7)).code is Code.CREATED
