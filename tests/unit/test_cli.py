"""The two command-line entry points and the log format, run in-process."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__, cli
from gateway.client import cli as client_cli
from gateway.ops.logsetup import configure_logging


def test_check_config_lists_every_problem_with_its_key(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "4646"\nprot = 1\n[mitigation]\nbackend = "command"\n')
    assert cli.main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "server.port: expected an integer" in err
    assert "server.prot: unknown key; did you mean 'port'?" in err
    assert "mitigation.command" in err


def test_certs_init_writes_the_named_files(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["certs", "init", str(tmp_path / "pki")]) == 0
    names = sorted(p.name for p in (tmp_path / "pki").iterdir())
    assert names == ["ca.key", "ca.pem", "client.key", "client.pem", "psk.json", "server.key",
                     "server.pem"]
    assert "cuid" in capsys.readouterr().out
    assert cli.main(["certs", "init", str(tmp_path / "pki")]) == 0  # idempotent


def test_show_config_prints_defaults_without_secrets(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    assert cli.main(["show-config", "--state-dir", str(tmp_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["server"]["port"] == 4646
    assert shown["general"]["mode"] == "terminal"


def test_client_encode_decode_round_trip(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"ietf-dots-signal-channel:mitigation-scope": {"scope": [
        {"target-prefix": ["192.0.2.0/24"], "lifetime": 3600}]}}))
    binary = tmp_path / "req.cbor"
    assert client_cli.main(["encode", str(request), "-o", str(binary)]) == 0
    assert client_cli.main(["decode", str(binary)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(request.read_text())


def test_client_encode_decode_errors_are_usage_errors(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Local input, not a server's answer: exit 2 (not 3, the DOTS error code), the file
    and what a server would say about the body."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"ietf-dots-signal-channel:heartbeat": {"peer-hb-status": 1}}')
    assert client_cli.main(["encode", str(bad)]) == client_cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"dots-client: {bad}: ") and "peer-hb-status" in err
    (tmp_path / "bad.cbor").write_bytes(b"\xa1\x00")
    assert client_cli.main(["decode", str(tmp_path / "bad.cbor")]) == client_cli.EXIT_USAGE
    assert client_cli.main(["decode", str(tmp_path / "missing")]) == client_cli.EXIT_USAGE
    assert "missing: No such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize("main, name", [(cli.main, "dots-gateway"),
                                        (client_cli.main, "dots-client")])
def test_version_option(main: Any, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"{name} {__version__}\n"


def test_mitigate_options_have_help_and_protocol_names(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    parser = client_cli.build_parser()
    args = parser.parse_args(["mitigate", "--target-prefix", "192.0.2.0/24", "--protocol",
                              "tcp", "17", "UDP", "--protocol", "icmpv6"])
    assert args.protocol == [6, 17, 17, 58]
    with pytest.raises(SystemExit):
        parser.parse_args(["mitigate", "--protocol", "tcpp"])
    assert "neither a protocol name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["mitigate", "--help"])
    text = capsys.readouterr().out
    for option in ("--target-prefix", "--port", "--protocol", "--fqdn", "--uri", "--lifetime",
                   "--no-trigger", "--mid"):
        helped = text.split(option, 1)[1].split("\n  --", 1)[0]
        assert len(helped.split()) > 3, (option, helped)


def test_certs_init_suggests_the_force_flag(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.pem").write_text("partial\n")
    assert cli.main(["certs", "init", str(tmp_path / "pki")]) == 1
    err = capsys.readouterr().err
    assert "--force" in err and "overwrite=True" not in err


def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    out = subprocess.run([str(bindir / "dots-gateway"), "--help"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert "check-config" in out
    out = subprocess.run([str(bindir / "dots-client"), "--help"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert "encode" in out


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_log_lines_are_one_per_event(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging(fmt, "info", stream)
    try:
        logging.getLogger("gateway.test").info("mitigation created cuid=%s mid=%d", "abc", 7,
                                               extra={"peer": "192.0.2.1"})
        logging.getLogger("gateway.test").debug("hidden")
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            logging.getLogger("gateway.test").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    if fmt == "json":
        first = json.loads(lines[0])
        assert first["msg"] == "mitigation created cuid=abc mid=7" and first["peer"] == "192.0.2.1"
        assert "boom" in json.loads(lines[1])["exc"]
    else:
        assert 'msg="mitigation created cuid=abc mid=7"' in lines[0]
        assert "peer=192.0.2.1" in lines[0] and "level=info" in lines[0]


def test_status_defaults_to_state_and_says_where_it_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No daemon: the same ./state as ``make run`` and ``dots-client``, named on stderr."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["status", "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert "state/control.sock" in err and "/var/lib" not in err
    assert "looked at the control socket state/control.sock (state directory state, from " \
        "the default state/" in err


def test_state_dir_option_wins_over_the_config_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(f'[general]\nstate_dir = "{tmp_path / "from-file"}"\n')
    chosen = tmp_path / "from-cli"
    assert cli.main(["show-config", "--config", str(config), "--state-dir", str(chosen)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["general"]["state_dir"] == str(chosen)
    assert shown["control"]["socket"] == str(chosen / "control.sock")
    for command in (["status", "--timeout", "1"], ["reload", "--timeout", "1"], ["drain"]):
        assert cli.main([*command, "--config", str(config), "--state-dir", str(chosen)]) == 1
        err = capsys.readouterr().err
        assert str(chosen) in err and "from-file" not in err and "--state-dir" in err, command
