"""CBOR and JSON codecs for DOTS signal-channel messages; the only cbor2 user.

Bytes become a *tree* (nested dicts keyed by the integer CBOR keys, values checked against
the YANG types of Table 5), and ``gateway.dots.tree`` makes the tree a typed message.
JSON uses the YANG names of RFC 7951, as in the RFC's examples, so people can read and
write requests. Any decoding problem surfaces as a ``DotsProtocolError``; nothing else may
escape a decoder (property-tested).
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import io
import json
from collections.abc import Mapping
from typing import Any

import cbor2

from gateway.dots.codes import CBOR_TAG_DOTS
from gateway.dots.errors import MalformedPayload, UnknownRequiredKeys, safe_int
from gateway.dots.keys import BY_NAME, CHILDREN, KEYS, MESSAGE_KINDS, UINT_BOUNDS, KeyInfo, Kind
from gateway.dots.keys import is_comprehension_optional as _optional
from gateway.dots.model import Message
from gateway.dots.tree import message_from_tree, message_to_tree

Tree = dict[int, Any]

_CBOR_TAG_DECIMAL_FRACTION = 4
_CBOR_TAG_EPOCH_TIME = 1
_DECIMAL64_MANTISSA = 2**63
_HUNDREDTH = decimal.Decimal("0.01")
#: Deeper nesting than any DOTS message has; stops pathological inputs early.
_MAX_DEPTH = 16
_DOTS_TAG_HEADER = bytes([0xD9, CBOR_TAG_DOTS >> 8, CBOR_TAG_DOTS & 0xFF])


# --- bytes <-> plain CBOR objects -------------------------------------------------------------


def decode_cbor(data: bytes) -> Any:
    """Plain CBOR decoding of exactly one data item; any failure is ``MalformedPayload``.

    Every tag stays a raw ``CBORTag``: cbor2's own decoders would turn tag 1 into a
    datetime (mitigation-start must be a plain uint, RFC 9132 §4.4.2), tag 4 into a Decimal
    we cannot bound, and tags 28/29/36 into objects that cannot be re-encoded when a gateway
    relays an extension value. Duplicate map keys make a map invalid (RFC 8949 §5.6), and
    bytes after the item are an error because a body is one data item (RFC 8949 App. F).
    """
    if not data:
        raise MalformedPayload("empty payload where a DOTS CBOR body is required")
    if data[:3] == _DOTS_TAG_HEADER:
        data = data[3:]  # RFC 9132 §10.5: tag 271 may prefix the whole DOTS object
    stream = io.BytesIO(data)
    try:
        decoder = cbor2.CBORDecoder(
            stream, tag_hook=_keep_tag, semantic_decoders=_RAW_TAGS, allow_duplicate_keys=False,
            max_depth=_MAX_DEPTH + 8)
        item = decoder.decode()
    except RecursionError:
        raise MalformedPayload("CBOR nesting too deep") from None
    except Exception as exc:  # cbor2 raises many types (ValueError, OverflowError, ...)
        raise MalformedPayload(f"undecodable CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise MalformedPayload(f"{len(data) - stream.tell()} bytes after the CBOR data item")
    return item


def _keep_tag(tag: cbor2.CBORTag, _immutable: bool) -> cbor2.CBORTag:
    return tag


# Tags cbor2 6 decodes itself, handed back raw instead (the decoder gets the tag's content
# already decoded, and whether it must be immutable).
_RAW_TAGS = {
    number: (lambda value, _immutable, number=number: cbor2.CBORTag(number, value))
    # Bignums (2, 3) stay native: they re-encode to the same bytes.
    for number in (0, 1, *range(4, 64), 100, 256, 258, 260, 261, 1004, 55799)
}


def encode_cbor(obj: Any) -> bytes:
    """Deterministic encoding (RFC 8949 §4.2: shortest forms, sorted map keys)."""
    return cbor2.dumps(obj, canonical=True)


# --- plain CBOR objects -> checked tree ---------------------------------------------------------


def tree_from_cbor(obj: Any, *, kinds: frozenset[int] = MESSAGE_KINDS) -> Tree:
    """Check a decoded CBOR object against the key table and return the tree.

    ``kinds``: the top-level containers that make a message here (RFC 9244's telemetry
    bodies are checked with their own, ``gateway.dots.telemetry``).

    Unknown comprehension-optional keys are kept (so a gateway can relay them); unknown
    comprehension-required keys are collected over the whole message and reported together.
    """
    if isinstance(obj, cbor2.CBORTag) and obj.tag == CBOR_TAG_DOTS:
        obj = obj.value  # RFC 9132 §10.5: the tag may prefix the whole object
    unknown: list[int] = []
    tree = _map_from_cbor(obj, None, "message", unknown, 0)
    if unknown:
        raise UnknownRequiredKeys(unknown)
    _check_single_message(tree, kinds)
    return tree


def _map_from_cbor(
    obj: Any, parent: int | None, where: str, unknown: list[int], depth: int
) -> Tree:
    if depth > _MAX_DEPTH:
        raise MalformedPayload("CBOR nesting too deep")
    if not isinstance(obj, dict):
        raise MalformedPayload(f"{where}: expected a CBOR map, got {_cbor_type(obj)}")
    allowed = CHILDREN[parent]
    tree: Tree = {}
    for key, value in obj.items():
        if type(key) is not int:
            raise MalformedPayload(f"{where}: map keys must be integers, got {_cbor_type(key)}")
        info = KEYS.get(key)
        if info is None:
            if _optional(key):
                tree[key] = value
            else:
                unknown.append(key)
            continue
        if info.opaque and not info.comprehension_required and (
            key not in allowed or _major(value) not in info.kind.majors
        ):
            # RFC 9132 §6: a comprehension-optional key may be ignored; one we do not act
            # on, found where its RFC does not put it, is kept like an unknown one.
            tree[key] = value
            continue
        if key not in allowed:
            raise MalformedPayload(f"{where}: '{info.short_name}' (key {key}) is not allowed here")
        if info.opaque:
            tree[key] = _opaque_from_cbor(value, info)
        else:
            tree[key] = _value_from_cbor(value, info, unknown, depth + 1)
    return tree


def _opaque_from_cbor(value: Any, info: KeyInfo) -> Any:
    """A registered key we do not act on: its major type is checked, and its value kept as
    received (an empty array too), so that it re-encodes to what the peer sent."""
    if _major(value) not in info.kind.majors:
        raise MalformedPayload(
            f"{info.short_name} (key {info.key}, RFC {info.rfc}): expected CBOR major type "
            f"{'/'.join(map(str, info.kind.majors))}, got {_cbor_type(value)}"
        )
    return value


def _major(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return 7
    if isinstance(value, int):
        return 0 if value >= 0 else 1
    for major, types in ((2, (bytes, bytearray)), (3, str), (4, list), (5, dict),
                         (6, cbor2.CBORTag), (7, float)):
        if isinstance(value, types):
            return major
    return None


def _value_from_cbor(value: Any, info: KeyInfo, unknown: list[int], depth: int) -> Any:
    where = info.short_name
    if info.kind is Kind.CONTAINER:
        return _map_from_cbor(value, info.key, where, unknown, depth)
    if info.kind is Kind.LIST:
        if not isinstance(value, list):
            raise MalformedPayload(f"{where}: expected an array, got {_cbor_type(value)}")
        return [
            _map_from_cbor(entry, info.key, f"{where}[{i}]", unknown, depth)
            for i, entry in enumerate(value)
        ]
    if info.kind is Kind.LEAF_LIST:
        if not isinstance(value, list):
            raise MalformedPayload(f"{where}: expected an array, got {_cbor_type(value)}")
        assert info.item is not None
        return [_scalar_from_cbor(v, info.item, f"{where}[{i}]") for i, v in enumerate(value)]
    return _scalar_from_cbor(value, info.kind, where)


def _scalar_from_cbor(value: Any, kind: Kind, where: str) -> Any:
    if kind is Kind.STRING:
        if not isinstance(value, str):
            raise MalformedPayload(f"{where}: expected a text string, got {_cbor_type(value)}")
        return value
    if kind is Kind.BOOLEAN:
        if type(value) is not bool:
            raise MalformedPayload(f"{where}: expected true or false, got {_cbor_type(value)}")
        return value
    if kind is Kind.DECIMAL64:
        return _decimal_from_cbor(value, where)
    if kind is Kind.LIFETIME:
        # RFC 9132 §4.4.1.1: uint32, or -1 for indefinite; nothing else negative.
        if type(value) is not int or not (-1 <= value <= UINT_BOUNDS[Kind.UINT32]):
            raise MalformedPayload(f"{where}: expected a uint32 or -1, got {_describe(value)}")
        return value
    if isinstance(value, cbor2.CBORTag) and value.tag == _CBOR_TAG_EPOCH_TIME:
        raise MalformedPayload(f"{where}: CBOR tag 1 must be omitted (RFC 9132 §4.4.2)")
    bound = UINT_BOUNDS.get(kind, UINT_BOUNDS[Kind.UINT32])  # ENUM values are uint32-sized
    if type(value) is not int or not (0 <= value <= bound):
        raise MalformedPayload(
            f"{where}: expected an unsigned integer <= {bound}, got {_describe(value)}"
        )
    return value


def _decimal_from_cbor(value: Any, where: str) -> decimal.Decimal:
    """RFC 9132 Table 5: tag 4 (decimal fraction) ``[-2, mantissa]``."""
    if (isinstance(value, decimal.Decimal)):
        return _checked_decimal(value, where)  # from the JSON path
    if not (isinstance(value, cbor2.CBORTag) and value.tag == _CBOR_TAG_DECIMAL_FRACTION
            and isinstance(value.value, list | tuple) and len(value.value) == 2
            and all(type(v) is int for v in value.value)):
        raise MalformedPayload(
            f"{where}: expected a decimal64 (CBOR tag 4 [-2, mantissa]), got {_cbor_type(value)}"
        )
    exponent, mantissa = value.value
    # Bound both before building a Decimal: a huge exponent would make quantize() slow or fail.
    if not -18 <= exponent <= 18 or not -_DECIMAL64_MANTISSA <= mantissa < _DECIMAL64_MANTISSA:
        raise MalformedPayload(f"{where}: decimal out of the decimal64 range")
    return _checked_decimal(decimal.Decimal(mantissa).scaleb(exponent), where)


def _checked_decimal(value: decimal.Decimal, where: str) -> decimal.Decimal:
    try:
        quantized = value.quantize(_HUNDREDTH)
    except (ArithmeticError, ValueError):
        raise MalformedPayload(f"{where}: decimal out of range") from None
    if quantized != value or not value.is_finite():
        raise MalformedPayload(
            f"{where}: decimal64 with at most 2 fraction digits expected, got {value}"
        )
    if not -_DECIMAL64_MANTISSA <= int(quantized.scaleb(2)) < _DECIMAL64_MANTISSA:
        raise MalformedPayload(f"{where}: decimal out of the decimal64 range")
    return quantized


def _check_single_message(tree: Tree, allowed: frozenset[int] = MESSAGE_KINDS) -> None:
    kinds = [k for k in tree if k in CHILDREN[None]]
    if len(kinds) != 1 or kinds[0] not in allowed:
        found = ", ".join(KEYS[k].name for k in kinds) or "none"
        expected = ("mitigation-scope, signal-config, redirected-signal or heartbeat"
                    if allowed == MESSAGE_KINDS
                    else " or ".join(sorted(KEYS[k].name for k in allowed)))
        raise MalformedPayload(f"a DOTS message holds exactly one of {expected}; found {found}")


def _cbor_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, str):
        return "a text string"
    if isinstance(value, bytes | bytearray):
        return "a byte string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, cbor2.CBORTag):
        return f"tag {value.tag}"
    if value is None:
        return "null"
    return type(value).__name__


def _describe(value: Any) -> str:
    if type(value) is int:
        return safe_int(value)
    return _cbor_type(value)


# --- tree -> plain CBOR objects -----------------------------------------------------------------


def tree_to_cbor(tree: Mapping[int, Any]) -> dict[int, Any]:
    return {key: _value_to_cbor(key, value) for key, value in tree.items()}


def _value_to_cbor(key: int, value: Any) -> Any:
    info = KEYS.get(key)
    if info is None or info.opaque:
        return value  # a relayed comprehension-optional key, or one we do not act on
    if info.kind is Kind.CONTAINER:
        return tree_to_cbor(value)
    if info.kind is Kind.LIST:
        return [tree_to_cbor(entry) for entry in value]
    if info.kind is Kind.DECIMAL64:
        return cbor2.CBORTag(_CBOR_TAG_DECIMAL_FRACTION, [-2, int(value.scaleb(2))])
    if isinstance(value, list):
        return [int(v) if isinstance(v, int) else v for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)  # IntEnum members encode as plain numbers
    return value


# --- messages ----------------------------------------------------------------------------------


def decode_message(data: bytes) -> Message:
    """Bytes of an ``application/dots+cbor`` body -> typed message, or a DotsProtocolError."""
    if len(data) <= _MEMO_MAX_BYTES:
        return _decode_small(bytes(data))
    return message_from_tree(tree_from_cbor(decode_cbor(data)))


#: Heartbeats (7 bytes) and repeated small requests are byte-identical on every session:
#: decoding each distinct body once saves most of their CPU. Messages are frozen, so the
#: cached objects can be shared; errors are not cached (they raise again).
_MEMO_MAX_BYTES = 48


@functools.lru_cache(maxsize=512)
def _decode_small(data: bytes) -> Message:
    return message_from_tree(tree_from_cbor(decode_cbor(data)))


def encode_message(message: Message) -> bytes:
    return encode_cbor(tree_to_cbor(message_to_tree(message)))


# --- JSON (RFC 7951 names, as in the RFC's examples) --------------------------------------------


def tree_from_json(obj: Any, *, kinds: frozenset[int] = MESSAGE_KINDS) -> Tree:
    """JSON object (already parsed) -> checked tree, with the same errors as the CBOR path."""
    cbor_like = _json_map_to_cbor(obj, "message", 0)
    return tree_from_cbor(cbor_like, kinds=kinds)


def extension_tree_from_json(obj: Any, kinds: frozenset[int]) -> Tree:
    """JSON of a message of a later RFC (RFC 9244's telemetry bodies, whose values we keep
    whole) -> checked tree. Strict: a value that does not fit the key table is an error
    here, where the writer can fix it, not a value kept as written (as when relaying)."""
    if not isinstance(obj, dict):
        raise MalformedPayload("message: expected a JSON object")
    cbor_like: dict[int, Any] = {}
    for name, value in obj.items():
        info = _info_for_json_name(name)
        if info is None or info.key not in kinds:
            raise MalformedPayload(f"message: unexpected attribute {name!r}")
        cbor_like[info.key] = _opaque_from_json(value, info, 1)
    return tree_from_cbor(cbor_like, kinds=kinds)


def extension_value_from_json(name: str, value: Any) -> tuple[int, Any]:
    """One attribute of a later RFC by its JSON name -> (key, CBOR value), strictly."""
    info = _info_for_json_name(name)
    if info is None or not info.opaque:
        raise MalformedPayload(f"unknown extension attribute {name!r}")
    return info.key, _opaque_from_json(value, info, 1)


def _json_map_to_cbor(obj: Any, where: str, depth: int) -> dict[int, Any]:
    if depth > _MAX_DEPTH:
        raise MalformedPayload("JSON nesting too deep")
    if not isinstance(obj, dict):
        raise MalformedPayload(f"{where}: expected a JSON object")
    out: dict[int, Any] = {}
    for name, value in obj.items():
        info = _info_for_json_name(name)
        if info is None:
            if isinstance(name, str) and name.isascii() and name.isdigit() and len(name) <= 5:
                out[int(name)] = value  # an extension key written as its number
                continue
            raise MalformedPayload(f"{where}: unknown attribute {name!r}")
        out[info.key] = _json_value_to_cbor(value, info, depth + 1)
    return out


def _info_for_json_name(name: Any) -> KeyInfo | None:
    if not isinstance(name, str):
        return None
    info = BY_NAME.get(name)
    if info is None and ":" not in name:
        info = BY_NAME.get(f"ietf-dots-signal-channel:{name}")
    return info


def _json_value_to_cbor(value: Any, info: KeyInfo, depth: int) -> Any:
    where = info.short_name
    if info.opaque:
        try:
            return _opaque_from_json(value, info, depth)
        except MalformedPayload:
            if info.comprehension_required:
                raise
            return value  # an optional key that does not fit its table entry: kept as is
    if info.kind is Kind.CONTAINER:
        return _json_map_to_cbor(value, where, depth)
    if info.kind is Kind.LIST:
        if not isinstance(value, list):
            raise MalformedPayload(f"{where}: expected a JSON array")
        return [_json_map_to_cbor(v, where, depth) for v in value]
    if info.kind is Kind.LEAF_LIST:
        if not isinstance(value, list):
            raise MalformedPayload(f"{where}: expected a JSON array")
        return [_json_scalar(v, info, where) for v in value]
    return _json_scalar(value, info, where)


def _json_scalar(value: Any, info: KeyInfo, where: str) -> Any:
    kind = info.item if info.kind is Kind.LEAF_LIST else info.kind
    if kind is Kind.ENUM and isinstance(value, str) and info.enum is not None:
        try:
            return int(info.enum.from_label(value))
        except ValueError:
            raise MalformedPayload(f"{where}: unknown label {value!r}") from None
    if kind is Kind.DECIMAL64 and isinstance(value, str | int | float) and type(value) is not bool:
        if isinstance(value, int) and value.bit_length() > 64 or len(str(value)[:64]) >= 64:
            raise MalformedPayload(f"{where}: decimal out of the decimal64 range")
        try:
            return _checked_decimal(decimal.Decimal(str(value)), where)
        except decimal.InvalidOperation:
            raise MalformedPayload(f"{where}: not a decimal: {value!r}") from None
    if kind in UINT_BOUNDS and isinstance(value, str):
        # Table 5 writes 64-bit numbers and retry-timer as JSON strings.
        if not value.isascii() or not value.isdigit() or len(value) > 20:
            raise MalformedPayload(f"{where}: expected a number, got {value[:32]!r}")
        return int(value)
    return value


def _opaque_from_json(value: Any, info: KeyInfo | None, depth: int) -> Any:
    """JSON of a key we do not act on -> the CBOR value it stands for (names to keys, labels
    and JSON strings to numbers, decimals to tag 4), as ``_opaque_to_json`` writes it."""
    if depth > _MAX_DEPTH:
        raise MalformedPayload("JSON nesting too deep")
    if info is None:
        return value  # below a key the table does not know: as written
    kind, where = info.kind, info.short_name
    if isinstance(value, dict):
        if kind not in (Kind.CONTAINER, Kind.LIST):
            raise MalformedPayload(f"{where}: expected a JSON {_json_type(kind)}")
        out: dict[int, Any] = {}
        for name, member in value.items():
            child = _info_for_json_name(name)
            if child is None:
                if isinstance(name, str) and name.isascii() and name.isdigit() and len(name) <= 5:
                    out[int(name)] = _opaque_from_json(member, None, depth + 1)
                    continue
                raise MalformedPayload(f"{where}: unknown attribute {name!r}")
            out[child.key] = _opaque_from_json(member, child, depth + 1)
        return out
    if isinstance(value, list):
        if kind in (Kind.LIST, Kind.CONTAINER):
            return [_opaque_from_json(v, info, depth + 1) for v in value]
        if kind is not Kind.LEAF_LIST:
            raise MalformedPayload(f"{where}: expected a JSON {_json_type(kind)}")
        return [_opaque_scalar_from_json(v, info, where) for v in value]
    return _opaque_scalar_from_json(value, info, where)


def _json_type(kind: Kind) -> str:
    return {Kind.LEAF_LIST: "array"}.get(kind, "value")


def _opaque_scalar_from_json(value: Any, info: KeyInfo | None, where: str) -> Any:
    """Only the JSON forms ``_opaque_scalar_to_json`` writes are converted (labels, numbers
    as canonical digit strings, decimals with two fraction digits); anything else is kept."""
    if info is None or not isinstance(value, str) or not info.json_string:
        return value
    kind = info.item if info.kind is Kind.LEAF_LIST else info.kind
    if kind is Kind.ENUM and info.labels is not None:
        for code, label in info.labels.items():
            if label == value:
                return code
    if kind is Kind.DECIMAL64:
        number: decimal.Decimal | None = None
        if len(value) < 32:
            with contextlib.suppress(decimal.InvalidOperation):
                number = decimal.Decimal(value)
        if number is None or not number.is_finite() or f"{number:.2f}" != value:
            raise MalformedPayload(f"{where}: not a decimal with two fraction digits: "
                                   f"{value[:32]!r}")
        return cbor2.CBORTag(_CBOR_TAG_DECIMAL_FRACTION, [-2, int(number.scaleb(2))])
    if value.isascii() and value.isdigit() and len(value) <= 20 and str(int(value)) == value:
        return int(value)
    raise MalformedPayload(f"{where}: unexpected value {value[:32]!r}")


def _opaque_to_json(value: Any, info: KeyInfo | None) -> Any:
    """A kept value under a registered key we do not act on, written with the registry's
    names and JSON types; whatever does not fit the table is shown as generic JSON."""
    if info is None:
        return _generic_json(value)
    if isinstance(value, dict) and info.kind in (Kind.CONTAINER, Kind.LIST):
        return {_json_name(k) if type(k) is int else str(k): _opaque_to_json(v, KEYS.get(k))
                for k, v in value.items()}
    if isinstance(value, list):
        if info.kind in (Kind.LIST, Kind.CONTAINER):
            return [_opaque_to_json(v, info) for v in value]
        if info.kind is Kind.LEAF_LIST:
            return [_opaque_scalar_to_json(v, info) for v in value]
    return _opaque_scalar_to_json(value, info)


def _opaque_scalar_to_json(value: Any, info: KeyInfo) -> Any:
    kind = info.item if info.kind is Kind.LEAF_LIST else info.kind
    if type(value) is int and value >= 0:
        if kind is Kind.ENUM and info.labels is not None and value in info.labels:
            return info.labels[value]
        if kind is Kind.ENUM and info.labels is None and info.enum is not None \
                and value in info.enum._value2member_map_:
            # An RFC 9132 enumeration inside a telemetry body (the conflict-information
            # of a 4.09 on /tm-setup): its label, as everywhere else.
            return info.enum(value).label
        if info.json_string and kind is not Kind.DECIMAL64:
            return str(value)
    if (kind is Kind.DECIMAL64 and isinstance(value, cbor2.CBORTag)
            and value.tag == _CBOR_TAG_DECIMAL_FRACTION):
        try:
            return f"{_decimal_from_cbor(value, info.short_name):.2f}"
        except MalformedPayload:
            pass
    return _generic_json(value)


def tree_to_json(tree: Mapping[int, Any]) -> dict[str, Any]:
    return {_json_name(key): _value_to_json(key, value) for key, value in tree.items()}


def _json_name(key: int) -> str:
    info = KEYS.get(key)
    return info.name if info is not None else str(key)


def _value_to_json(key: int, value: Any) -> Any:
    info = KEYS.get(key)
    if info is None:
        return _generic_json(value)
    if info.opaque:
        return _opaque_to_json(value, info)
    if info.kind is Kind.CONTAINER:
        return tree_to_json(value)
    if info.kind is Kind.LIST:
        return [tree_to_json(entry) for entry in value]
    if info.kind is Kind.LEAF_LIST:
        return [_scalar_to_json(v, info) for v in value]
    return _scalar_to_json(value, info)


def _scalar_to_json(value: Any, info: KeyInfo) -> Any:
    if info.kind is Kind.ENUM and info.enum is not None:
        try:
            return info.enum(value).label
        except ValueError:
            return str(int(value))
    if info.kind is Kind.DECIMAL64:
        return f"{value:.2f}"
    if info.json_string:
        return str(int(value))
    return value


def _generic_json(value: Any) -> Any:
    """Best-effort JSON view of a relayed extension value (bytes as hex)."""
    if isinstance(value, dict):
        return {str(k): _generic_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_generic_json(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": _generic_json(value.value)}
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def message_from_json(text_or_obj: str | Mapping[str, Any]) -> Message:
    """JSON text (or parsed JSON) in the RFC's notation -> typed message."""
    if isinstance(text_or_obj, str):
        try:
            obj = json.loads(text_or_obj)
        except (ValueError, RecursionError) as exc:
            raise MalformedPayload(f"invalid JSON: {exc}") from None
    else:
        obj = text_or_obj
    return message_from_tree(tree_from_json(obj))


