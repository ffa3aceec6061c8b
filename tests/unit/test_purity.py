"""The pure layers (the DOTS core, the CoAP codec and message layers, redirect logic)
must not import I/O or clock modules (design.md, style.md)."""

from __future__ import annotations

import ast
import pathlib

import pytest

FORBIDDEN = {"asyncio", "socket", "time", "selectors", "sqlite3", "aiocoap", "OpenSSL",
             "pyroute2", "ssl", "subprocess", "threading", "os", "datetime"}
ROOT = pathlib.Path(__file__).resolve().parents[2]
CORE = ROOT / "gateway" / "dots"
PURE = [*sorted(CORE.glob("*.py")), *sorted((ROOT / "gateway" / "coap").glob("*.py")),
        *sorted((ROOT / "redirect").glob("*.py"))]


@pytest.mark.parametrize("module", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_module_imports_no_io(module: pathlib.Path) -> None:
    tree = ast.parse(module.read_text(), str(module))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{module.name} imports {sorted(imported & FORBIDDEN)}"


def test_core_is_not_empty() -> None:
    assert len(list(CORE.glob("*.py"))) >= 10
