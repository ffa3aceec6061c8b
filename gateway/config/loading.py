"""One TOML file -> typed, frozen ``Settings``: reading the file and gathering its problems.

Owns the ``Settings`` type that holds every section, the entry points (``load_config``,
``parse_config``, ``default_settings``, ``check_config``) and the order in which sections are
read, which is the order the example file documents them and so the order problems are
listed in. Each section's keys, defaults and rules are in its own module; the embedded
defaults (no file at all) are theirs too: terminal mode, dev PKI in the state directory,
127.0.0.1 and ::1, port 4646, UDP and TCP.

All problems in a file are raised together as one ``ConfigError`` whose ``errors`` lists
them, each naming its key by full dotted path. Relative paths are resolved against the config
file's directory. It reads the one file and does nothing else: no sockets, no DNS, no checks
that the paths it names exist (whoever opens them reports that).
Imports: standard library and the section modules of ``gateway.config``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.anycast_redirect import (
    AnycastSettings,
    RedirectSettings,
    read_anycast,
    read_redirect,
)
from gateway.config.data_channel import DataChannelSettings, read_data_channel
from gateway.config.endpoints import (
    LimitSettings,
    PskEntry,
    ServerSettings,
    TlsSettings,
    read_limits,
    read_psk,
    read_server,
    read_tls,
)
from gateway.config.operations import (
    ControlSettings,
    GcSettings,
    GeneralSettings,
    LoggingSettings,
    MetricsSettings,
    read_control,
    read_gc,
    read_general,
    read_logging,
    read_metrics,
)
from gateway.config.schema import ConfigError, Table
from gateway.config.sessions import (
    ClientSettings,
    MitigationSettings,
    SessionSettings,
    TrustedGatewaysSettings,
    read_clients,
    read_mitigation,
    read_session,
    read_trusted_gateways,
)
from gateway.config.upstream import (
    DiscoverySettings,
    GatewaySettings,
    UpstreamSettings,
    read_discovery,
    read_gateway,
    read_upstream,
)

#: Every command's state directory when neither ``--state-dir`` nor ``general.state_dir``
#: names one: ``state`` under the working directory, where ``make run`` keeps it and where
#: ``dots-client``, ``status``, ``reload`` and ``drain`` look. Installed services set theirs.
DEFAULT_STATE_DIR = Path("state")


@dataclass(frozen=True, slots=True)
class Settings:
    source: str  # the file it came from, or "<defaults>"
    general: GeneralSettings
    logging: LoggingSettings
    server: ServerSettings
    tls: TlsSettings
    psk: tuple[PskEntry, ...]
    session: SessionSettings
    mitigation: MitigationSettings
    clients: tuple[ClientSettings, ...]
    trusted_gateways: TrustedGatewaysSettings
    upstream: tuple[UpstreamSettings, ...]
    metrics: MetricsSettings
    control: ControlSettings
    discovery: DiscoverySettings
    limits: LimitSettings = LimitSettings()
    anycast: AnycastSettings = AnycastSettings()
    redirect: RedirectSettings = RedirectSettings()
    gateway: GatewaySettings = GatewaySettings()
    data_channel: DataChannelSettings = DataChannelSettings()
    gc: GcSettings = GcSettings()


def load_config(
    path: Path, *, state_dir: Path | None = None, default_state_dir: Path | None = None
) -> Settings:
    """Read and check one config file. Raises ConfigError listing every problem found.

    ``state_dir`` (the command line's ``--state-dir``) wins over ``general.state_dir``;
    ``default_state_dir`` is used when neither names one (else ``DEFAULT_STATE_DIR``).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        message = f"cannot read config file: {exc.strerror or exc}"
        raise ConfigError("", message, source=str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (line {line}, byte offset {exc.start})"
        raise ConfigError("", message, source=str(path)) from None
    return parse_config(
        text,
        str(path),
        base_dir=path.absolute().parent,
        state_dir=state_dir,
        default_state_dir=default_state_dir,
    )


def parse_config(
    text: str,
    source: str = "<string>",
    *,
    base_dir: Path | None = None,
    state_dir: Path | None = None,
    default_state_dir: Path | None = None,
) -> Settings:
    """Check TOML text. Relative paths are joined to ``base_dir`` (kept relative when None);
    ``state_dir`` and ``default_state_dir`` as for ``load_config``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line L, column C)"; the line itself is not echoed because
        # it may hold a PSK.
        raise ConfigError("", f"TOML syntax error: {exc}", source=source) from None
    return _build(data, source, base_dir, default_state_dir or DEFAULT_STATE_DIR, state_dir)


def default_settings(state_dir: Path | None = None) -> Settings:
    """The embedded defaults: what ``dots-gateway run`` uses without a config file."""
    return _build({}, "<defaults>", None, state_dir or DEFAULT_STATE_DIR, embedded=True)


def check_config(path: Path) -> list[str]:
    """Every problem in the file as one "file: key: what is wrong" line; [] when it is fine."""
    try:
        load_config(path)
    except ConfigError as exc:
        return [str(error) for error in exc.errors]
    return []


def _build(
    data: dict[str, Any],
    source: str,
    base_dir: Path | None,
    state_dir: Path,
    state_dir_override: Path | None = None,
    *,
    embedded: bool = False,
) -> Settings:
    errors: list[ConfigError] = []
    root = Table(data, "", errors)
    # Sections are read in the order the example file documents them, so problems are
    # listed in that order too.
    general = read_general(root.table("general"), base_dir, state_dir, state_dir_override)
    logging = read_logging(root.table("logging"))
    server = read_server(root.table("server"))
    tls = read_tls(root.table("tls"), base_dir, general.state_dir)
    psk, psk_identities = read_psk(root)
    session = read_session(root.table("session"))
    mitigation = read_mitigation(root.table("mitigation"))
    clients = read_clients(root, psk_identities)
    trusted_gateways = read_trusted_gateways(root.table("trusted_gateways"))
    upstream = read_upstream(root)
    discovery = read_discovery(root.table("discovery"), base_dir)
    metrics = read_metrics(root.table("metrics"))
    control = read_control(root.table("control"), base_dir, general.state_dir)
    limits = read_limits(root.table("limits"))
    anycast = read_anycast(root.table("anycast"), server)
    redirect = read_redirect(root.table("redirect"))
    gateway = read_gateway(root.table("gateway"), base_dir)
    data_channel = read_data_channel(root.table("data_channel"), server,
                                     present=embedded or "data_channel" in data)
    gc = read_gc(root.table("gc"))
    root.finish()
    if errors:
        found = [ConfigError(e.key, e.message, source=source) for e in errors]
        if len(found) == 1:
            raise found[0]
        raise ConfigError("", f"{len(found)} problems", source=source, errors=found)
    return Settings(
        source, general, logging, server, tls, psk, session, mitigation, clients,
        trusted_gateways, upstream, metrics, control, discovery, limits, anycast, redirect,
        gateway, data_channel, gc,
    )  # fmt: skip

