"""Log events: the helper, both formats parsed line by line, and the catalogue kept honest
(every ``log_event`` call in the packages names a catalogued event with catalogued fields,
and the README documents every event)."""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import pathlib
import re

import pytest

from gateway.eventlog import EVENTS, log_event
from gateway.ops.logsetup import configure_logging

ROOT = pathlib.Path(__file__).resolve().parents[3]
PACKAGES = ("gateway", "anycast", "redirect", "certs")


_PAIR = re.compile(r'([a-z_][a-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?: |$)')


def parse_logfmt(line: str) -> dict[str, str]:
    """A logfmt line -> its fields: bare values, or quoted ones with JSON escapes (what the
    formatter writes); anything else in the line fails the test."""
    fields = {}
    at = 0
    while at < len(line):
        match = _PAIR.match(line, at)
        assert match is not None, f"not logfmt at {at}: {line!r}"
        key, value = match[1], match[2]
        fields[key] = json.loads(value) if value.startswith('"') else value
        at = match.end()
    return fields


def emit(fmt: str) -> list[str]:
    stream = io.StringIO()
    configure_logging(fmt, "debug", stream)
    log = logging.getLogger("gateway.test.events")
    try:
        log_event(log, logging.INFO, "session.established", "signal session opened",
                  transport="dtls", peer="[2001:db8::1]:5684", local="127.0.0.1:4646",
                  client="ops client", cuid="Xf2Hd_s", resumed=False, cipher=None)
        log_event(log, logging.WARNING, "request.answered", 'refused: "bad"\nsecond line',
                  cuid="c", mid=7, code="4.00", diagnostic="bad = value, \"quoted\"")
        log_event(log, logging.INFO, "signal.lost", "signal lost", session=3,
                  cuids=["a", "b"])
        log_event(log, logging.INFO, "config.reloaded", "x", name="clash", args=1)
        log.info("a plain line without an event")
        try:
            raise ValueError("boom")
        except ValueError:
            log_event(log, logging.ERROR, "request.failed", "internal error", exc_info=True,
                      peer="192.0.2.1:1")
    finally:
        configure_logging("kv", "info")
    return stream.getvalue().splitlines()


def test_json_lines_parse_and_carry_the_fields_with_their_types() -> None:
    lines = emit("json")
    assert len(lines) == 6, lines
    parsed = [json.loads(line) for line in lines]
    first = parsed[0]
    assert list(first)[:5] == ["ts", "level", "logger", "event", "msg"]
    assert first["event"] == "session.established" and first["msg"] == "signal session opened"
    assert first["peer"] == "[2001:db8::1]:5684" and first["cuid"] == "Xf2Hd_s"
    assert first["resumed"] is False and "cipher" not in first  # None: left out
    assert parsed[1]["mid"] == 7 and parsed[1]["code"] == "4.00"
    assert parsed[1]["level"] == "warning"
    assert parsed[2]["cuids"] == ["a", "b"] and parsed[2]["session"] == 3
    assert parsed[3]["name_"] == "clash" and parsed[3]["args_"] == 1  # LogRecord names
    assert "event" not in parsed[4]
    assert parsed[5]["event"] == "request.failed" and "ValueError: boom" in parsed[5]["exc"]


def test_logfmt_lines_parse_one_event_per_line() -> None:
    lines = emit("kv")
    assert len(lines) == 6, lines  # the newline in a message and the traceback stay inside
    parsed = [parse_logfmt(line) for line in lines]
    first = parsed[0]
    assert list(first)[:5] == ["ts", "level", "logger", "event", "msg"]
    assert first["client"] == "ops client" and first["resumed"] == "false"
    assert first["local"] == "127.0.0.1:4646" and "cipher" not in first
    assert parsed[1]["msg"] == 'refused: "bad"\nsecond line'
    assert parsed[1]["diagnostic"] == 'bad = value, "quoted"' and parsed[1]["mid"] == "7"
    assert parsed[2]["cuids"] == "a,b"
    assert "event" not in parsed[4] and parsed[4]["msg"] == "a plain line without an event"
    assert "ValueError: boom" in parsed[5]["exc"]


