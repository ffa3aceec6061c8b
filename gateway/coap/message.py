"""The CoAP message value: :class:`CoapMessage`, its option accessors and builders.

A :class:`CoapMessage` is a frozen value checked in its constructor; it knows nothing of
bytes on the wire. The UDP form lives in :mod:`gateway.coap.udp_codec`, the TCP/TLS form in
:mod:`gateway.coap.tcp_framing`; both build messages through :func:`unchecked_message` after
checking the fields themselves, which is why that one skips the constructor's checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.coap.codes import (
    EMPTY,
    MessageType,
    format_code,
    is_request_code,
    is_response_code,
)
from gateway.coap.errors import BadOptionError, CoapUsageError
from gateway.coap.options import (
    OPTION_SPECS,
    Block,
    OptionNumber,
    decode_uint,
    encode_uint,
    option_name,
)

#: RFC 7252 §4.6: without knowledge of the path MTU, messages should fit 1152 bytes.
DEFAULT_MAX_MESSAGE_SIZE = 1152
_MAX_OPTION_LENGTH = 65535 + 269  # largest value the 14 extended form can express
MAX_OPTION_NUMBER = 65535

Option = tuple[int, bytes]


class RequestOptions(NamedTuple):
    """What ``CoapMessage.request_options`` reads in one pass."""

    uri_path: tuple[str, ...]
    uri_query: tuple[str, ...]
    content_format: int | None
    observe: int | None
    if_match: tuple[bytes, ...]
    hop_limit: int | None  # None when absent or invalid (RFC 8768: one byte, 1-255)


#: ``request_options`` by option tuple: the options of the requests a client repeats
#: (heartbeats, refreshes) arrive as the same tuple (``udp_codec``), parsed once. Bounded.
_request_options: dict[tuple[Option, ...], RequestOptions] = {}
_REQUEST_OPTIONS = 1024

_URI_PATH, _URI_QUERY, _IF_MATCH = OptionNumber.URI_PATH, OptionNumber.URI_QUERY, \
    OptionNumber.IF_MATCH
_CONTENT_FORMAT, _OBSERVE, _HOP_LIMIT = OptionNumber.CONTENT_FORMAT, OptionNumber.OBSERVE, \
    OptionNumber.HOP_LIMIT

@dataclass(frozen=True, slots=True, repr=False)
class CoapMessage:
    """One CoAP message.

    ``options`` are ``(number, value)`` pairs sorted by number; the constructor sorts them
    stably, so repeated options keep their order. ``mtype`` and ``mid`` belong to the UDP
    message layer: over TCP they are ignored, and a message layer overwrites them (and the
    token, when it generates one) on sending.
    """

    mtype: MessageType | None = None
    code: int = EMPTY
    mid: int = 0
    token: bytes = b""
    options: tuple[Option, ...] = ()
    payload: bytes = b""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.mtype is not None and type(self.mtype) is not MessageType:
            try:
                set_(self, "mtype", MessageType(self.mtype))
            except ValueError:
                raise CoapUsageError(f"invalid message type {self.mtype!r}") from None
        if type(self.code) is not int:
            set_(self, "code", _checked_int(self.code, "code"))
        if not 0 <= self.code <= 255:
            raise CoapUsageError(f"code out of range: {self.code}")
        if not 0 <= _checked_int(self.mid, "mid") <= 0xFFFF:
            raise CoapUsageError(f"message ID out of range: {self.mid}")
        set_(self, "token", _checked_bytes(self.token, "token"))
        if len(self.token) > 8:
            raise CoapUsageError(f"token longer than 8 bytes: {self.token!r}")
        set_(self, "payload", _checked_bytes(self.payload, "payload"))
        set_(self, "options", _checked_options(self.options))

    # --- generic option access ---------------------------------------------------------------

    def option(self, number: int) -> bytes | None:
        """The first value of an option, or None when absent."""
        for n, value in self.options:
            if n == number:
                return value
            if n > number:
                break
        return None

    def option_values(self, number: int) -> tuple[bytes, ...]:
        return tuple(value for n, value in self.options if n == number)

    def has_option(self, number: int) -> bool:
        return self.option(number) is not None

    def uint_option(self, number: int, max_length: int = 4) -> int | None:
        value = self.option(number)
        if value is None:
            return None
        if len(value) > max_length:
            raise BadOptionError(number, f"uint longer than {max_length} bytes")
        return decode_uint(value)

    def _strings(self, number: int) -> tuple[str, ...]:
        try:
            return tuple(value.decode("utf-8") for n, value in self.options if n == number)
        except UnicodeDecodeError:
            raise BadOptionError(number, "not UTF-8") from None

    def _block(self, number: int) -> Block | None:
        value = self.option(number)
        if value is None:
            return None
        if len(value) > 3:
            raise BadOptionError(number, "longer than 3 bytes")
        return Block.decode(value)

    def request_options(self) -> RequestOptions:
        """The options a DOTS server reads from every request, in one pass over them (the
        typed accessors below scan once each; this runs for every request). Same values and
        errors as the accessors, except an invalid Hop-Limit, which is None here."""
        cached = _request_options.get(self.options)
        if cached is not None:
            return cached
        path: list[bytes] = []
        query: list[bytes] = []
        if_match: list[bytes] = []
        content_format = observe = hop = None
        for number, value in self.options:
            if number == _URI_PATH:
                path.append(value)
            elif number == _URI_QUERY:
                query.append(value)
            elif number == _IF_MATCH:
                if_match.append(value)
            elif number == _CONTENT_FORMAT:
                if content_format is None:
                    content_format = value
            elif number == _OBSERVE:
                if observe is None:
                    observe = value
            elif number == _HOP_LIMIT and hop is None:
                hop = value
        try:
            uri_path = tuple(v.decode("utf-8") for v in path)
        except UnicodeDecodeError:
            raise BadOptionError(OptionNumber.URI_PATH, "not UTF-8") from None
        try:
            uri_query = tuple(v.decode("utf-8") for v in query)
        except UnicodeDecodeError:
            raise BadOptionError(OptionNumber.URI_QUERY, "not UTF-8") from None
        if content_format is not None and len(content_format) > 2:
            raise BadOptionError(OptionNumber.CONTENT_FORMAT, "uint longer than 2 bytes")
        if observe is not None and len(observe) > 3:
            raise BadOptionError(OptionNumber.OBSERVE, "uint longer than 3 bytes")
        found = RequestOptions(
            uri_path, uri_query,
            None if content_format is None else decode_uint(content_format),
            None if observe is None else decode_uint(observe),
            tuple(if_match),
            hop[0] if hop is not None and len(hop) == 1 and hop[0] else None)
        if len(_request_options) >= _REQUEST_OPTIONS:
            _request_options.clear()
        _request_options[self.options] = found
        return found

    def has_any_option(self, numbers: frozenset[int]) -> bool:
        """Whether any of these options is present (one scan, for several absent ones)."""
        for number, _ in self.options:
            if number in numbers:
                return True
        return False

    # --- typed accessors for the options DOTS uses -------------------------------------------

    @property
    def uri_path(self) -> tuple[str, ...]:
        return self._strings(OptionNumber.URI_PATH)

    @property
    def uri_query(self) -> tuple[str, ...]:
        return self._strings(OptionNumber.URI_QUERY)

    @property
    def location_path(self) -> tuple[str, ...]:
        return self._strings(OptionNumber.LOCATION_PATH)

    @property
    def uri_host(self) -> str | None:
        hosts = self._strings(OptionNumber.URI_HOST)
        return hosts[0] if hosts else None

    @property
    def uri_port(self) -> int | None:
        return self.uint_option(OptionNumber.URI_PORT, 2)

    @property
    def content_format(self) -> int | None:
        return self.uint_option(OptionNumber.CONTENT_FORMAT, 2)

    @property
    def accept(self) -> int | None:
        return self.uint_option(OptionNumber.ACCEPT, 2)

    @property
    def observe(self) -> int | None:
        """Observe value (RFC 7641): 0 register / 1 deregister in requests, a sequence number
        (0 to 2**24-1) in notifications."""
        return self.uint_option(OptionNumber.OBSERVE, 3)

    @property
    def max_age(self) -> int | None:
        """Max-Age in seconds, None when absent (then CoAP's default of 60 s applies)."""
        return self.uint_option(OptionNumber.MAX_AGE, 4)

    @property
    def if_match(self) -> tuple[bytes, ...]:
        return self.option_values(OptionNumber.IF_MATCH)

    @property
    def etag(self) -> bytes | None:
        """The ETag of a response (requests may carry several: :attr:`etags`)."""
        return self.option(OptionNumber.ETAG)

    @property
    def etags(self) -> tuple[bytes, ...]:
        return self.option_values(OptionNumber.ETAG)

    @property
    def block1(self) -> Block | None:
        return self._block(OptionNumber.BLOCK1)

    @property
    def block2(self) -> Block | None:
        return self._block(OptionNumber.BLOCK2)

    @property
    def q_block1(self) -> Block | None:
        return self._block(OptionNumber.Q_BLOCK1)

    @property
    def q_block2(self) -> tuple[Block, ...]:
        """Q-Block2 may repeat in a request for missing blocks (RFC 9177 §4.4)."""
        out = []
        for value in self.option_values(OptionNumber.Q_BLOCK2):
            if len(value) > 3:
                raise BadOptionError(OptionNumber.Q_BLOCK2, "longer than 3 bytes")
            out.append(Block.decode(value))
        return tuple(out)

    @property
    def size1(self) -> int | None:
        return self.uint_option(OptionNumber.SIZE1, 4)

    @property
    def size2(self) -> int | None:
        return self.uint_option(OptionNumber.SIZE2, 4)

    @property
    def hop_limit(self) -> int | None:
        """Hop-Limit (RFC 8768): one byte, 1-255."""
        value = self.option(OptionNumber.HOP_LIMIT)
        if value is None:
            return None
        if len(value) != 1 or value[0] == 0:
            raise BadOptionError(OptionNumber.HOP_LIMIT, "must be one byte from 1 to 255")
        return value[0]

    @property
    def no_response(self) -> int | None:
        """No-Response suppression bits (RFC 7967)."""
        return self.uint_option(OptionNumber.NO_RESPONSE, 1)

    # --- builders ----------------------------------------------------------------------------

    @classmethod
    def request(
        cls,
        code: int,
        path: Sequence[str] = (),
        *,
        query: Sequence[str] = (),
        content_format: int | None = None,
        accept: int | None = None,
        observe: int | None = None,
        if_match: Sequence[bytes] = (),
        hop_limit: int | None = None,
        uri_host: str | None = None,
        uri_port: int | None = None,
        block1: Block | None = None,
        block2: Block | None = None,
        size1: int | None = None,
        no_response: int | None = None,
        options: Iterable[Option] = (),
        payload: bytes = b"",
        token: bytes = b"",
        mtype: MessageType | None = MessageType.CON,
    ) -> CoapMessage:
        """A request; each path segment becomes one Uri-Path option, each query item one
        Uri-Query option (``"cuid=abc"``). ``mtype``/``mid``/empty ``token`` are filled in
        by the message layer that sends it."""
        if not is_request_code(int(code)):
            raise CoapUsageError(f"{format_code(int(code))} is not a request code")
        opts: list[Option] = list(options)
        if uri_host is not None:
            opts.append((OptionNumber.URI_HOST, uri_host.encode("utf-8")))
        if observe is not None:
            opts.append((OptionNumber.OBSERVE, encode_uint(observe)))
        if uri_port is not None:
            opts.append((OptionNumber.URI_PORT, encode_uint(uri_port)))
        opts.extend((OptionNumber.IF_MATCH, bytes(value)) for value in if_match)
        opts.extend((OptionNumber.URI_PATH, segment.encode("utf-8")) for segment in path)
        if content_format is not None:
            opts.append((OptionNumber.CONTENT_FORMAT, encode_uint(content_format)))
        opts.extend((OptionNumber.URI_QUERY, item.encode("utf-8")) for item in query)
        if hop_limit is not None:
            if not 1 <= hop_limit <= 255:
                raise CoapUsageError(f"Hop-Limit out of range: {hop_limit}")
            opts.append((OptionNumber.HOP_LIMIT, bytes((hop_limit,))))
        if accept is not None:
            opts.append((OptionNumber.ACCEPT, encode_uint(accept)))
        if block2 is not None:
            opts.append((OptionNumber.BLOCK2, block2.encode()))
        if block1 is not None:
            opts.append((OptionNumber.BLOCK1, block1.encode()))
        if size1 is not None:
            opts.append((OptionNumber.SIZE1, encode_uint(size1)))
        if no_response is not None:
            opts.append((OptionNumber.NO_RESPONSE, encode_uint(no_response)))
        return cls(mtype, int(code), 0, token, tuple(opts), payload)

    def response(
        self,
        code: int,
        *,
        payload: bytes = b"",
        content_format: int | None = None,
        max_age: int | None = None,
        observe: int | None = None,
        etag: bytes | None = None,
        block2: Block | None = None,
        size2: int | None = None,
        options: Iterable[Option] = (),
    ) -> CoapMessage:
        """A response to this request, carrying its token. Type and message ID are chosen by
        the message layer when it is sent (piggybacked, separate, or over TCP)."""
        if not is_response_code(int(code)):
            raise CoapUsageError(f"{format_code(int(code))} is not a response code")
        opts: list[Option] = list(options)
        if etag is not None:
            opts.append((OptionNumber.ETAG, bytes(etag)))
        if observe is not None:
            opts.append((OptionNumber.OBSERVE, encode_uint(observe & 0xFFFFFF)))
        if content_format is not None:
            opts.append((OptionNumber.CONTENT_FORMAT, encode_uint(content_format)))
        if max_age is not None:
            opts.append((OptionNumber.MAX_AGE, encode_uint(max_age)))
        if block2 is not None:
            opts.append((OptionNumber.BLOCK2, block2.encode()))
        if size2 is not None:
            opts.append((OptionNumber.SIZE2, encode_uint(size2)))
        if not options:
            # Only the options added above, in ascending order and well formed: skip the
            # constructor's checks (a few percent of a request's CPU).
            return unchecked_message(None, int(code), 0, self.token, tuple(opts),
                                     _checked_bytes(payload, "payload"))
        return CoapMessage(None, int(code), 0, self.token, tuple(opts), payload)

    def with_options(self, *options: Option) -> CoapMessage:
        """A copy with these options added after existing ones of the same number."""
        return CoapMessage(self.mtype, self.code, self.mid, self.token,
                           self.options + tuple(options), self.payload)

    def without_options(self, *numbers: int) -> CoapMessage:
        drop = set(numbers)
        return CoapMessage(self.mtype, self.code, self.mid, self.token,
                           tuple(o for o in self.options if o[0] not in drop), self.payload)

    def replace_option(self, number: int, *values: bytes) -> CoapMessage:
        """A copy where ``number`` occurs exactly with ``values`` (none: removed)."""
        kept = tuple(o for o in self.options if o[0] != number)
        return CoapMessage(self.mtype, self.code, self.mid, self.token,
                           kept + tuple((number, v) for v in values), self.payload)

    # --- presentation ------------------------------------------------------------------------

    def __repr__(self) -> str:
        head = [self.mtype.name] if self.mtype is not None else []
        head.append(format_code(self.code))
        if self.mtype is not None:
            head.append(f"mid={self.mid}")
        head.append(f"token={self.token.hex() or '-'}")
        opts = ", ".join(f"{option_name(n, self.code if self.code >= 224 else None)}="
                         f"{_show_value(n, v)}" for n, v in self.options)
        if opts:
            head.append(f"[{opts}]")
        if self.payload:
            head.append(f"payload={len(self.payload)}B")
        return f"<CoapMessage {' '.join(head)}>"


def _show_value(number: int, value: bytes) -> str:
    spec = OPTION_SPECS.get(number)
    if spec is not None and spec.format.value == "string":
        return repr(value.decode("utf-8", "replace"))
    if spec is not None and spec.format.value == "uint" and len(value) <= 4:
        return str(decode_uint(value))
    return value.hex() or "''"


def _checked_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CoapUsageError(f"{name} must be an int, not {type(value).__name__}")
    return int(value)


def _checked_bytes(value: object, name: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise CoapUsageError(f"{name} must be bytes, not {type(value).__name__}")


def _checked_options(options: object) -> tuple[Option, ...]:
    if not isinstance(options, (tuple, list)):
        raise CoapUsageError(f"options must be a tuple of pairs, not {type(options).__name__}")
    out: list[Option] = []
    previous = -1
    ordered = True
    for pair in options:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise CoapUsageError(f"an option must be a (number, bytes) pair: {pair!r}")
        number, value = pair
        if type(number) is not int:
            number = _checked_int(number, "option number")
        if not 0 <= number <= MAX_OPTION_NUMBER:
            raise CoapUsageError(f"option number out of range: {number}")
        value = _checked_bytes(value, f"value of option {number}")
        if len(value) > _MAX_OPTION_LENGTH:
            raise CoapUsageError(f"value of option {number} too long: {len(value)} bytes")
        if number < previous:
            ordered = False
        previous = number
        out.append((number, value))
    if not ordered:
        out.sort(key=lambda pair: pair[0])  # stable: repeated options keep their order
    return tuple(out)


def unchecked_message(mtype: MessageType | None, code: int, mid: int, token: bytes,
                      options: tuple[Option, ...], payload: bytes) -> CoapMessage:
    """Build a message from fields a decoder has already checked (skips validation)."""
    msg = _new(CoapMessage)
    _set(msg, "mtype", mtype)
    _set(msg, "code", code)
    _set(msg, "mid", mid)
    _set(msg, "token", token)
    _set(msg, "options", options)
    _set(msg, "payload", payload)
    return msg


_new = object.__new__
_set = object.__setattr__


def unknown_critical_options(msg: CoapMessage, known: set[int] | frozenset[int]) -> list[int]:
    """Critical options of ``msg`` whose number is not in ``known``, sorted, each once.

    RFC 7252 §5.4.1: such an option in a CON request calls for 4.02 (Bad Option); in a
    response or a NON message the message is rejected. The message layers also treat known
    options with malformed or repeated values as unrecognized (see
    :func:`gateway.coap.options.check_options`).
    """
    return sorted({n for n, _ in msg.options if n & 1 and n not in known})

