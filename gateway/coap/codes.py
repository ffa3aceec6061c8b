"""CoAP message types and codes: what the one-byte code means and how it is written.

Owns the UDP message types (RFC 7252 §3), the few codes the CoAP layer itself sends or
checks, the code classes that tell a request from a response or a signal, and the dotted
notation used in logs and diagnostics. Imports nothing from the rest of the package.
"""

from __future__ import annotations

import enum


class MessageType(enum.IntEnum):
    """The UDP message types (RFC 7252 §3); absent over TCP (RFC 8323 §3.2)."""

    CON = 0
    NON = 1
    ACK = 2
    RST = 3


#: Codes the CoAP layer itself uses or checks (class * 32 + detail).
EMPTY = 0
BAD_OPTION = 130  # 4.02
REQUEST_ENTITY_TOO_LARGE = 141  # 4.13


def format_code(code: int) -> str:
    """The dotted notation, e.g. ``2.05``."""
    return f"{code >> 5}.{code & 31:02d}"


def is_request_code(code: int) -> bool:
    return 0 < code < 32


def is_response_code(code: int) -> bool:
    return code >> 5 in (2, 4, 5)


def is_signaling_code(code: int) -> bool:
    return code >> 5 == 7
