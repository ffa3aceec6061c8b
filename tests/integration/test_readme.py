"""The README's commands, run exactly as written (issue 20, item 1).

Every ```sh block of README.md is run, in order, with ``bash -e -o pipefail`` in a fresh
working directory, against ``dots-gateway run`` started there with the embedded defaults
(what ``make run`` starts): port 4646, state in ``./state``. The installed console scripts
(``dots-gateway``, ``dots-client``) are first on the PATH, with this checkout first on
PYTHONPATH. ```text blocks are synopses and are not run. Skipped, with the reason, only when
port 4646 (or the data channel's 8443) is taken on the loopback addresses.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PORT = 4646
DATA_PORT = 8443  # the data channel's HTTPS (TCP only)
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(kind: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == kind]


def test_every_fenced_block_is_marked() -> None:
    """Runnable or synopsis, never left for a reader to guess."""
    langs = {lang for lang, _ in BLOCK.findall(README.read_text())}
    assert "" not in langs and langs <= {"sh", "text", "toml", "json", "python"}, langs
    assert len(blocks("sh")) >= 2


def test_readme_links_stay_in_the_repository() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert "://" not in target and not target.startswith("/"), target
        assert (ROOT / target.split("#")[0]).resolve().is_relative_to(ROOT), target
        assert (ROOT / target.split("#")[0]).exists(), target
    for path in re.findall(r"`((?:deploy|tests|gateway|certs|anycast|redirect)/[^` ]+)`", text):
        assert (ROOT / path.rstrip("/")).exists() or "*" in path, path


def _port_taken() -> str | None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for kind, port in ((socket.SOCK_DGRAM, PORT), (socket.SOCK_STREAM, PORT),
                           (socket.SOCK_STREAM, DATA_PORT)):
            with socket.socket(family, kind) as sock:
                try:
                    sock.bind((host, port))
                except OSError as exc:
                    return f"port {port} is taken on {host} ({exc.strerror})"
    return None


@contextlib.contextmanager
def make_run(cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[str]]:
    """``dots-gateway run`` with no options in ``cwd``, stopped (SIGTERM, then kill)."""
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run"], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                text=True)
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("dots-gateway serving"), (line, log.read_text()[-3000:])
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


def test_readme_sh_blocks_run_as_written(tmp_path: Path) -> None:
    taken = _port_taken()
    if taken:
        pytest.skip(f"{taken}: the README's commands use the default port")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with make_run(tmp_path, env, tmp_path / "daemon.log"):
        assert (tmp_path / "state" / "pki" / "client.pem").is_file()  # ./state, the default
        for number, block in enumerate(blocks("sh"), 1):
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=tmp_path,
                                  env=env, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=90)
            assert done.returncode == 0, (
                f"README sh block {number} failed ({done.returncode}):\n{block}\n"
                f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-2000:]}")
            assert "Traceback" not in done.stderr
