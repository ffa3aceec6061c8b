"""Configuration of dots-gateway: one TOML file -> typed, frozen ``Settings``.

Owns the schema (which sections and keys exist, their defaults and ranges, the rules that tie
keys together), the embedded defaults used when there is no file at all, and the reading of
the file: every problem names its key by full dotted path (``session.idle.ack_timeout.max``,
``clients[2].prefixes[0]``) and all problems in a file are raised together as one
``ConfigError`` whose ``errors`` lists them.

This module is the package's face: the rest of the code imports from here. Inside, one module
per group of sections, each with its settings types, defaults and reader functions:

* ``loading``: ``Settings``, ``load_config``, ``parse_config``, ``default_settings``,
  ``check_config``; reads the sections in the documented order and gathers their problems.
* ``operations``: ``[general]``, ``[logging]``, ``[metrics]``, ``[control]``, ``[gc]``.
* ``endpoints``: ``[server]``, ``[tls]``, ``[[psk]]``, ``[limits]``.
* ``sessions``: ``[session]``, ``[mitigation]``, ``[[clients]]``, ``[trusted_gateways]``.
* ``upstream``: ``[gateway]``, ``[[upstream]]``, ``[discovery]``.
* ``anycast_redirect``: ``[anycast]``, ``[redirect]``.
* ``data_channel``: ``[data_channel]`` (the RFC 8783 RESTCONF listener and its limits).
* ``schema``: ``ConfigError`` and the typed readers with key paths (exact TOML types, ranges,
  unknown keys, value syntaxes); it knows no section.

``loading`` imports the section modules; they import ``schema``, and ``upstream`` and
``anycast_redirect`` also ``endpoints`` (port, transports, listening addresses); no module of
the package imports this face, so a submodule can be imported on its own without a cycle.
The package reads the one file and does nothing else: no sockets, no DNS, no checks that the
paths it names exist. May import: the standard library, ``cryptography``'s X.509 name parser
(``schema``, for certificate subjects) and its own modules; never the roles, the transports
or the daemon.
"""

from gateway.config.anycast_redirect import (
    AnycastBackend,
    AnycastHealthSettings,
    AnycastSettings,
    InterfaceKind,
    RedirectMode,
    RedirectSettings,
    RedirectTargetSettings,
)
from gateway.config.data_channel import DataChannelSettings
from gateway.config.endpoints import (
    LimitSettings,
    PskEntry,
    ServerSettings,
    TlsSettings,
    Transport,
)
from gateway.config.loading import (
    DEFAULT_STATE_DIR,
    Settings,
    check_config,
    default_settings,
    load_config,
    parse_config,
)
from gateway.config.operations import (
    ControlSettings,
    GcSettings,
    GeneralSettings,
    LogFormat,
    LoggingSettings,
    LogLevel,
    MetricsSettings,
    Mode,
)
from gateway.config.schema import ConfigError
from gateway.config.sessions import (
    Backend,
    Bounds,
    ClientSettings,
    ConflictPolicy,
    MitigationSettings,
    SessionConfig,
    SessionSettings,
    TrustedGatewaysSettings,
)
from gateway.config.upstream import (
    DISCOVERY_MECHANISMS,
    DISCOVERY_RETRY_DEFAULTS,
    DiscoveryAnycastSettings,
    DiscoveryDhcpSettings,
    DiscoveryMdnsSettings,
    DiscoverySettings,
    DnssecMode,
    DnssecValidator,
    GatewayDomain,
    GatewaySettings,
    UpstreamSettings,
)

__all__ = [
    "DEFAULT_STATE_DIR",
    "DISCOVERY_MECHANISMS",
    "DISCOVERY_RETRY_DEFAULTS",
    "AnycastBackend",
    "AnycastHealthSettings",
    "AnycastSettings",
    "Backend",
    "Bounds",
    "ClientSettings",
    "ConfigError",
    "ConflictPolicy",
    "ControlSettings",
    "DataChannelSettings",
    "DiscoveryAnycastSettings",
    "DiscoveryDhcpSettings",
    "DiscoveryMdnsSettings",
    "DiscoverySettings",
    "DnssecMode",
    "DnssecValidator",
    "GatewayDomain",
    "GcSettings",
    "GatewaySettings",
    "GeneralSettings",
    "InterfaceKind",
    "LimitSettings",
    "LogFormat",
    "LogLevel",
    "LoggingSettings",
    "MetricsSettings",
    "MitigationSettings",
    "Mode",
    "PskEntry",
    "RedirectMode",
    "RedirectSettings",
    "RedirectTargetSettings",
    "ServerSettings",
    "SessionConfig",
    "SessionSettings",
    "Settings",
    "TlsSettings",
    "Transport",
    "TrustedGatewaysSettings",
    "UpstreamSettings",
    "check_config",
    "default_settings",
    "load_config",
    "parse_config",
]
