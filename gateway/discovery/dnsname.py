"""DNS names in the wire form DHCP carries them (RFC 1035 §3.1, RFC 8415 §10): a sequence of
length-prefixed labels ending in the zero-length root label, never compressed.

Names come back as text without the trailing dot (``dots.example.com``), the form the
configuration and certificate checks use. Only host names are accepted (letters, digits,
hyphens; an underscore is allowed for service labels such as ``_dots-signal``): such a name
is a reference identifier (RFC 6125 DNS-ID) or goes to a resolver, and anything else there
is an attack surface. Pure: no I/O.
"""

from __future__ import annotations

import re

from gateway.discovery.errors import InvalidName

MAX_NAME_OCTETS = 255  # RFC 1035 §2.3.4, wire form including the root label
MAX_LABEL_OCTETS = 63
_LABEL = re.compile(rb"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def encode_name(name: str) -> bytes:
    """``dots.example.com`` (trailing dot optional) -> ``04 'dots' 07 'example' 03 'com' 00``."""
    text = name[:-1] if name.endswith(".") else name
    if not text:
        raise InvalidName("empty name (the root alone is not a server name)")
    out = bytearray()
    for label in text.split("."):
        raw = label.encode("ascii", "replace")
        if not _LABEL.fullmatch(raw):
            raise InvalidName(f"{name!r}: label {label!r} is not a host-name label")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME_OCTETS:
        raise InvalidName(f"{name!r}: {len(out)} octets in wire form, at most 255")
    return bytes(out)


def encode_names(names: list[str] | tuple[str, ...]) -> bytes:
    """Several names one after the other (RFC 8973 §5.2.1: distinguished by their root labels)."""
    return b"".join(encode_name(name) for name in names)


def decode_names(data: bytes) -> list[str]:
    """Every name in ``data``; raises InvalidName when any part is not a valid name.

    Compression pointers (a length octet with the top two bits set) are refused: DHCP names
    are uncompressed (RFC 8415 §10), and a pointer here would reach outside the option.
    """
    names: list[str] = []
    labels: list[str] = []
    start = pos = 0
    while pos < len(data):
        length = data[pos]
        if length == 0:
            if not labels:
                raise InvalidName(f"empty name at octet {pos} (a lone root label)")
            if pos + 1 - start > MAX_NAME_OCTETS:
                raise InvalidName(f"name at octet {start} is longer than 255 octets")
            names.append(".".join(labels))
            labels = []
            pos += 1
            start = pos
            continue
        if length > MAX_LABEL_OCTETS:
            raise InvalidName(f"label length {length} at octet {pos} (compression or garbage)")
        label = data[pos + 1 : pos + 1 + length]
        if len(label) < length:
            raise InvalidName(f"label at octet {pos} runs past the end of the data")
        if not _LABEL.fullmatch(label):
            raise InvalidName(f"label {label!r} at octet {pos} is not a host-name label")
        labels.append(label.decode("ascii"))
        pos += 1 + length
    if labels:
        raise InvalidName("the last name has no root label (truncated)")
    if not names:
        raise InvalidName("no name")
    return names


def decode_first_name(data: bytes) -> str:
    """The first name only (seed §9.1.3 / §9.2.3, RFC 8973 §5.1.3: with several names, as
    distinguished by several root labels, only the first is used). Later names are not even
    validated: they are ignored, so garbage after the first root label does not discard it."""
    end = 0
    while end < len(data) and data[end] != 0:
        end += 1 + data[end]
    return decode_names(data[: end + 1])[0]


def normalize_name(name: str) -> str:
    """Lower case, no trailing dot: the form names are compared in."""
    return name.rstrip(".").lower()
