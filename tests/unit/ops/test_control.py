"""The control protocol: one JSON request line -> one JSON response object, providers,
errors for bad input, and the text rendering of ``status`` (no sockets here; those are in
tests/integration/test_operations_sockets.py)."""

from __future__ import annotations

import asyncio
import enum
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ops.control import (
    ControlProviders,
    ControlServer,
    ControlUnavailable,
    _encode,
    format_status,
    request,
)


class Colour(enum.Enum):
    RED = "red"


def make_server(**sections: Any) -> ControlServer:
    providers = ControlProviders()
    providers.status_sections.update(sections)
    return ControlServer(Path("/nonexistent/control.sock"), providers, action_timeout=0.5)


async def ask(server: ControlServer, line: bytes) -> dict[str, Any]:
    response = await server._handle(line)
    # What goes on the wire is one JSON line that decodes to the same object.
    wire = _encode(response)
    assert wire.endswith(b"\n") and wire.count(b"\n") == 1
    decoded: dict[str, Any] = json.loads(wire)
    return decoded


async def test_status_collects_every_section_in_order() -> None:
    server = make_server(daemon=lambda: {"pid": 1}, sessions=lambda: {"count": 0, "list": []})
    response = await ask(server, b'{"command": "status"}\n')
    assert response == {"ok": True, "command": "status",
                        "result": {"daemon": {"pid": 1}, "sessions": {"count": 0, "list": []}}}
    assert list(response["result"]) == ["daemon", "sessions"]


async def test_status_of_chosen_sections_and_unknown_ones() -> None:
    server = make_server(a=lambda: 1, b=lambda: 2)
    assert (await ask(server, b'{"command": "status", "sections": ["b"]}'))["result"] == {"b": 2}
    unknown = await ask(server, b'{"command": "status", "sections": ["c"]}')
    assert unknown["ok"] is False and "unknown status sections ['c']" in unknown["error"]
    bad = await ask(server, b'{"command": "status", "sections": "a"}')
    assert bad["ok"] is False and "list of section names" in bad["error"]


async def test_a_failing_section_does_not_hide_the_others() -> None:
    def broken() -> object:
        raise RuntimeError("no database")

    server = make_server(good=lambda: "fine", broken=broken)
    response = await ask(server, b'{"command": "status"}')
    assert response["ok"] is True
    assert response["result"] == {"good": "fine",
                                  "broken": {"error": "RuntimeError: no database"}}


async def test_actions_sync_async_failing_and_slow() -> None:
    server = make_server()
    calls: list[str] = []

    async def later() -> dict[str, bool]:
        await asyncio.sleep(0)
        return {"done": True}

    def failing() -> None:
        raise ValueError("bad key file")

    async def slow() -> None:
        await asyncio.sleep(5)

    server.providers.actions.update(reload=lambda: calls.append("reload") or {"reloaded": 1},
                                    later=later, failing=failing, slow=slow)
    assert await ask(server, b'{"command": "reload", "id": 7}') == {
        "ok": True, "command": "reload", "result": {"reloaded": 1}, "id": 7}
    assert calls == ["reload"]
    assert (await ask(server, b'{"command": "later"}'))["result"] == {"done": True}
    assert await ask(server, b'{"command": "failing"}') == {
        "ok": False, "error": "ValueError: bad key file"}
    assert await ask(server, b'{"command": "slow"}') == {
        "ok": False, "error": "no result within 0.5 s"}


async def test_help_lists_builtin_and_registered_commands() -> None:
    server = make_server()
    server.providers.actions["drain"] = lambda: None
    assert (await ask(server, b'{"command": "help"}'))["result"] == {
        "commands": ["drain", "help", "status"]}


@pytest.mark.parametrize(("line", "error"), [
    (b"status", "not a JSON request"),
    (b"\xff\xfe{", "not a JSON request"),
    (b"[1, 2]", "a request is a JSON object"),
    (b'"status"', "a request is a JSON object"),
    (b"{}", 'missing "command"'),
    (b'{"command": 3}', 'missing "command"'),
    (b'{"command": ""}', 'missing "command"'),
    (b'{"command": "explode"}', "unknown command 'explode'; known: help, status"),
    (b'{"command": "status"', "not a JSON request"),
    (b"NaN", "a request is a JSON object"),
])
async def test_bad_requests_get_an_error_line(line: bytes, error: str) -> None:
    server = make_server()
    response = await ask(server, line)
    assert response["ok"] is False
    assert error in response["error"]
    assert server.bad_requests == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_response_object(data: bytes) -> None:
    server = make_server(x=lambda: 1)
    response = asyncio.run(server._handle(data))
    assert isinstance(response, dict) and isinstance(response["ok"], bool)
    json.loads(_encode(response))


def test_results_that_json_cannot_hold_are_rendered() -> None:
    wire = _encode({"ok": True, "result": {"colour": Colour.RED, "set": frozenset({1}),
                                           "tuple": (1, 2), "path": Path("/x")}})
    assert json.loads(wire)["result"] == {"colour": "red", "set": [1], "tuple": [1, 2],
                                          "path": "/x"}


def test_client_without_a_daemon(tmp_path: Path) -> None:
    with pytest.raises(ControlUnavailable, match="no control socket at"):
        request(tmp_path / "control.sock", "status", timeout=1)


def test_format_status_tables() -> None:
    text = format_status({
        "daemon": {"pid": 42, "version": "0.1.0", "mode": "terminal", "uptime": 3725.0,
                   "addresses": ["coaps://127.0.0.1:4646"]},
        "sessions": {"count": 1, "list": [
            {"side": "downstream", "transport": "dtls", "peer": "127.0.0.1:5000",
             "local": "127.0.0.1:4646", "client": "dev-client", "cuid": "abc",
             "anycast": False}]},
        "mitigations": {"count": 0, "active": 0, "list": []},
        "upstreams": [],
        "anycast": {"state": "announced", "checks": [{"name": "listening", "ok": True}]},
    })
    lines = text.splitlines()
    assert lines[0] == "dots-gateway 0.1.0, pid 42, terminal mode, up 1h02m"
    assert lines[1] == "serving coaps://127.0.0.1:4646"
    assert "SESSIONS (1)" in lines
    header = next(line for line in lines if line.strip().startswith("SIDE"))
    assert header.split() == ["SIDE", "TRANSPORT", "PEER", "LOCAL", "CLIENT", "CUID", "ANYCAST"]
    row = lines[lines.index(header) + 1].split()
    assert row == ["downstream", "dtls", "127.0.0.1:5000", "127.0.0.1:4646", "dev-client",
                   "abc", "no"]
    assert "MITIGATIONS (0)  active: 0" in lines
    assert "UPSTREAMS (0)" in lines
    assert "ANYCAST" in lines and "  state: announced" in lines
    assert "  checks: name=listening ok=yes" in lines


def test_format_status_shows_lifetimes_and_liveness_as_durations() -> None:
    text = format_status({
        "sessions": {"count": 1, "list": [{"peer": "127.0.0.1:5000", "idle": 12,
                                           "lost_in": 438}]},
        "mitigations": {"count": 3, "active": 3, "list": [
            {"mid": 1, "lifetime": 599}, {"mid": 2, "lifetime": -1},
            {"mid": 3, "lifetime": None}]},
    })
    lines = [line.split() for line in text.splitlines()]
    assert ["127.0.0.1:5000", "12s", "7m18s"] in lines
    assert ["1", "9m59s"] in lines and ["2", "indefinite"] in lines and ["3", "-"] in lines
