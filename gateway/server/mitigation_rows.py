"""A saved mitigation as one row of the ``mitigation`` table, and back.

Loading checks every column as strictly as a request body is checked (the scope goes
through the same CBOR decoder), because the file may have been edited or damaged: a row
that fails raises ValueError naming its column, and ``MitigationDatabase.load`` skips it.
Deadlines are stored as epoch seconds (see ``gateway.server.persistence``).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.dots.codec import decode_message, encode_message
from gateway.dots.codes import Status
from gateway.dots.mitigation_lifecycle import (
    INDEFINITE,
    UINT32_MAX,
    Counters,
    Mitigation,
    MitigationState,
    Owner,
)
from gateway.dots.model import MitigationScope, Scope

COLUMNS = (
    "cuid, mid, credential_id, cdid, scope, lifetime, expires_at, terminate_at, state, status, "
    "transient_status, transient_reports_left, mitigation_start, counters, conflict, updated_at"
)
COUNTERS = (
    ("bytes-dropped", "bytes_dropped"),
    ("bps-dropped", "bps_dropped"),
    ("pkts-dropped", "pkts_dropped"),
    ("pps-dropped", "pps_dropped"),
)
UINT64_MAX = 2**64 - 1


def mitigation_row(record: Mitigation, wall_offset: float, updated_at: float,
                   scope_cbor: bytes | None = None) -> tuple[Any, ...]:
    """The row for ``record``, in ``COLUMNS`` order; deadlines as epoch seconds.
    ``scope_cbor``: ``encode_scope(record.scope)`` if the caller has it already."""
    conflict = None
    if record.conflict is not None:
        conflict = encode_message(MitigationScope((Scope(conflict_information=record.conflict),)))
    counters = {name: value for name, attr in COUNTERS
                if (value := getattr(record.counters, attr)) is not None}
    return (
        record.cuid,
        record.mid,
        record.owner.credential_id,
        record.owner.cdid,
        encode_scope(record.scope) if scope_cbor is None else scope_cbor,
        record.lifetime,
        None if record.expires_at is None else record.expires_at + wall_offset,
        None if record.terminate_at is None else record.terminate_at + wall_offset,
        record.state.value,
        int(record.status),
        None if record.transient_status is None else int(record.transient_status),
        record.transient_reports_left,
        record.mitigation_start,
        json.dumps(counters, separators=(",", ":")) if counters else "{}",
        conflict,
        updated_at,
    )


def encode_scope(scope: Scope) -> bytes:
    """The ``scope`` column: a mitigation-scope body with this one entry."""
    return encode_message(MitigationScope((scope,)))


def mitigation_from_row(row: tuple[Any, ...], wall_offset: float) -> Mitigation:
    """The record a row holds; ValueError naming the column that is not what we save."""
    (cuid, mid, credential_id, cdid, scope_cbor, lifetime, expires_at, terminate_at, state,
     status, transient_status, transient_left, mitigation_start, counters, conflict) = row[:15]
    if not isinstance(cuid, str) or not cuid:
        raise ValueError(f"cuid {cuid!r} is not a non-empty string")
    if not is_int(mid) or not 0 <= mid <= UINT32_MAX:
        raise ValueError(f"mid {mid!r} is not a uint32")
    if not isinstance(credential_id, str) or not (cdid is None or isinstance(cdid, str)):
        raise ValueError(f"owner {credential_id!r}/{cdid!r} is not text")
    if not is_int(lifetime) or not (lifetime == INDEFINITE or 0 <= lifetime <= UINT32_MAX):
        raise ValueError(f"lifetime {lifetime!r} is neither -1 nor a uint32")
    record_state = MitigationState(state)
    if record_state is MitigationState.ENDED:
        raise ValueError("state 'ended' is never saved")
    expires = _deadline(expires_at, "expires_at", wall_offset)
    terminate = _deadline(terminate_at, "terminate_at", wall_offset)
    if record_state is MitigationState.TERMINATING and terminate is None:
        raise ValueError("terminating without terminate_at")
    if not (mitigation_start is None or is_int(mitigation_start)):
        raise ValueError(f"mitigation_start {mitigation_start!r} is not an integer")
    if not is_int(transient_left):
        raise ValueError(f"transient_reports_left {transient_left!r} is not an integer")
    return Mitigation(
        cuid=cuid,
        mid=mid,
        owner=Owner(credential_id, cdid),
        scope=_one_scope(scope_cbor, "scope"),
        lifetime=lifetime,
        expires_at=expires,
        state=record_state,
        status=Status(_checked_int(status, "status")),
        mitigation_start=mitigation_start,
        counters=_counters(counters),
        conflict=None
        if conflict is None
        else _one_scope(conflict, "conflict").conflict_information,
        terminate_at=terminate,
        transient_status=None if transient_status is None
        else Status(_checked_int(transient_status, "transient_status")),
        transient_reports_left=transient_left,
    )


def _one_scope(data: Any, what: str) -> Scope:
    if not isinstance(data, bytes):
        raise ValueError(f"{what} is {type(data).__name__}, not CBOR bytes")
    message = decode_message(data)  # the same checks as a request body
    if not isinstance(message, MitigationScope) or len(message.scope) != 1:
        raise ValueError(f"{what} is not a mitigation-scope with one entry")
    return message.scope[0]


def _counters(text: Any) -> Counters:
    if not isinstance(text, str):
        raise ValueError(f"counters {text!r} is not JSON text")
    data = json.loads(text)
    if not isinstance(data, dict) or set(data) - {name for name, _attr in COUNTERS}:
        raise ValueError(f"counters {text!r} is not an object of the four counters")
    values = {}
    for name, attr in COUNTERS:
        value = data.get(name)
        if value is not None and not (is_int(value) and 0 <= value <= UINT64_MAX):
            raise ValueError(f"counter {name} {value!r} is not a counter64")
        values[attr] = value
    return Counters(**values)


def _deadline(epoch: Any, what: str, wall_offset: float) -> float | None:
    if epoch is None:
        return None
    if not isinstance(epoch, int | float) or isinstance(epoch, bool) or epoch != epoch:
        raise ValueError(f"{what} {epoch!r} is not a time")
    return float(epoch) - wall_offset


def _checked_int(value: Any, what: str) -> int:
    if not is_int(value):
        raise ValueError(f"{what} {value!r} is not an integer")
    return int(value)


def is_int(value: Any) -> bool:
    """An int that is not a bool (SQLite and JSON give both)."""
    return isinstance(value, int) and not isinstance(value, bool)