def message_to_json(message: Message) -> dict[str, Any]:
    return tree_to_json(message_to_tree(message))


def json_to_cbor(text_or_obj: str | Mapping[str, Any]) -> bytes:
    """A DOTS message in the RFC's JSON notation (text or parsed) -> application/dots+cbor
    body. The message is checked as a server would check it: a ``DotsProtocolError``
    (``MalformedPayload``, ``InvalidValue``...) names what is wrong."""
    return encode_message(message_from_json(text_or_obj))


def cbor_to_json(data: bytes) -> dict[str, Any]:
    """An application/dots+cbor body -> the RFC's JSON notation (``DotsProtocolError`` for a
    body that is not one DOTS message); unknown comprehension-optional keys are kept."""
    return message_to_json(decode_message(data))


# --- decimals inside values kept whole (RFC 9244's percentiles) ---------------------------------


def decimal_from_cbor(value: Any, where: str) -> decimal.Decimal:
    """A decimal64 with 2 fraction digits as received inside an opaque value (tag 4)."""
    return _decimal_from_cbor(value, where)


def decimal_to_cbor(value: decimal.Decimal) -> Any:
    """The CBOR form (tag 4 ``[-2, mantissa]``) of a decimal64 with 2 fraction digits."""
    return cbor2.CBORTag(_CBOR_TAG_DECIMAL_FRACTION, [-2, int(value.scaleb(2))])
