"""The DOTS data channel's listener and limits: ``[data_channel]`` (RFC 8783).

Owns its settings type, defaults and reader: whether the RESTCONF server runs (on with the
embedded defaults or a ``[data_channel]`` section, off for a config file without one), where
it listens (by default the ``[server]`` addresses), its port (8443 by default, which needs no
privilege; 443 is the production port, RFC 8973 §4) and the limits that bound what one
client may store. Credentials are the signal channel's ``[tls]`` ones.
Imports: standard library, ``gateway.config.schema``, ``gateway.config.endpoints``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.config.endpoints import ServerSettings, Transport
from gateway.config.schema import IPAddress, Table, Unique, parse_dns_name, parse_ip

DEFAULT_DATA_PORT = 8443


@dataclass(frozen=True, slots=True)
class DataChannelSettings:
    enabled: bool = False
    #: Empty: the ``[server]`` addresses.
    addresses: tuple[IPAddress, ...] = ()
    port: int = DEFAULT_DATA_PORT
    max_clients: int = 10_000
    max_aliases: int = 256  # per client
    max_acls: int = 256  # per client
    max_aces: int = 64  # per ACL
    max_body: int = 262_144  # bytes of one request body
    #: Minutes an alias or ACL lives without a refresh (RFC 8783: one week); 0: forever.
    lifetime: int = 10080
    #: Gateway mode: the upstream data-channel server (``https://HOST[:PORT]``); None: the
    #: discovery engine's ``data.tcp`` candidates.
    upstream: str | None = None
    upstream_server_name: str | None = None

    def listen_addresses(self, server: ServerSettings) -> tuple[IPAddress, ...]:
        return self.addresses or server.addresses


def _https_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme != "https" or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ValueError(f"must be https://HOST[:PORT], got {text!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}:{port or 443}"


def _optional(t: Table, name: str, parse: Callable[[str], str]) -> str | None:
    """An optional string; "" is the same as leaving it out."""
    text = t.opt_string(name, empty_ok=True)
    return t.parsed(name, parse) if text else None


def read_data_channel(t: Table, server: ServerSettings, *, present: bool) -> DataChannelSettings:
    """``present``: the embedded defaults, or a file with a ``[data_channel]`` section. A
    file without one leaves the data channel off: an operator's file names every listener
    it opens (as ``[metrics]``), and daemons of older files keep their ports to themselves."""
    enabled = t.boolean("enabled", present)
    seen = Unique("address")
    addresses = tuple(address for key, address in t.parsed_list("addresses", parse_ip, ())
                      if seen.check(t, key, address))
    settings = DataChannelSettings(
        enabled=enabled,
        addresses=addresses,
        port=t.integer("port", DEFAULT_DATA_PORT, 1, 65535),
        max_clients=t.integer("max_clients", 10_000, 1, 10_000_000),
        max_aliases=t.integer("max_aliases", 256, 0, 100_000),
        max_acls=t.integer("max_acls", 256, 0, 100_000),
        max_aces=t.integer("max_aces", 64, 1, 256),
        max_body=t.integer("max_body", 262_144, 1024, 64 * 1024 * 1024),
        lifetime=t.integer("lifetime", 10080, 0, 2**31 - 1,
                           " (minutes; 0 keeps entries until deleted)"),
        upstream=_optional(t, "upstream", _https_url),
        upstream_server_name=_optional(t, "upstream_server_name", parse_dns_name),
    )
    if (enabled and settings.port == server.port and Transport.TCP in server.transports
            and set(settings.listen_addresses(server)) & set(server.addresses)):
        t.error("port", f"{settings.port} is the signal channel's TCP port ([server] port) "
                "on the same addresses; pick another one")
    t.finish()
    return settings
