"""Errors of the discovery engine.

``MalformedOption`` and ``MalformedPacket`` mean a DHCP peer sent something we cannot use:
every decoder raises one of them (never IndexError, struct.error, UnicodeError...), so the
procedure can record "why this mechanism gave nothing" and go on. ``DiscoveryUsageError`` is
a bug in the caller.
"""

from __future__ import annotations


class DiscoveryError(Exception):
    """Base of every error the discovery engine raises on purpose."""


class DiscoveryUsageError(DiscoveryError):
    """Local misuse of the API (a bug in the caller), not a peer fault."""


class MalformedOption(DiscoveryError):
    """A DHCP option's value does not follow its format; ``code`` names the option."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"option {code}: {message}")
        self.code = code
        self.message = message


class MalformedPacket(DiscoveryError):
    """A DHCP message is truncated, has the wrong header, or its option area is broken."""


class InvalidName(DiscoveryError):
    """A DNS name in wire or text form that cannot be used (label too long, no root...)."""
