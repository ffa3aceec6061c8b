"""Reading TOML values with key paths: the checked, typed accessors the config sections use.

This module owns how one TOML table is read: exact type checks (a TOML boolean is never an
integer, a string is never a number), ranges, unknown-key detection with a "did you mean"
suggestion, and the value syntaxes the schema uses (IP literals, CIDR prefixes, DNS names,
two-digit decimals, ``host:port``). It knows nothing about which keys exist; the section
modules of ``gateway.config`` ask for them and own the defaults. Standard library and
cryptography's X.509 name parser; no I/O.

Every problem is recorded as a ``ConfigError`` naming the full dotted key and reading goes on,
so one pass reports every problem in a file.
"""

from __future__ import annotations

import base64
import datetime
import difflib
import enum
import ipaddress
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
E = TypeVar("E", bound=enum.Enum)
N = TypeVar("N", int, Decimal)
T = TypeVar("T")

# Widths of the YANG integer types many keys are bounded by.
UINT16_MAX = 2**16 - 1
UINT32_MAX = 2**32 - 1

_MISSING: Any = object()
_CUID = re.compile(r"[A-Za-z0-9_-]{22}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_IFNAME = re.compile(r"[^/\s:]{1,15}")
_TOML_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "array",
    dict: "table",
    datetime.datetime: "datetime",
    datetime.date: "date",
    datetime.time: "time",
}


class ConfigError(Exception):
    """A configuration problem; ``key`` is the dotted path ("" for the file as a whole).

    The error raised for a file carries every problem found in ``errors`` (itself alone when
    there is only one), so a caller can print them all at once.
    """

    def __init__(
        self,
        key: str,
        message: str,
        *,
        source: str = "",
        errors: Sequence[ConfigError] = (),
    ) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message
        self.source = source
        self.errors: tuple[ConfigError, ...] = tuple(errors) or (self,)

    def __str__(self) -> str:
        if len(self.errors) > 1:
            lines = [f"{self.source}: {self.message}"]
            lines += [f"  {e.key}: {e.message}" if e.key else f"  {e.message}" for e in self.errors]
            return "\n".join(lines)
        where = f"{self.source}: " if self.source else ""
        what = f"{self.key}: " if self.key else ""
        return f"{where}{what}{self.message}"


def toml_type(value: object) -> str:
    """The TOML name of a parsed value's type (``type()``, not isinstance: bool is an int)."""
    return _TOML_TYPES.get(type(value), type(value).__name__)


def describe(value: object, *, secret: bool = False) -> str:
    """``string '30'``, ``boolean true``: what was found, for "expected X, got Y" messages."""
    name = toml_type(value)
    if secret or isinstance(value, list | dict):
        return name
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{name} {text}"


def key_path(parent: str, name: str) -> str:
    """Join a key to its table's path; keys that are not bare TOML keys are quoted."""
    shown = name if _BARE_KEY.fullmatch(name) else '"' + name.replace('"', '\\"') + '"'
    return f"{parent}.{shown}" if parent else shown


# Value syntaxes. Each parse_* returns the value or raises ValueError whose text says what is
# wrong; Table.parsed and Table.parsed_list attach the key.


def parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address literal (names are not resolved)"
        ) from None


def parse_prefix(text: str) -> IPNetwork:
    """A CIDR prefix, strictly: host bits set is most likely a typo."""
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a prefix such as '192.0.2.0/24' or '2001:db8::/32'"
        ) from None
    raise ValueError(f"{text!r} has host bits set; did you mean '{loose}'?")


def parse_dns_name(text: str) -> str:
    """A host name: LDH labels of 1..63 characters, 253 in all, one optional trailing dot."""
    name = text[:-1] if text.endswith(".") else text
    # An all-numeric last label would make "192.0.2.1" a host name (RFC 3696 §2).
    if (
        not name
        or len(name) > 253
        or name.rsplit(".", 1)[-1].isdigit()
        or not all(_DNS_LABEL.fullmatch(label) for label in name.split("."))
    ):
        raise ValueError(f"{text!r} is not a DNS name")
    return text


def parse_cuid(text: str) -> str:
    """What RFC 9132 §4.4.1.1 derives: 16 bytes as 22 unpadded base64url characters."""
    # The 22nd character carries 2 bits of padding, which must be zero.
    if (
        not _CUID.fullmatch(text)
        or base64.urlsafe_b64encode(base64.urlsafe_b64decode(text + "==")) != f"{text}==".encode()
    ):
        raise ValueError(
            "must be 22 base64url characters: the first 16 bytes of the credential's SHA-256, "
            "unpadded (RFC 9132 §4.4.1.1)"
        )
    return text


