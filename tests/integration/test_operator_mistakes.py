"""Operator mistakes get one line per problem, never a traceback (issue 20, item 5).

Broken configuration and credential files are fed to every command: ``check-config`` and
``run`` must report the same lines (``run`` before anything starts), the other commands a
short message and a failing exit code. ``check-config`` and the offline commands run
in-process (an escaping exception fails the test); ``run`` and ``server`` as subprocesses,
bounded, since a regression would start serving.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from certs.devpki import init_dev_pki
from gateway import cli
from gateway.client import cli as client_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "dots-gateway.example.toml"
TLS = '[tls]\nca = "a/ca.pem"\ncert = "a/server.pem"\nkey = "a/server.key"\n'

# name -> (config text, the keys the problem lines must name)
BROKEN = {
    "missing files": ('[tls]\nca = "no/ca.pem"\ncert = "no/s.pem"\nkey = "no/s.key"\n',
                      ["tls.ca", "tls.cert", "tls.key"]),
    "not PEM": ('[tls]\nca = "junk"\ncert = "junk"\nkey = "junk"\n',
                ["tls.ca", "tls.cert", "tls.key"]),
    "key of another certificate": (TLS.replace("a/server.key", "a/client.key"), ["tls.key"]),
    "chain that does not verify": (TLS.replace("a/server.pem", "badchain.pem"), ["tls.cert"]),
    "expired certificate": (TLS.replace('"a/', '"old/'), ["tls.cert"]),
    "CRL not a CRL": (TLS + 'crl = "junk"\n', ["tls.crl"]),
    "fleet secrets not hex": (TLS + 'cookie_secret_file = "junk"\nticket_key_file = "no/t"\n',
                              ["tls.cookie_secret_file", "tls.ticket_key_file"]),
    "gateway credential": ('[general]\nmode = "gateway"\n[gateway]\ncert = "no/gw.pem"\n'
                           'key = "a/client.key"\n', ["gateway.cert"]),
    "state dir is a file": ('[general]\nstate_dir = "junk"\n', ["general.state_dir"]),
    "broken dev PKI": ('[general]\nstate_dir = "broken"\n', ["tls"]),
    "mitigation command": ('[mitigation]\nbackend = "command"\ncommand = "/no/such/mitigator"\n',
                           ["mitigation.command"]),
    "not TOML": ("[[[\n", []),
    "not UTF-8": ("\udcff", []),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with good, bad and expired credentials and one config per mistake."""
    d = tmp_path_factory.mktemp("mistakes")
    init_dev_pki(d / "a")
    init_dev_pki(d / "b")
    init_dev_pki(d / "old", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=10), days=2)
    (d / "junk").write_text("junk\n")
    (d / "badchain.pem").write_bytes((d / "a/server.pem").read_bytes()
                                     + (d / "b/ca.pem").read_bytes())
    shutil.copytree(d / "a", d / "broken/pki")
    (d / "broken/pki/ca.pem").write_text("junk\n")
    for index, (text, _keys) in enumerate(BROKEN.values()):
        (d / f"{index}.toml").write_bytes(text.encode("utf-8", "surrogateescape"))
    return d


def _config(files: Path, name: str) -> Path:
    return files / f"{list(BROKEN).index(name)}.toml"


