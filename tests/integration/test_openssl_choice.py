"""``DOTS_GATEWAY_OPENSSL``: the daemon on another OpenSSL 3.x build than the system's.

The newer build is the OpenSSL 3.5 LTS that ``make test`` puts in the venv
(``deploy/openssl/fetch_openssl.py``). On it, the daemon serves libcoap's client (which
stays on Debian's OpenSSL 3.0) and our own; our DTLS record layer takes sessions over only
because its framing was measured on 3.5 (dtls_records.FRAMING), and the record layer's
differential tests against OpenSSL pass on that build too. A wrong directory is one line
naming the variable, for every command.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from tests.integration.test_daemon import free_port, heartbeat
from tests.support.daemon import open_session, serving

ROOT = Path(__file__).resolve().parents[2]
NEWER = Path(sys.prefix) / "openssl"
VARIABLE = "DOTS_GATEWAY_OPENSSL"

pytestmark = pytest.mark.skipif(
    not (NEWER / "SOURCE").exists(), reason=f"no OpenSSL build in {NEWER} (make openssl)")


def newer_version() -> str:
    return (NEWER / "SOURCE").read_text().split()[1]  # "OpenSSL 3.5.9 from ..."


def gateway_command(*args: str, directory: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          env={**os.environ, VARIABLE: str(directory)},
                          capture_output=True, text=True, timeout=60, check=False)


def test_version_names_the_loaded_openssl() -> None:
    run = gateway_command("version", directory=NEWER)
    assert run.returncode == 0, run.stderr
    assert f"(OpenSSL {newer_version()} " in run.stdout


def _libcrypto_of_another_build(directory: Path) -> Path:
    # The system's libssl beside the newer build's libcrypto: that libssl still loads the
    # system's libcrypto by its soname, which must be refused.
    shutil.copy(next(NEWER.glob("libcrypto*.so.3")), directory)
    system_libssl = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
    if not system_libssl.exists():
        pytest.skip("no system libssl.so.3 at the Debian path")
    shutil.copy(system_libssl.resolve(), directory / "libssl.so.3")
    return directory


@pytest.mark.parametrize(("case", "reason"), [
    ("missing", "cannot read the directory"),
    ("empty", "expected exactly one libcrypto*.so.3 there, found none"),
    ("mixed", "its libssl uses another libcrypto than"),
])
def test_a_wrong_directory_is_one_line_naming_the_variable(
        tmp_path: Path, case: str, reason: str) -> None:
    directory = {"missing": lambda: tmp_path / "nowhere", "empty": lambda: tmp_path,
                 "mixed": lambda: _libcrypto_of_another_build(tmp_path)}[case]()
    for command in (["version"], ["server", "--config", str(tmp_path / "none.toml")]):
        run = gateway_command(*command, directory=directory)
        assert run.returncode == 1
        assert run.stderr.startswith(f"{VARIABLE}={directory}: {reason}"), run.stderr
        assert "Traceback" not in run.stderr and run.stderr.count("\n") == 1


def test_the_daemon_serves_on_the_newer_openssl(tmp_path: Path) -> None:
    free_udp_port, metrics_port = free_port(), free_port()
    pki = tmp_path / "pki"
    init_dev_pki(pki)
    config = tmp_path / "server.toml"
    config.write_text(
        f'[general]\nstate_dir = "{tmp_path}"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {free_udp_port}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    log = tmp_path / "daemon.log"
    with serving("server", config, log, env={VARIABLE: str(NEWER)}):
        assert f"OpenSSL {newer_version()}" in log.read_text()

        # libcoap's client on Debian's OpenSSL 3.0 against our server on the newer build.
        (tmp_path / "hb.cbor").write_bytes(b"\xa1\x18\x31\xa1\x18\x33\xf5")
        coap = subprocess.run(
            ["coap-client-openssl", "-v", "6", "-B", "5", "-m", "put", "-t", "271",
             "-f", str(tmp_path / "hb.cbor"), "-c", str(pki / "client.pem"),
             "-j", str(pki / "client.key"), "-C", str(pki / "ca.pem"),
             f"coaps://127.0.0.1:{free_udp_port}/.well-known/dots/hb"],
            capture_output=True, text=True, timeout=30, check=False)
        assert "c:2.04" in coap.stdout + coap.stderr, coap.stdout + coap.stderr

        async def session_on_our_record_layer() -> dict[str, float]:
            conn, replies = await open_session(free_udp_port, pki)
            try:
                assert await heartbeat(conn, replies, 1) == 0x44  # 2.04
                return await asyncio.to_thread(scrape, metrics_port)
            finally:
                conn.close()

        samples = asyncio.run(session_on_our_record_layer())
    assert samples['dots_gateway_dtls_sessions_by_record_layer{layer="gateway"}'] == 1
    build = [k for k in samples if k.startswith("dots_gateway_build_info{")]
    assert build and f'openssl="{newer_version()}"' in build[0]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        body = answer.read().decode()
    return {key: float(value) for key, _, value in
            (line.rpartition(" ") for line in body.splitlines()
             if line and not line.startswith("#"))}


def test_the_record_layer_differential_tests_pass_on_the_newer_openssl() -> None:
    # The record layer must accept exactly what the OpenSSL it runs beside would: its
    # tests compare the two, so they run again with the newer build loaded.
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:cov",
         "tests/unit/transport/test_dtls_records.py",
         "tests/unit/transport/test_secure_session.py"],
        cwd=ROOT, env={**os.environ, VARIABLE: str(NEWER)},
        capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:]


def test_importing_the_benches_leaves_the_choice_alone() -> None:
    # The transport bench runs its load generator on the newer build; imported by the soak
    # script (and so by its test), it once set the variable for the rest of the test run,
    # and every daemon started after that ran on the newer OpenSSL.
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    probe = subprocess.run(
        [sys.executable, "-c", "import os, tests.bench.soak, tests.bench.bench_transport; "
         f"print(os.environ.get({VARIABLE!r}))"],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60, check=False)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "None"
