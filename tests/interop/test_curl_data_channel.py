"""curl (a peer we did not write) against the data channel of a real ``dots-gateway server``
process: client-certificate TLS with the dev PKI, the RFC 8783 example bodies sent as the
RFC shows them and the answers checked against the RFC's JSON, and a SIGKILL between two
acknowledged writes (everything acknowledged is still there after the restart)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from certs.identity import cuid_from_certificate
from tests.interop.peers import free_port, have
from tests.support import rfc8783 as rfc
from tests.support.daemon import serving

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(not have("curl"), reason="curl is not installed")]

ROOT = "/restconf/data/ietf-dots-data-channel:dots-data"
MEDIA = "application/yang-data+json"


class Curl:
    def __init__(self, port: int, pki: Path, workdir: Path) -> None:
        self.base = f"https://127.0.0.1:{port}"
        self.pki = pki
        self.workdir = workdir

    def __call__(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        out = self.workdir / "answer.json"
        argv = ["curl", "-sS", "--max-time", "20", "-X", method,
                "--cert", str(self.pki / "client.pem"), "--key", str(self.pki / "client.key"),
                "--cacert", str(self.pki / "ca.pem"), "-H", f"Accept: {MEDIA}",
                "-o", str(out), "-w", "%{http_code}"]
        if body is not None:
            sent = self.workdir / "request.json"
            sent.write_text(json.dumps(body, indent=2))
            argv += ["-H", f"Content-Type: {MEDIA}", "--data-binary", f"@{sent}"]
        out.unlink(missing_ok=True)
        done = subprocess.run([*argv, self.base + path], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        text = out.read_text() if out.exists() else ""
        return int(done.stdout), json.loads(text) if text.strip() else None


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{tmp_path / "state"}"\n[logging]\nlevel = "info"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_port()}\ntransports = ["udp"]\n'
        f'[data_channel]\nport = {port}\n')
    return config, port


def test_curl_session_against_rfc8783_examples(setup: tuple[Path, int], tmp_path: Path) -> None:
    config, port = setup
    log = tmp_path / "daemon.log"
    pki = tmp_path / "state" / "pki"
    with serving("server", config, log) as proc:
        curl = Curl(port, pki, tmp_path)
        cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
        client = f"{ROOT}/dots-client={cuid}"
        register = {"ietf-dots-data-channel:dots-client": [{"cuid": cuid}]}
        assert curl("POST", ROOT, register) == (201, None)
        assert curl("POST", ROOT, register)[0] == 409
        assert curl("POST", client, rfc.ALIAS) == (201, None)
        assert curl("POST", client, rfc.ACL_IPV6_UDP) == (201, None)

        status, body = curl("GET", f"{client}/aliases/alias=https1")
        assert status == 200
        (alias,) = body["ietf-dots-data-channel:aliases"]["alias"]
        assert 10079 <= alias.pop("pending-lifetime") <= 10080
        assert body == rfc.ALIAS

        status, body = curl("GET", f"{client}/acls?content=config")
        assert (status, body) == (200, rfc.ACL_IPV6_UDP)
        status, body = curl("GET", f"{ROOT}/capabilities")
        assert status == 200
        assert set(rfc.CAPABILITY_MEMBERS) <= set(body["ietf-dots-data-channel:capabilities"])

        status, body = curl("POST", client, {"ietf-dots-data-channel:aliases": {"alias": [
            {"name": "bad", "target-prefix": ["not-a-prefix"]}]}})
        assert status == 400
        error = body["ietf-restconf:errors"]["error"][0]
        assert error["error-tag"] == "invalid-value"
        assert error["error-path"].endswith("/alias=bad/target-prefix[1]")

        # SIGKILL right after an acknowledged write: nothing acknowledged may be lost.
        assert curl("POST", client, rfc.ACL_DNS_FRAGMENTS) == (201, None)
        assert curl("DELETE", f"{client}/aliases/alias=https1") == (204, None)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with serving("server", config, log):
        status, body = curl("GET", f"{client}?content=config")
        assert status == 200
        (entry,) = body["ietf-dots-data-channel:dots-client"]
        assert "aliases" not in entry  # the delete was acknowledged, so it stays deleted
        names = [acl["name"] for acl in entry["acls"]["acl"]]
        assert names == ["test-acl-ipv6-udp", "dns-fragments"]
        assert curl("DELETE", f"{client}/acls/acl=dns-fragments") == (204, None)
        assert curl("DELETE", client) == (204, None)
        assert curl("GET", client)[0] == 404
    assert "Traceback" not in log.read_text()