def parse_dn(text: str) -> str:
    """An RFC 4514 distinguished name in the form cryptography prints, so that it compares
    equal to ``cert.subject.rfc4514_string()``."""
    try:
        return x509.Name.from_rfc4514_string(text).rfc4514_string()
    except ValueError:
        raise ValueError(
            f"{text!r} is not an RFC 4514 name such as 'CN=client1,O=Example' "
            "(no spaces after commas)"
        ) from None


def parse_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"``, ``"localhost:9464"`` -> (host, port)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f'{text!r}: an IPv6 address must be written "[address]:port"')
        if not isinstance(_ip(host), ipaddress.IPv6Address):
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f'{text!r}: expected "host:port"')
        if ":" in host:
            raise ValueError(f'{text!r}: an IPv6 address must be in brackets: "[address]:port"')
        if host != "localhost" and _ip(host) is None:
            raise ValueError(f"{text!r}: host must be an IP literal or 'localhost'")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port {port!r} must be a number from 1 to 65535")
    return host, int(port)


def is_interface_name(text: str) -> bool:
    """What Linux accepts as a network interface name (IFNAMSIZ - 1, no '/', ':' or spaces)."""
    return _IFNAME.fullmatch(text) is not None and text not in (".", "..")


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class Unique:
    """Where each value was first seen, so a duplicate names both places."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._first: dict[object, str] = {}

    def check(self, t: Table, key: str, value: object) -> bool:
        first = self._first.setdefault(value, key)
        if first != key:
            t.error_at(key, f"duplicate {self.what} '{value}', also at {first}")
        return first == key


class Table:
    """One TOML table being read. Keys are asked for by name; ``finish`` reports the rest.

    An accessor returns the default after recording a problem, so reading continues; callers
    that cross-check fields compare ``error_count`` before and after to skip checks on values
    that were already reported.
    """

    def __init__(self, data: dict[str, Any], path: str, errors: list[ConfigError]) -> None:
        self._data = data
        self.path = path
        self._errors = errors
        self._known: list[str] = []

    @property
    def error_count(self) -> int:
        return len(self._errors)

    def key(self, name: str) -> str:
        return key_path(self.path, name)

    def error(self, name: str | None, message: str) -> None:
        """Record a problem with key ``name`` of this table (None: the table itself)."""
        self._errors.append(ConfigError(self.key(name) if name else self.path, message))

    def error_at(self, key: str, message: str) -> None:
        """Record a problem with a full key path (an array element, say)."""
        self._errors.append(ConfigError(key, message))

    def has(self, name: str) -> bool:
        self._known.append(name)
        return name in self._data

    def _take(self, name: str, expected: str, kind: type, *, secret: bool = False) -> Any:
        self._known.append(name)
        value = self._data.get(name, _MISSING)
        if value is _MISSING or type(value) is kind:
            return value
        self.error(name, f"expected {expected}, got {describe(value, secret=secret)}")
        return _MISSING

    def string(self, name: str, default: str) -> str:
        value = self._take(name, "a string", str)
        return default if value is _MISSING else value

    def opt_string(
        self, name: str, *, required: bool = False, secret: bool = False, empty_ok: bool = False
    ) -> str | None:
        """A string that, when present, must not be empty (unless ``empty_ok``: "" then means
        the default); None when absent, empty or wrong."""
        value = self._take(name, "a string", str, secret=secret)
        if value is _MISSING:
            if required and name not in self._data:
                self.error(name, "required key is missing")
            return None
        if not value:
            if not empty_ok:
                self.error(name, "must not be empty")
            return None
        return str(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._take(name, "a boolean (true or false)", bool)
        return default if value is _MISSING else value

    def integer(self, name: str, default: int, lo: int, hi: int, why: str = "") -> int:
        value = self._take(name, "an integer", int)
        if value is _MISSING:
            return default
        if not lo <= value <= hi:
            self.error(name, f"must be from {lo} to {hi}{why}, got {value}")
            return default
        return int(value)

    def decimal(self, name: str, default: Decimal, above: Decimal, hi: Decimal) -> Decimal:
        """A number with at most two fraction digits (YANG decimal64, fraction-digits 2).

        TOML gives a binary float; ``str()`` of it is the shortest text that reads back to the
        same float, so ``2.5`` becomes Decimal("2.5") and not 2.5000000000000001...
        """
        self._known.append(name)
        value = self._data.get(name, _MISSING)
        if value is _MISSING:
            return default
        if type(value) not in (int, float):
            self.error(name, f"expected a number, got {describe(value)}")
            return default
        number = Decimal(str(value))
        if not number.is_finite():
            problem = "must be a finite number"
        elif number <= above:
            problem = f"must be greater than {above}"
        elif number > hi:
            problem = f"must be at most {hi}"
        elif number != number.quantize(Decimal("0.01")):
            problem = "at most two digits after the decimal point"
        else:
            return number.quantize(Decimal("0.01"))
        self.error(name, f"{problem}, got {value}")
        return default

    def choice(self, name: str, enum_type: type[E], default: E) -> E:
        choices = ", ".join(repr(m.value) for m in enum_type)
        value = self._take(name, f"a string, one of {choices}", str)
        if value is _MISSING:
            return default
        try:
            return enum_type(value)
        except ValueError:
            hint = difflib.get_close_matches(value, [str(m.value) for m in enum_type], n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            self.error(name, f"must be one of {choices}, got {value!r}{suggestion}")
            return default

    def strings(self, name: str, default: Sequence[str]) -> list[tuple[str, str]]:
        """An array of non-empty strings, as (key path of each element, value) pairs."""
        value = self._take(name, "an array of strings", list)
        if value is _MISSING:
            value = list(default)
        items = []
        for index, item in enumerate(value):
            item_key = f"{self.key(name)}[{index}]"
            if type(item) is not str:
                self.error_at(item_key, f"expected a string, got {describe(item)}")
            elif not item:
                self.error_at(item_key, "must not be empty")
            else:
                items.append((item_key, item))
        return items

    def opt_path(self, name: str, base_dir: Path | None, *, empty_ok: bool = False) -> Path | None:
        """A path; a relative one is taken relative to the config file's directory."""
        value = self.opt_string(name, empty_ok=empty_ok)
        if value is None:
            return None
        path = Path(value)
        return base_dir / path if base_dir is not None and not path.is_absolute() else path

    def parsed(self, name: str, parse: Callable[[str], T], *, empty_ok: bool = False) -> T | None:
        """An optional string turned into a value by ``parse``; None when absent or wrong."""
        text = self.opt_string(name, empty_ok=empty_ok)
        return None if text is None else self._parse(self.key(name), text, parse)

    def parsed_list(
        self, name: str, parse: Callable[[str], T], default: Sequence[str] = ()
    ) -> list[tuple[str, T]]:
        """An array of strings, each turned into a value: (key path of the element, value)."""
        items = []
        for key, text in self.strings(name, default):
            value = self._parse(key, text, parse)
            if value is not None:
                items.append((key, value))
        return items

    def _parse(self, key: str, text: str, parse: Callable[[str], T]) -> T | None:
        try:
            return parse(text)
        except ValueError as exc:
            self.error_at(key, str(exc))
            return None

    def min_max_default(
        self, name: str, defaults: dict[str, N], read: Callable[[Table, str, N], N]
    ) -> dict[str, N]:
        """A ``{ min, max, default }`` table; parts not given keep ``defaults``. The result must
        hold min <= default <= max; a violation blames the part the operator wrote."""
        shape = ", ".join(f"{part} = {value}" for part, value in defaults.items())
        p = self.table(name, f"a table such as {{ {shape} }}")
        given = [part for part in defaults if p.has(part)]
        before = p.error_count
        parts = {part: read(p, part, value) for part, value in defaults.items()}
        p.finish()
        if p.error_count != before:
            return parts  # a part already reported would only add a confusing second error
        for lo, hi in (("min", "default"), ("default", "max"), ("min", "max")):
            if parts[lo] > parts[hi]:
                shown = {k: f"{k} {parts[k]}{'' if k in given else ' (built-in)'}" for k in parts}
                p.error(
                    hi if hi in given else lo,
                    f"{shown[lo]} is greater than {shown[hi]}; expected min <= default <= max",
                )
                break
        return parts

    def table(self, name: str, expected: str = "a table") -> Table:
        value = self._take(name, expected, dict)
        return Table({} if value is _MISSING else value, self.key(name), self._errors)

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``); each element's path is ``name[i]``."""
        self._known.append(name)
        value = self._data.get(name, [])
        if type(value) is not list:
            self.error(name, f"expected an array of tables ([[{name}]]), got {describe(value)}")
            return []
        result = []
        for index, item in enumerate(value):
            path = f"{self.key(name)}[{index}]"
            if type(item) is dict:
                result.append(Table(item, path, self._errors))
            else:
                self.error_at(path, f"expected a table, got {describe(item)}")
        return result

    def finish(self) -> None:
        """Report keys nobody asked for: a typo must not silently fall back to a default."""
        for name in self._data:
            if name in self._known:
                continue
            hint = difflib.get_close_matches(name, self._known, n=1, cutoff=0.6)
            if hint:
                self.error(name, f"unknown key; did you mean {hint[0]!r}?")
            else:
                known = ", ".join(dict.fromkeys(self._known))
                self.error(name, f"unknown key; known keys here: {known}")
