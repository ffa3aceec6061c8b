"""The README's testing-kit recipes, run as written: each ```python block that starts with
``# testing-kit recipe:`` is saved as a test module in an empty directory and run there by
pytest in a subprocess, as a user's project would run it (no ini file: pytest-asyncio in
its default strict mode; the plugin found through its pytest11 entry point, as
pyproject.toml declares it, from a distribution's metadata on the path)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```python\n(# testing-kit recipe: ([^\n]+)\n.*?)^```$",
                   re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.interop


def recipes() -> list[tuple[str, str]]:
    return [(title.strip(), body) for body, title in BLOCK.findall(README.read_text())]


def entry_points_of_pyproject() -> dict[str, str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return dict(project["entry-points"]["pytest11"])


def installed_metadata(site: Path) -> Path:
    """A distribution's metadata declaring pyproject's pytest11 entry points, in ``site``:
    what ``pip install`` writes, without touching the shared venv (where the package may
    be installed from an older pyproject). If the venv has the entry point already, pytest
    loads one plugin of that name and skips the other."""
    info = site / "dots_gateway_entry_points-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dots-gateway-entry-points\n"
                                   "Version: 0\n")
    lines = [f"{name} = {target}" for name, target in entry_points_of_pyproject().items()]
    (info / "entry_points.txt").write_text("[pytest11]\n" + "\n".join(lines) + "\n")
    return site


def test_the_readme_has_both_recipes() -> None:
    titles = [title for title, _ in recipes()]
    assert any("coaps (DTLS)" in t for t in titles), titles
    assert any("coaps+tcp" in t for t in titles), titles


@pytest.mark.parametrize("title,body", recipes(), ids=[t for t, _ in recipes()])
def test_recipe_runs_as_written(title: str, body: str, tmp_path: Path) -> None:
    if "tinydtls" in body:
        import aiocoap.defaults

        if missing := aiocoap.defaults.dtls_missing_modules():
            pytest.skip(f"aiocoap's tinydtls transport is unavailable (missing {missing})")
    (tmp_path / "test_recipe.py").write_text(body)
    scratch = tmp_path / "tmp"  # where the kit's temporary directory goes, and must leave
    scratch.mkdir()
    site = installed_metadata(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "TMPDIR": str(scratch)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_recipe.py"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120)
    report = f"recipe {title!r}:\n{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, report
    assert re.search(r"\b1 passed\b", done.stdout), report
    assert list(scratch.iterdir()) == [], "the kit left its directory behind"


def test_pyproject_registers_the_plugin_for_pytest() -> None:
    """The entry point users get with the package names the plugin module (pytest11)."""
    import importlib

    plugin = importlib.import_module(entry_points_of_pyproject()["dots_gateway"])
    assert callable(plugin.dots_server) and callable(plugin.pytest_configure)
