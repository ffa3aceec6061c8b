"""Put a newer OpenSSL 3.x (libssl, libcrypto) in a directory, for ``DOTS_GATEWAY_OPENSSL``.

    python deploy/openssl/fetch_openssl.py DIRECTORY

Debian 12 ships OpenSSL 3.0, which spends ~40% more instructions on a full DTLS handshake
than 3.5 (tests/bench/RESULTS.md). No Debian 12 package has a newer one, and building
OpenSSL takes its source, which this project's registries do not serve. PyPI does serve
OpenSSL 3.5 LTS as shared libraries: the manylinux wheel of psycopg-binary bundles them
(``psycopg_binary.libs/libssl-*.so.3``, ``libcrypto-*.so.3``, built for glibc 2.17+ with
their own sonames, so they load beside the system's copy). This takes those two files out of
a pinned wheel, whose hash pip checks, and refuses them unless our binding loads them and
reports the expected version. An operator who builds OpenSSL 3.x themselves points the
variable at that build's ``lib`` directory instead.

Re-running is cheap: a directory that already holds the expected version is left alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEEL_PROJECT = "psycopg-binary"
WHEEL_VERSION = "3.3.9"
#: What the pinned wheel carries; checked after loading, so a different build is refused.
EXPECTED_OPENSSL = "3.5.9"
LIBRARIES = ("libssl-", "libcrypto-")


def loaded_version(directory: Path) -> str | None:
    """The version our binding reports with ``directory`` chosen, or None if it refuses."""
    probe = subprocess.run(
        [sys.executable, "-c", "from gateway.transport.openssl_ffi import "
         "openssl_version_number as v; print(v())"],
        env={**os.environ, "DOTS_GATEWAY_OPENSSL": str(directory), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False)
    return probe.stdout.strip() if probe.returncode == 0 else None


def fetch(directory: Path) -> str:
    """Download the pinned wheel and copy its two OpenSSL libraries into ``directory``."""
    with tempfile.TemporaryDirectory(prefix="dots-openssl-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
             "--no-deps", "--only-binary=:all:", "--dest", tmp,
             f"{WHEEL_PROJECT}=={WHEEL_VERSION}"],
            check=True, timeout=600)
        (wheel,) = Path(tmp).glob("*.whl")
        staged = Path(tmp) / "libs"
        staged.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist()
                       if m.startswith("psycopg_binary.libs/")
                       and Path(m).name.startswith(LIBRARIES) and m.endswith(".so.3")]
            if len(members) != len(LIBRARIES):
                raise SystemExit(f"{wheel.name}: expected libssl and libcrypto, found {members}")
            for member in members:
                (staged / Path(member).name).write_bytes(archive.read(member))
        version = loaded_version(staged)
        if version != EXPECTED_OPENSSL:
            raise SystemExit(f"{wheel.name}: its OpenSSL reports {version}, expected "
                             f"{EXPECTED_OPENSSL}")
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("lib*.so.3"):
            old.unlink()
        for library in staged.iterdir():
            shutil.copy2(library, directory / library.name)
        (directory / "SOURCE").write_text(
            f"OpenSSL {version} from {wheel.name} (PyPI), psycopg_binary.libs/\n")
    return version


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    directory = parser.parse_args().directory.resolve()
    if directory.is_dir() and loaded_version(directory) == EXPECTED_OPENSSL:
        print(f"{directory}: OpenSSL {EXPECTED_OPENSSL} already there")
        return 0
    version = fetch(directory)
    print(f"{directory}: OpenSSL {version}; use it with DOTS_GATEWAY_OPENSSL={directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