@pytest.mark.parametrize("name", list(BROKEN))
def test_check_config_names_every_broken_file(files: Path, name: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(files, name)
    assert cli.main(["check-config", str(config)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines and all(line.startswith(str(config) + ":") for line in lines), lines
    for key in BROKEN[name][1]:
        assert any(f": {key}: " in line for line in lines), (key, lines)
    assert "OK" not in captured.out


@pytest.mark.parametrize("name", ["missing files", "key of another certificate",
                                  "expired certificate", "broken dev PKI", "not TOML"])
@pytest.mark.parametrize("command", ["run", "server"])
def test_run_refuses_with_the_check_config_lines(files: Path, name: str, command: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(files, name)
    cli.main(["check-config", str(config)])
    expected = capsys.readouterr().err
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", command, "--config",
                           str(config)], cwd=files, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr == expected
    assert "serving" not in done.stdout


def test_the_shipped_example_names_the_files_it_lacks(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """deploy/dots-gateway.example.toml refers to the operator's own certificates, which
    the repository does not ship: check-config says which, one line each."""
    assert cli.main(["check-config", str(EXAMPLE)]) == 1
    lines = capsys.readouterr().err.splitlines()
    deploy = EXAMPLE.parent
    assert lines == [
        f"{EXAMPLE}: tls.ca: {deploy}/tls/ca.pem: cannot read: No such file or directory",
        f"{EXAMPLE}: tls.cert: {deploy}/tls/server.pem: cannot read: No such file or directory",
        f"{EXAMPLE}: tls.key: {deploy}/tls/server.key: cannot read: No such file or directory",
        f"{EXAMPLE}: gateway.ca: /etc/dots-gateway/upstream-ca.pem: cannot read: "
        "No such file or directory",
        f"{EXAMPLE}: gateway.cert: /etc/dots-gateway/upstream-client.pem: cannot read: "
        "No such file or directory",
        f"{EXAMPLE}: gateway.key: /etc/dots-gateway/upstream-client.key: cannot read: "
        "No such file or directory",
    ]


def test_the_example_passes_with_its_files_in_place(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """With certificates where it says (a dev PKI standing in for the operator's), it is
    a valid configuration."""
    init_dev_pki(tmp_path / "tls")
    text = EXAMPLE.read_text()
    for name, ours in (("upstream-client.pem", "client.pem"), ("upstream-client.key",
                       "client.key"), ("upstream-ca.pem", "ca.pem")):
        text = text.replace(f"/etc/dots-gateway/{name}", f"tls/{ours}")
    config = tmp_path / "dots-gateway.toml"
    config.write_text(text)
    assert cli.main(["check-config", str(config)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["show-config", "--config", "{bad}"],
    ["status", "--timeout", "1", "--config", "{bad}"],
    ["reload", "--timeout", "1", "--config", "{bad}"],
    ["drain", "--config", "{bad}"],
    ["status", "--timeout", "1", "--state-dir", "{junk}"],
    ["drain", "--state-dir", "{junk}"],
    ["certs", "init", "{junk}"],
    ["certs", "init", "{junk}/pki"],
    ["certs", "init", "{dir}/broken/pki"],
    ["tls-secrets", "{junk}"],
    ["tls-secrets", "{junk}/secrets"],
])
def test_other_commands_fail_in_one_line(files: Path, argv: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    names = {"bad": str(_config(files, "not TOML")), "junk": str(files / "junk"),
             "dir": str(files)}
    assert cli.main([a.format(**names) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err and len(err.splitlines()) <= 3, err
    assert "overwrite=True" not in err


@pytest.mark.parametrize("argv", [
    ["encode", "{junk}"], ["encode", "{dir}/none.json"], ["decode", "{junk}"],
    ["decode", "--hex", "{junk}"], ["decode", "{dir}"],
    ["--cert", "{junk}", "--key", "{junk}", "--ca", "{junk}", "--timeout", "1", "hb"],
    ["--cert", "{dir}/a/server.pem", "--key", "{dir}/a/client.key", "--ca", "{dir}/a/ca.pem",
     "--timeout", "1", "hb"],
    ["--psk-identity", "x", "--psk", "hex:zz", "--timeout", "1", "hb"],
    ["--state-dir", "{dir}/broken", "--timeout", "1", "hb"],
])
def test_dots_client_local_mistakes_are_usage_errors(files: Path, argv: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    names = {"junk": str(files / "junk"), "dir": str(files)}
    assert client_cli.main([a.format(**names) for a in argv]) == client_cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("dots-client: ") and len(err.splitlines()) == 1, err
