"""Errors of the anycast layer that reach the command line (no pyroute2 import here, so the
CLI can catch them without loading netlink code)."""

from __future__ import annotations


class AnycastError(Exception):
    """Anycast could not be set up or changed; the message says what and why."""