def test_a_disabled_level_costs_no_record(monkeypatch: pytest.MonkeyPatch) -> None:
    # configure_logging turns the caller lookup off (no formatter of ours prints it); a
    # program that embeds the package with its own logging set-up keeps it.
    monkeypatch.setattr(logging, "_srcfile", os.path.normcase(logging.addLevelName.__code__
                                                              .co_filename))
    log = logging.getLogger("gateway.test.quiet")
    log.setLevel(logging.WARNING)
    try:
        seen: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = seen.append  # type: ignore[method-assign]
        log.addHandler(handler)
        log_event(log, logging.INFO, "session.closed", "closed", peer="x")
        log_event(log, logging.WARNING, "session.closed", "closed", peer="x")
        assert len(seen) == 1 and seen[0].event == "session.closed"  # type: ignore[attr-defined]
        assert seen[0].pathname.endswith("test_eventlog.py")  # the caller, not the helper
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)


def _calls() -> list[tuple[str, int, str, set[str]]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Dict):  # extra={"event": ...} (pure modules)
                    pairs = {k.value: v for k, v in zip(node.keys, node.values, strict=True)
                             if isinstance(k, ast.Constant)}
                    event = pairs.get("event")
                    if isinstance(event, ast.Constant) and isinstance(event.value, str):
                        found.append((str(path.relative_to(ROOT)), node.lineno, event.value,
                                      set(pairs) - {"event"}))
                    continue
                if not isinstance(node, ast.Call):
                    continue
                if isinstance(node.func, ast.Name) and node.func.id == "log_event":
                    position = 2
                elif (isinstance(node.func, ast.Attribute)
                      and node.func.attr == "_rate_limited_event"):
                    position = 1  # the transports' rate-limited warnings
                else:
                    continue
                event = node.args[position]
                if isinstance(event, ast.Name) and path.name == "endpoint.py":
                    continue  # inside _rate_limited_event itself
                assert len(node.args) == position + 2, f"{path}:{node.lineno}: arguments"
                assert isinstance(event, ast.Constant) and isinstance(event.value, str), (
                    f"{path}:{node.lineno}: the event name must be a literal")
                keys = {k.arg for k in node.keywords if k.arg not in (None, "exc_info")}
                found.append((str(path.relative_to(ROOT)), node.lineno, event.value, keys))
    return found


def test_every_call_names_a_catalogued_event_with_catalogued_fields() -> None:
    calls = _calls()
    assert len(calls) > 30, "the scan found too few calls to mean anything"
    wrong = [f"{path}:{line}: {event} {sorted(keys - set(EVENTS.get(event, ())))}"
             for path, line, event, keys in calls
             if event not in EVENTS or not keys <= set(EVENTS[event])]
    assert wrong == []
    unused = set(EVENTS) - {event for _path, _line, event, _keys in calls}
    assert unused == set()


def test_field_names_do_not_clash_with_the_line_head_or_log_records() -> None:
    reserved = set(vars(logging.makeLogRecord({}))) | {"ts", "level", "logger", "event",
                                                      "message", "asctime", "exc"}
    for event, fields in EVENTS.items():
        assert re.fullmatch(r"[a-z]+(\.[a-z_]+)+", event), event
        assert not set(fields) & reserved, (event, set(fields) & reserved)


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_the_readme_documents_every_event(event: str) -> None:
    readme = (ROOT / "README.md").read_text()
    row = next((line for line in readme.splitlines()
                if line.lstrip().startswith(f"| `{event}` |")), None)
    assert row is not None, f"README: no row for {event}"
    for field in EVENTS[event]:
        assert f"`{field}`" in row, f"README row of {event} lacks {field}"


@pytest.mark.parametrize("value, written", [
    ("plain-value_1.2:3/x@[y]+z", "plain-value_1.2:3/x@[y]+z"),
    ("ünïcode", "ünïcode"),
    ("", '""'),
    ("two words", '"two words"'),
    ("a=b", '"a=b"'),
    ('say "hi"\n', '"say \\"hi\\"\\n"'),
    (True, "true"),
    (["a", "b c"], '"a,b c"'),
    (("x", "y"), '"x,y"'),
    (7, "7"),
])
def test_logfmt_values_are_bare_only_when_they_read_back_bare(value: object,
                                                               written: str) -> None:
    stream = io.StringIO()
    configure_logging("kv", "info", stream)
    try:
        log_event(logging.getLogger("gateway.test.values"), logging.INFO, "signal.lost", "x",
                  session=value)
    finally:
        configure_logging("kv", "info")
    line = stream.getvalue().strip()
    assert line.endswith(f" session={written}")
    assert parse_logfmt(line)["session"] == (json.loads(written) if written.startswith('"')
                                             else written)
