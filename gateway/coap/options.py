"""CoAP option numbers, value formats and the rules for unknown or malformed options.

Options travel as ``(number, bytes)`` pairs; this module knows what the numbers mean: their
format and length limits (RFC 7252 §5.4.4, §5.10), which ones may repeat, the uint and Block
value codecs, and the separate option space of the RFC 8323 signaling messages.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


class OptionNumber(enum.IntEnum):
    """Option numbers from the CoAP registry that a DOTS agent meets (RFC 7252 §12.2)."""

    IF_MATCH = 1
    URI_HOST = 3
    ETAG = 4
    IF_NONE_MATCH = 5
    OBSERVE = 6  # RFC 7641
    URI_PORT = 7
    LOCATION_PATH = 8
    URI_PATH = 11
    CONTENT_FORMAT = 12
    MAX_AGE = 14
    URI_QUERY = 15
    HOP_LIMIT = 16  # RFC 8768
    ACCEPT = 17
    Q_BLOCK1 = 19  # RFC 9177
    LOCATION_QUERY = 20
    BLOCK2 = 23  # RFC 7959
    BLOCK1 = 27  # RFC 7959
    SIZE2 = 28  # RFC 7959
    Q_BLOCK2 = 31  # RFC 9177
    PROXY_URI = 35
    PROXY_SCHEME = 39
    SIZE1 = 60
    NO_RESPONSE = 258  # RFC 7967


def is_critical(number: int) -> bool:
    """Odd option numbers are critical (RFC 7252 §5.4.1, §5.4.6)."""
    return bool(number & 1)


class Format(enum.Enum):
    """Option value formats (RFC 7252 §3.2)."""

    EMPTY = "empty"
    OPAQUE = "opaque"
    UINT = "uint"
    STRING = "string"


@dataclass(frozen=True, slots=True)
class OptionSpec:
    name: str
    format: Format
    min_length: int
    max_length: int
    repeatable: bool = False

    def value_ok(self, value: bytes) -> bool:
        """Whether one occurrence conforms to the format (RFC 7252 §5.4.3)."""
        if not self.min_length <= len(value) <= self.max_length:
            return False
        if self.format is Format.STRING:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return False
        return True


_E, _O, _U, _S = Format.EMPTY, Format.OPAQUE, Format.UINT, Format.STRING

#: Formats of the options in :class:`OptionNumber` (RFC 7252 Table 4 and the RFCs named there).
OPTION_SPECS: Mapping[int, OptionSpec] = {
    OptionNumber.IF_MATCH: OptionSpec("If-Match", _O, 0, 8, repeatable=True),
    OptionNumber.URI_HOST: OptionSpec("Uri-Host", _S, 1, 255),
    OptionNumber.ETAG: OptionSpec("ETag", _O, 1, 8, repeatable=True),  # repeatable in requests
    OptionNumber.IF_NONE_MATCH: OptionSpec("If-None-Match", _E, 0, 0),
    OptionNumber.OBSERVE: OptionSpec("Observe", _U, 0, 3),
    OptionNumber.URI_PORT: OptionSpec("Uri-Port", _U, 0, 2),
    OptionNumber.LOCATION_PATH: OptionSpec("Location-Path", _S, 0, 255, repeatable=True),
    OptionNumber.URI_PATH: OptionSpec("Uri-Path", _S, 0, 255, repeatable=True),
    OptionNumber.CONTENT_FORMAT: OptionSpec("Content-Format", _U, 0, 2),
    OptionNumber.MAX_AGE: OptionSpec("Max-Age", _U, 0, 4),
    OptionNumber.URI_QUERY: OptionSpec("Uri-Query", _S, 0, 255, repeatable=True),
    OptionNumber.HOP_LIMIT: OptionSpec("Hop-Limit", _U, 1, 1),  # RFC 8768 §3: length 1
    OptionNumber.ACCEPT: OptionSpec("Accept", _U, 0, 2),
    OptionNumber.Q_BLOCK1: OptionSpec("Q-Block1", _U, 0, 3),
    OptionNumber.LOCATION_QUERY: OptionSpec("Location-Query", _S, 0, 255, repeatable=True),
    OptionNumber.BLOCK2: OptionSpec("Block2", _U, 0, 3),
    OptionNumber.BLOCK1: OptionSpec("Block1", _U, 0, 3),
    OptionNumber.SIZE2: OptionSpec("Size2", _U, 0, 4),
    # RFC 9177 §4.4: a GET may repeat Q-Block2 to ask for several missing blocks.
    OptionNumber.Q_BLOCK2: OptionSpec("Q-Block2", _U, 0, 3, repeatable=True),
    OptionNumber.PROXY_URI: OptionSpec("Proxy-Uri", _S, 1, 1034),
    OptionNumber.PROXY_SCHEME: OptionSpec("Proxy-Scheme", _S, 1, 255),
    OptionNumber.SIZE1: OptionSpec("Size1", _U, 0, 4),
    OptionNumber.NO_RESPONSE: OptionSpec("No-Response", _U, 0, 1),
}

#: What the message layers accept by default: every option a DOTS role may meet. Proxy-Uri
#: and Proxy-Scheme are left out (we are not a forward proxy), so they draw 4.02. A role that
#: does not implement block-wise transfer should pass a set without Block1/Q-Block1.
DEFAULT_KNOWN_OPTIONS: frozenset[int] = frozenset(OPTION_SPECS) - {
    OptionNumber.PROXY_URI,
    OptionNumber.PROXY_SCHEME,
}


class SignalCode(enum.IntEnum):
    """Signaling codes of CoAP over reliable transports (RFC 8323 §5, 7.xx)."""

    CSM = 225  # 7.01
    PING = 226  # 7.02
    PONG = 227  # 7.03
    RELEASE = 228  # 7.04
    ABORT = 229  # 7.05


# Signaling options are numbered per signaling code (RFC 8323 §5.2).
CSM_MAX_MESSAGE_SIZE = 2
CSM_BLOCK_WISE_TRANSFER = 4
PING_CUSTODY = 2
RELEASE_ALTERNATIVE_ADDRESS = 2
RELEASE_HOLD_OFF = 4
ABORT_BAD_CSM_OPTION = 2

#: Option formats per signaling code (RFC 8323 §5.3-5.6).
SIGNALING_OPTION_SPECS: Mapping[int, Mapping[int, OptionSpec]] = {
    SignalCode.CSM: {
        CSM_MAX_MESSAGE_SIZE: OptionSpec("Max-Message-Size", _U, 0, 4),
        CSM_BLOCK_WISE_TRANSFER: OptionSpec("Block-Wise-Transfer", _E, 0, 0),
    },
    SignalCode.PING: {PING_CUSTODY: OptionSpec("Custody", _E, 0, 0)},
    SignalCode.PONG: {PING_CUSTODY: OptionSpec("Custody", _E, 0, 0)},
    SignalCode.RELEASE: {
        RELEASE_ALTERNATIVE_ADDRESS: OptionSpec("Alternative-Address", _S, 1, 255,
                                                repeatable=True),
        RELEASE_HOLD_OFF: OptionSpec("Hold-Off", _U, 0, 3),
    },
    SignalCode.ABORT: {ABORT_BAD_CSM_OPTION: OptionSpec("Bad-CSM-Option", _U, 0, 2)},
}


def option_name(number: int, code: int | None = None) -> str:
    """A readable name for logs and diagnostics, e.g. ``Uri-Path(11)``."""
    specs = SIGNALING_OPTION_SPECS.get(code, OPTION_SPECS) if code is not None else OPTION_SPECS
    spec = specs.get(number)
    return f"{spec.name}({number})" if spec else f"option {number}"


def option_names(numbers: list[int], limit: int = 8) -> str:
    """Diagnostic text naming the options, bounded in length whatever the peer sent."""
    names = ", ".join(option_name(n) for n in numbers[:limit])
    return names + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def check_options(
    options: Iterable[tuple[int, bytes]],
    known: frozenset[int] | set[int],
    specs: Mapping[int, OptionSpec] = OPTION_SPECS,
) -> tuple[list[int], list[int]]:
    """Classify the options a peer sent that we must not act on.

    Returns ``(bad_critical, ignored_elective)``, each a sorted list of option numbers without
    repeats. An option is bad when its number is not in ``known``, when a known option's
    value breaks its format (RFC 7252 §5.4.3), or when a non-repeatable option occurs again
    (the extra occurrences, RFC 7252 §5.4.5). A bad critical option makes the whole message
    unacceptable (RFC 7252 §5.4.1); bad elective ones are silently ignored. Unknown elective
    options are not reported at all: nothing reads them, so they may stay in the message.
    ``options`` must be sorted by number, as in every :class:`CoapMessage`.
    """
    bad: list[int] = []
    ignored: list[int] = []
    previous = -1
    for number, value in options:
        repeated = number == previous
        previous = number
        if number in known:
            spec = specs.get(number)
            if spec is None:
                continue
            if spec.min_length <= len(value) <= spec.max_length and (
                spec.repeatable or not repeated
            ):
                if spec.format is not Format.STRING:
                    continue
                try:
                    value.decode("utf-8")
                    continue
                except UnicodeDecodeError:
                    pass
        elif not number & 1:
            continue  # RFC 7252 §5.4.1: unrecognized elective options are silently ignored
        target = bad if number & 1 else ignored
        if not target or target[-1] != number:
            target.append(number)
    return bad, ignored


_NONE_TO_REFUSE: tuple[list[int], list[int]] = ([], [])
#: Option tuples with nothing to refuse, by the set of known options they were checked
#: against: ``check_options`` once per distinct option block (see ``udp_codec``). Bounded.
_acceptable: dict[tuple[tuple[tuple[int, bytes], ...], frozenset[int]], bool] = {}
_ACCEPTABLE = 1024


def options_to_refuse(
    options: tuple[tuple[int, bytes], ...], known: frozenset[int]
) -> tuple[list[int], list[int]]:
    """``check_options`` with the default specs, remembering option tuples that pass (the
    same few on every request a client repeats). The lists returned must not be changed."""
    key = (options, known)
    if key in _acceptable:
        return _NONE_TO_REFUSE
    bad, ignored = check_options(options, known)
    if not bad and not ignored:
        if len(_acceptable) >= _ACCEPTABLE:
            _acceptable.clear()
        _acceptable[key] = True
    return bad, ignored


# --- value codecs ------------------------------------------------------------------------------


def encode_uint(value: int) -> bytes:
    """Minimal big-endian bytes; 0 is the empty string (RFC 7252 §3.2)."""
    if value < 0:
        raise ValueError(f"uint option value must not be negative: {value}")
    return value.to_bytes((value.bit_length() + 7) >> 3, "big")


def decode_uint(value: bytes) -> int:
    """Leading zero bytes are accepted, as RFC 7252 §3.2 requires of a recipient."""
    return int.from_bytes(value, "big")


@dataclass(frozen=True, slots=True)
class Block:
    """A Block1/Block2/Q-Block value (RFC 7959 §2.2): block number, more flag, size exponent."""

    num: int
    more: bool
    szx: int

    def __post_init__(self) -> None:
        if not 0 <= self.num < 1 << 20:
            raise ValueError(f"block number out of range: {self.num}")
        if not 0 <= self.szx <= 7:
            raise ValueError(f"block SZX out of range: {self.szx}")

    @property
    def size(self) -> int:
        """Block size in bytes; SZX 7 is BERT over reliable transports (RFC 8323 §6)."""
        return 1 << (min(self.szx, 6) + 4)

    @property
    def offset(self) -> int:
        return self.num * self.size

    def encode(self) -> bytes:
        return encode_uint(self.num << 4 | int(self.more) << 3 | self.szx)

    @classmethod
    def decode(cls, value: bytes) -> Block:
        raw = decode_uint(value)
        return cls(raw >> 4, bool(raw & 0x08), raw & 0x07)
