"""RESTCONF errors and the JSON node readers of the DOTS data channel (RFC 8783, RFC 8040).

Owns ``RestconfError`` (an HTTP status, an RFC 8040 §7 error-tag, the path of the node at
fault and a message; it renders itself as an ``ietf-restconf:errors`` body) and ``Node``, a
reader that walks a decoded JSON object and names the exact node in every error
(``/ietf-dots-data-channel:dots-data/dots-client=X/aliases/alias=web/target-prefix[1]``).
It also validates aliases (RFC 8783 §6.1); ACLs are in ``data_acls``. Pure: no I/O, no
clock; it must not import asyncio, sqlite3 or any transport.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from gateway.dots.model import IPNetwork

T = TypeVar("T")

MODULE = "ietf-dots-data-channel"
ROOT_PATH = f"/{MODULE}:dots-data"
MEDIA_TYPE = "application/yang-data+json"

#: RFC 8040 §7: error-tag -> error-type used with it.
_ERROR_TYPES = {
    "malformed-message": "protocol",
    "operation-not-supported": "protocol",
    "access-denied": "protocol",
    "too-big": "transport",
}


class RestconfError(Exception):
    """A refused request: its HTTP status, error-tag (RFC 8040 §7) and the node at fault."""

    def __init__(self, status: int, tag: str, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.tag = tag
        self.message = message
        self.path = path

    def body(self) -> dict[str, Any]:
        """The ``ietf-restconf:errors`` document (RFC 8040 §7.1)."""
        error: dict[str, Any] = {"error-type": _ERROR_TYPES.get(self.tag, "application"),
                                 "error-tag": self.tag}
        if self.path:
            error["error-path"] = self.path
        error["error-message"] = self.message
        return {"ietf-restconf:errors": {"error": [error]}}

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.status} {self.tag}{where}: {self.message}"


def bad(path: str, message: str, tag: str = "invalid-value") -> RestconfError:
    return RestconfError(400, tag, message, path)


def decode_json(body: bytes) -> Any:
    """The JSON document in ``body``; 400 malformed-message when it is not UTF-8 JSON."""
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise RestconfError(400, "malformed-message", f"the body is not JSON: {exc}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # RFC 7951 §4: a member name is unique within an object
            raise ValueError(f"member {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


class Node:
    """A JSON object at ``path``: typed reads of its members, and an error for any member
    left unread (``finish``: RFC 8040 §4.4.1 unknown-element)."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise bad(path, f"must be a JSON object, got {_json_type(value)}")
        self.data: dict[str, Any] = value
        self.path = path
        self._read: set[str] = set()

    def at(self, name: str) -> str:
        return f"{self.path}/{name}"

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self._read.add(name)
        return self.data.get(name)

    def forbid(self, *names: str) -> None:
        """Read-only nodes (``config false``) a client may not write."""
        for name in names:
            if name in self.data:
                raise bad(self.at(name), "is read-only (config false); leave it out of "
                          "the request", "invalid-value")

    def required(self, name: str) -> Any:
        if name not in self.data:
            raise bad(self.at(name), "is mandatory and missing", "missing-element")
        return self.raw(name)

    def child(self, name: str, *, required: bool = False) -> Node | None:
        value = self.required(name) if required else self.raw(name)
        return None if not required and name not in self.data else Node(value, self.at(name))

    def string(self, name: str, *, required: bool = False, max_length: int = 255) -> str | None:
        value = self.required(name) if required else self.raw(name)
        if not required and name not in self.data:
            return None
        return check_string(value, self.at(name), max_length)

    def uint(self, name: str, bits: int, *, lo: int = 0, hi: int | None = None,
             required: bool = False) -> int | None:
        value = self.required(name) if required else self.raw(name)
        if not required and name not in self.data:
            return None
        return check_uint(value, self.at(name), bits, lo, hi)

    def choice(self, name: str, allowed: tuple[str, ...], *, required: bool = False,
               prefix: str | None = None) -> str | None:
        """An enumeration or identityref: one of ``allowed`` (an identityref may carry its
        module prefix, RFC 7951 §6.8, which is dropped)."""
        text = self.string(name, required=required)
        if text is None:
            return None
        if prefix is not None and text.startswith(prefix + ":"):
            text = text[len(prefix) + 1:]
        if text not in allowed:
            raise bad(self.at(name), f"must be one of {', '.join(allowed)}, got {text!r}")
        return text

    def bits(self, name: str, allowed: tuple[str, ...], *, required: bool = False) -> str | None:
        """A YANG ``bits`` value: space-separated names (RFC 7951 §6.5)."""
        text = self.string(name, required=required)
        if text is None:
            return None
        names = text.split()
        unknown = [n for n in names if n not in allowed]
        if unknown or len(set(names)) != len(names):
            raise bad(self.at(name), f"must be distinct names among {', '.join(allowed)}, "
                      f"got {text!r}")
        return " ".join(n for n in allowed if n in names)  # canonical order

    def binary(self, name: str, *, max_bytes: int = 40) -> str | None:
        text = self.string(name, max_length=4 * max_bytes)
        if text is None:
            return None
        try:
            data = base64.b64decode(text, validate=True)
        except ValueError:
            raise bad(self.at(name), "must be base64 (YANG binary, RFC 7951 §6.6)") from None
        if len(data) > max_bytes:
            raise bad(self.at(name), f"must be at most {max_bytes} bytes")
        return text

    def prefix(self, name: str, version: int) -> str | None:
        text = self.string(name)
        if text is None:
            return None
        return str(check_prefix(text, self.at(name), version))

    def array(self, name: str, *, max_items: int, required: bool = False) -> list[Any]:
        value = self.required(name) if required else self.raw(name)
        if not required and name not in self.data:
            return []
        if not isinstance(value, list):
            raise bad(self.at(name), f"must be a JSON array, got {_json_type(value)}")
        if required and not value:
            raise bad(self.at(name), "must have at least one entry", "missing-element")
        if len(value) > max_items:
            raise RestconfError(413, "too-big", f"has {len(value)} entries; at most "
                                f"{max_items} are accepted", self.at(name))
        return value

    def leaf_list(self, name: str, check: Callable[[Any, str], T], *, max_items: int) -> list[T]:
        out: list[T] = []
        for i, item in enumerate(self.array(name, max_items=max_items)):
            value = check(item, f"{self.at(name)}[{i + 1}]")
            if value in out:  # a leaf-list's values are unique (RFC 7950 §7.7)
                raise bad(f"{self.at(name)}[{i + 1}]", f"repeats the value {item!r}")
            out.append(value)
        return out

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise bad(self.at(unknown[0]), "is not a node of this container in "
                      f"{MODULE} (unknown: {', '.join(unknown)})", "unknown-element")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def check_string(value: Any, path: str, max_length: int = 255) -> str:
    if not isinstance(value, str):
        raise bad(path, f"must be a string, got {_json_type(value)}")
    if not value or len(value) > max_length:
        raise bad(path, f"must be 1 to {max_length} characters long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise bad(path, "must not contain control characters")
    return value


def check_uint(value: Any, path: str, bits: int, lo: int = 0, hi: int | None = None) -> int:
    top = (1 << bits) - 1 if hi is None else hi
    # RFC 7951 §6.1: up to 32 bits a JSON number, 64-bit types a string.
    if bits > 32 and isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(path, f"must be an integer from {lo} to {top}, got {_json_type(value)}")
    if not lo <= value <= top:
        raise bad(path, f"must be from {lo} to {top}, got {value}")
    return value


def check_prefix(value: Any, path: str, version: int | None = None) -> IPNetwork:
    text = check_string(value, path, 64)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise bad(path, f"must be an IP prefix with no bits set after the length: {exc}") \
            from None
    if version is not None and network.version != version:
        raise bad(path, f"must be an IPv{version} prefix, got {text}")
    return network


def check_fqdn(value: Any, path: str) -> str:
    text = check_string(value, path, 253).rstrip(".").lower()
    labels = text.split(".")
    if not text or any(not 0 < len(label) <= 63 for label in labels) or not all(
            c.isalnum() or c in "-_*" for label in labels for c in label):
        raise bad(path, f"must be a domain name, got {value!r}")
    return text


def check_uri(value: Any, path: str) -> str:
    text = check_string(value, path, 2048)
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme or not scheme[0].isalpha() or " " in text or not rest:
        raise bad(path, f"must be a URI (RFC 3986), got {value!r}")
    return text


def entry_name(value: Any, path: str) -> str:
    """A list key used in URLs (alias and ACL names): printable, no '/'."""
    text = check_string(value, path, 64)
    if "/" in text or any(c.isspace() for c in text):
        raise bad(path, "must not contain '/' or spaces")
    return text


# --- aliases (RFC 8783 §6.1) ---------------------------------------------------------------

#: Leaf-list sizes of one alias; a request with more is refused 413 too-big.
MAX_ALIAS_TARGETS = 256


def read_alias(value: Any, list_path: str) -> dict[str, Any]:
    """One ``alias`` entry of the list at ``list_path`` (``.../aliases/alias``), normalized
    (RFC 8783 §6.1); raises ``RestconfError``."""
    node = Node(value, list_path)
    name = entry_name(node.required("name"), node.at("name"))
    node.path = path = f"{list_path}={name}"
    node.forbid("pending-lifetime")
    out: dict[str, Any] = {"name": name}
    prefixes = node.leaf_list("target-prefix", lambda v, p: check_prefix(v, p),
                              max_items=MAX_ALIAS_TARGETS)
    if prefixes:
        out["target-prefix"] = [str(p) for p in prefixes]
    ranges: list[dict[str, int]] = []
    for i, item in enumerate(node.array("target-port-range", max_items=MAX_ALIAS_TARGETS)):
        at = f"{node.at('target-port-range')}[{i + 1}]"
        r = Node(item, at)
        lower = check_uint(r.required("lower-port"), r.at("lower-port"), 16)
        upper = r.uint("upper-port", 16)
        r.finish()
        if upper is not None and upper < lower:
            raise bad(f"{at}/upper-port", f"must not be below lower-port ({lower})")
        if any(existing["lower-port"] == lower for existing in ranges):
            raise bad(at, f"repeats the key lower-port {lower}")
        ranges.append({"lower-port": lower} | ({} if upper is None else {"upper-port": upper}))
    if ranges:
        out["target-port-range"] = ranges
    protocols = node.leaf_list("target-protocol", lambda v, p: check_uint(v, p, 8),
                               max_items=MAX_ALIAS_TARGETS)
    if protocols:
        out["target-protocol"] = protocols
    for leaf, check in (("target-fqdn", check_fqdn), ("target-uri", check_uri)):
        values = node.leaf_list(leaf, check, max_items=MAX_ALIAS_TARGETS)
        if values:
            out[leaf] = values
    node.finish()
    if not any(k in out for k in ("target-prefix", "target-fqdn", "target-uri")):
        # RFC 8783 §6.1: an alias names at least one target.
        raise bad(path, "an alias needs at least one of target-prefix, target-fqdn, "
                  "target-uri", "missing-element")
    return out


def alias_prefixes(alias: Mapping[str, Any]) -> list[IPNetwork]:
    return [ipaddress.ip_network(p) for p in alias.get("target-prefix", ())]
