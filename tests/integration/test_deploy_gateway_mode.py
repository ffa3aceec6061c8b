"""The gateway-mode examples in deploy/gateway-mode (issue 20 §2) as an operator uses them:
both pass ``check-config``, and an enterprise gateway started from its example relays to a
provider server started from its example (two daemons, two dev PKIs standing in for the
enterprise's and the provider's; only paths, addresses, ports and certificate subjects are
rewritten). Every error the client gets says which hop produced it: ``gateway: ...`` for the
gateway's own, ``upstream provider (<uri>): ...`` for the provider's.

Before: no example existed, and the provider's 4.01 "cuid ... is not the one derived from
your credential" reached the client as is, naming no hop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from gateway.client.role import DotsClient, make_scope
from gateway.dots.codes import Code
from gateway.transport.tls_context import ClientCredentials
from tests.integration.test_client_role import free_port
from tests.support.daemon import ROOT, serving

EXAMPLES = ROOT / "deploy" / "gateway-mode"
DEV_SUBJECT = "CN=dots-dev-client,O=dots-gateway dev PKI"


def rewrite(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert text.count(old) >= 1, f"{old!r} not in the example any more"
        text = text.replace(old, new, 1)
    return text


def laid_out(tmp_path: Path, gw_port: int, up_port: int) -> tuple[Path, Path, Path]:
    """(enterprise config, provider config, the enterprise's dev PKI), files where the
    examples name them."""
    enterprise, provider = tmp_path / "pki-enterprise", tmp_path / "pki-provider"
    init_dev_pki(enterprise)
    init_dev_pki(provider)
    for side in ("gw", "up"):
        (tmp_path / side / "pki").mkdir(parents=True)
    files = {"gw": {"enterprise-ca.pem": enterprise / "ca.pem",
                    "gateway-server.pem": enterprise / "server.pem",
                    "gateway-server.key": enterprise / "server.key",
                    "gateway-upstream.pem": provider / "client.pem",
                    "gateway-upstream.key": provider / "client.key",
                    "provider-ca.pem": provider / "ca.pem"},
             "up": {"provider-ca.pem": provider / "ca.pem",
                    "provider-server.pem": provider / "server.pem",
                    "provider-server.key": provider / "server.key"}}
    for side, names in files.items():
        for name, source in names.items():
            shutil.copy(source, tmp_path / side / "pki" / name)
    gw = tmp_path / "gw" / "enterprise-gateway.toml"
    gw.write_text(rewrite(
        (EXAMPLES / "enterprise-gateway.example.toml").read_text(),
        ('"/var/lib/dots-gateway"', f'"{tmp_path / "gw" / "state"}"'),
        ('addresses = ["192.0.2.10", "2001:db8:10::10"]', 'addresses = ["127.0.0.1"]'),
        ("port = 4646", f"port = {gw_port}"),
        ("CN=ids-1.example.com,O=Example Enterprise", DEV_SUBJECT),
        ('address = "203.0.113.46"', 'address = "127.0.0.1"'),
        ('"dots.provider.example"', '"localhost"'),
        ("port = 4646", f"port = {up_port}")))
    up = tmp_path / "up" / "provider-server.toml"
    up.write_text(rewrite(
        (EXAMPLES / "provider-server.example.toml").read_text(),
        ('"/var/lib/dots-gateway"', f'"{tmp_path / "up" / "state"}"'),
        ('addresses = ["203.0.113.46"]', 'addresses = ["127.0.0.1"]'),
        ("port = 4646", f"port = {up_port}"),
        ("CN=enterprise-gw-1.example.com,O=Example Enterprise", DEV_SUBJECT)))
    return gw, up, enterprise


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["enterprise-gateway.example.toml",
                                  "provider-server.example.toml"])
def test_the_shipped_examples_only_lack_their_certificate_files(name: str) -> None:
    result = check_config(EXAMPLES / name)
    problems = result.stderr.splitlines()
    assert result.returncode == 1 and problems
    assert all("cannot read: No such file" in p and "/pki/" in p for p in problems), problems


async def test_enterprise_gateway_relays_to_the_provider_and_errors_name_their_hop(
        tmp_path: Path) -> None:
    gw_port, up_port = free_port(), free_port()
    gw_config, up_config, enterprise = laid_out(tmp_path, gw_port, up_port)
    for config in (gw_config, up_config):
        result = check_config(config)
        assert result.returncode == 0, result.stderr
    credentials = ClientCredentials(enterprise / "client.pem", enterprise / "client.key",
                                    enterprise / "ca.pem")
    with serving("run", up_config, tmp_path / "provider.log") as provider, \
            serving("run", gw_config, tmp_path / "gateway.log"):
        async with DotsClient(credentials, f"coaps://127.0.0.1:{gw_port}",
                              state_dir=tmp_path / "client", request_timeout=15) as client:
            created = await client.mitigate(make_scope(target_prefix=["192.0.2.0/28"],
                                                       lifetime=600))
            assert created.code is Code.CREATED, created.diagnostic
            # Outside the prefixes the enterprise gave this client: the gateway refuses.
            own = await client.mitigate(make_scope(target_prefix=["198.51.100.0/28"],
                                                   lifetime=600))
            assert own.code is Code.UNAUTHORIZED
            assert own.diagnostic.startswith("gateway: "), own.diagnostic

            # The provider without allow_any_cuid (the 4.01): SIGHUP re-reads
            # [[clients]]; the refusal comes back naming the hop.
            up_config.write_text(up_config.read_text().replace("allow_any_cuid = true",
                                                               "allow_any_cuid = false"))
            os.kill(provider.pid, signal.SIGHUP)
            deadline = time.monotonic() + 30
            while True:
                refused = await client.mitigate(make_scope(target_prefix=["192.0.2.16/28"],
                                                           lifetime=600))
                if refused.code is not Code.CREATED or time.monotonic() > deadline:
                    break
                await client.withdraw(refused.mid)  # the reload was not applied yet
            assert refused.code is Code.UNAUTHORIZED, refused
            hop = f"upstream provider (coaps://127.0.0.1:{up_port}): "
            assert refused.diagnostic.startswith(hop + "cuid "), refused.diagnostic
            assert "allow_any_cuid = true" in refused.diagnostic
