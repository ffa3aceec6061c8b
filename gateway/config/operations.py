"""The sections about running the node: ``[general]``, ``[logging]``, ``[metrics]``, ``[control]``,
``[gc]``.

Owns their settings types, defaults and readers: the state directory and mode, the node's
name, log format and level, the metrics endpoint, the control socket path (which must fit
a Unix socket address) and the garbage-collection policy (``gateway.ops.gc_policy``).
Imports: standard library, ``gateway.config.schema``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway.config.schema import Table, parse_host_port

# AF_UNIX sun_path is 108 bytes on Linux, one of them the terminating NUL.
UNIX_PATH_MAX = 107


class Mode(StrEnum):
    TERMINAL = "terminal"  # the gateway is the DOTS server
    GATEWAY = "gateway"  # relay to upstream DOTS servers


class LogFormat(StrEnum):
    KV = "kv"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class GeneralSettings:
    state_dir: Path
    mode: Mode
    node_name: str


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    format: LogFormat
    level: LogLevel


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: tuple[str, int] | None  # None: no metrics endpoint


@dataclass(frozen=True, slots=True)
class ControlSettings:
    socket: Path


#: ``[gc] audit_interval`` bounds, seconds (0: no periodic audit). The default and why:
#: ``gateway.ops.gc_policy.DEFAULT_AUDIT_INTERVAL``; kept in step by a unit test.
GC_AUDIT_DEFAULT = 3600
GC_AUDIT_MIN = 60
GC_AUDIT_MAX = 7 * 86400


@dataclass(frozen=True, slots=True)
class GcSettings:
    #: Freeze the survivors of each full collection (off: CPython's own behaviour).
    freeze: bool = True
    #: Seconds between audits (unfreeze everything, one full collection); 0: none.
    audit_interval: int = GC_AUDIT_DEFAULT


def read_general(
    t: Table, base_dir: Path | None, default_state_dir: Path, override: Path | None = None
) -> GeneralSettings:
    """``override`` (``--state-dir``) wins over ``state_dir``, which is still checked."""
    in_file = t.opt_path("state_dir", base_dir)
    state_dir = override or in_file or default_state_dir
    mode = t.choice("mode", Mode, Mode.TERMINAL)
    node_name = t.opt_string("node_name", empty_ok=True) or "dots-gateway"
    # It goes into log lines and the 5.08 diagnostic payload (RFC 8768), both one-line text.
    if not node_name.isprintable() or len(node_name.encode()) > 255:
        t.error("node_name", "must be printable text of at most 255 bytes")
    t.finish()
    return GeneralSettings(state_dir, mode, node_name)


def read_logging(t: Table) -> LoggingSettings:
    settings = LoggingSettings(
        t.choice("format", LogFormat, LogFormat.KV), t.choice("level", LogLevel, LogLevel.INFO)
    )
    t.finish()
    return settings


def read_metrics(t: Table) -> MetricsSettings:
    listen = t.parsed("listen", parse_host_port, empty_ok=True)  # "" disables metrics
    t.finish()
    return MetricsSettings(listen)


def read_control(t: Table, base_dir: Path | None, state_dir: Path) -> ControlSettings:
    path = t.opt_path("socket", base_dir, empty_ok=True)
    socket = path or state_dir / "control.sock"
    if len(str(socket).encode()) > UNIX_PATH_MAX:
        origin = "" if path else " (derived from general.state_dir)"
        t.error(
            "socket",
            f"{str(socket)!r}{origin} is longer than the {UNIX_PATH_MAX} bytes "
            "a Unix socket path can have",
        )
    t.finish()
    return ControlSettings(socket)


def read_gc(t: Table) -> GcSettings:
    freeze = t.boolean("freeze", True)
    interval = t.integer("audit_interval", GC_AUDIT_DEFAULT, 0, GC_AUDIT_MAX,
                         " seconds (0: no periodic audit)")
    if 0 < interval < GC_AUDIT_MIN:
        # More often than that, the audits' full collections are the stalls again.
        t.error("audit_interval", f"must be 0 (no periodic audit) or at least {GC_AUDIT_MIN} "
                f"seconds, got {interval}")
        interval = GC_AUDIT_DEFAULT
    t.finish()
    return GcSettings(freeze, interval)
