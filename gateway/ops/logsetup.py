"""Process-wide logging: one line per event, key=value (default) or JSON.

Configured once at start-up by the CLI. Library modules only call ``logging.getLogger``;
events with fields go through ``gateway.eventlog.log_event``, whose ``event`` name and fields
arrive here as the record's extra attributes and become ``key=value`` pairs or JSON members
(numbers and booleans stay numbers and booleans in JSON).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import TextIO

_RESERVED = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and k != "event"}


def _head(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, object]:
    """ts, level, logger, the event name when there is one, then msg."""
    head: dict[str, object] = {
        "ts": _timestamp(formatter, record),
        "level": record.levelname.lower(),
        "logger": record.name,
    }
    event = getattr(record, "event", None)
    if event is not None:
        head["event"] = event
    head["msg"] = record.getMessage()
    return head


def _timestamp(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    # strftime once per second, not once per line: a busy daemon logs hundreds a second.
    second = int(record.created)
    cached = getattr(formatter, "_second", None)
    if cached is None or cached[0] != second:
        cached = (second, formatter.formatTime(record, "%Y-%m-%dT%H:%M:%S"))
        formatter._second = cached  # type: ignore[attr-defined]
    return f"{cached[1]}.{int(record.msecs):03d}Z"


def _is_list(value: object) -> bool:
    # A named tuple (an address) is one value: its str() is how it reads.
    return isinstance(value, list | frozenset | set) or type(value) is tuple


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if _is_list(value):
        return [_json_value(v) for v in value]  # type: ignore[attr-defined]
    return str(value)


def _text(value: object) -> object:
    """Lists as comma-separated values (``cuids=a,b``), booleans in lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_list(value):
        return ",".join(str(v) for v in value)  # type: ignore[attr-defined]
    return value


#: What a value may hold and still go out unquoted: word characters (``str.isalnum`` and
#: ``_``) and a few that addresses, names and codes use. A regular expression: the
#: per-character test it replaced was most of the cost of a log line.
_PLAIN = re.compile(r"[\w\-.:/@\[\]+]+").fullmatch


def _quote(value: object) -> str:
    text = value if type(value) is str else str(_text(value))
    if _PLAIN(text):
        return text
    return json.dumps(text)  # quotes, and escapes newlines so one event stays one line


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {**_head(self, record), **_extras(record)}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return " ".join([f"{k}={_quote(v)}" for k, v in fields.items()])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {**_head(self, record),
                  **{k: _json_value(v) for k, v in _extras(record).items()}}
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json.dumps(fields, separators=(",", ":"))


def configure_logging(fmt: str = "kv", level: str = "info", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else KeyValueFormatter()
    formatter.converter = time.gmtime  # timestamps in UTC, as the Z says
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The formatters print none of these, and each costs every record a lookup (the
    # caller's frame and file name, the thread, the process): the logging HOWTO's
    # "Optimization" section names these switches for this purpose.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
