"""Signal-channel URIs: ``/.well-known/dots/{mitigate,config,hb,tm-setup,tm}`` and their
parameters.

Uri-Path options arrive as a sequence of segments. Parameters are segments of the form
``name=value`` after the resource name, with ordering rules from RFC 9132 §4.4.1.1-§4.7:
``cdid`` (only from gateways) before ``cuid``, ``mid`` after ``cuid``, no ``cuid`` on
``config`` (which takes ``sid``), nothing at all on ``hb``; empty values are invalid.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.dots.errors import InvalidPath, NotFound

WELL_KNOWN = (".well-known", "dots")
_UINT32_MAX = 2**32 - 1


class Resource(enum.Enum):
    MITIGATE = "mitigate"
    CONFIG = "config"
    HB = "hb"
    TM_SETUP = "tm-setup"  # RFC 9244 §7
    TM = "tm"  # RFC 9244 §8


class ContentFilter(enum.Enum):
    """The ``c`` Uri-Query of a mitigation GET (RFC 9132 §4.4.2, Table 2)."""

    CONFIG = "c"
    NON_CONFIG = "n"
    ALL = "a"


@dataclass(frozen=True, slots=True)
class DotsPath:
    resource: Resource
    cdid: str | None = None
    cuid: str | None = None
    mid: int | None = None
    sid: int | None = None
    tsid: int | None = None
    tmid: int | None = None

    def segments(self) -> tuple[str, ...]:
        return build_path(self.resource, cdid=self.cdid, cuid=self.cuid, mid=self.mid, sid=self.sid,
                          tsid=self.tsid, tmid=self.tmid)


# The order parameters must follow on each resource (RFC 9132 §4.4.1.1, §4.5.2, §4.7).
_ORDER: dict[Resource, tuple[str, ...]] = {
    Resource.MITIGATE: ("cdid", "cuid", "mid"),
    Resource.CONFIG: ("sid",),
    Resource.HB: (),
    # RFC 9244 §7.1.2, §8.2: 'tsid'/'tmid' after 'cuid'; 'cdid' from gateways as on mitigate.
    Resource.TM_SETUP: ("cdid", "cuid", "tsid"),
    Resource.TM: ("cdid", "cuid", "tmid"),
}



def parse_path(segments: Sequence[str]) -> DotsPath:
    """Uri-Path segments -> ``DotsPath``; violations raise ``InvalidPath`` (4.00).

    A path outside ``/.well-known/dots/`` or naming an unknown resource raises ``NotFound``
    (4.04), which is what CoAP answers for a resource that does not exist.
    """
    return _parse(tuple(segments))


# A client repeats the same few paths (its heartbeats, its mitigation's refreshes), and the
# result is immutable: parsing once per distinct path saves ~5% of a request's CPU.
@functools.lru_cache(maxsize=4096)
def _parse(segments: tuple[str, ...]) -> DotsPath:
    segs = list(segments)
    if segs and segs[-1] == "" and len(segs) > 3:
        # A trailing "/" in a client's URI becomes one empty Uri-Path option (RFC 7252
        # §6.4); it names no parameter, so tolerate exactly one.
        segs.pop()
    if tuple(segs[:2]) != WELL_KNOWN or len(segs) < 3:
        raise NotFound("not a DOTS signal-channel resource: /" + "/".join(segs))
    try:
        resource = Resource(segs[2])
    except ValueError:
        raise NotFound(f"unknown DOTS resource {segs[2]!r}") from None
    allowed = _ORDER[resource]
    values: dict[str, str] = {}
    position = -1
    for seg in segs[3:]:
        name, eq, value = seg.partition("=")
        if not eq:
            raise InvalidPath(f"Uri-Path segment {seg!r} is not a name=value parameter")
        if name not in allowed:
            raise InvalidPath(_not_allowed(resource, name))
        if name in values:
            raise InvalidPath(f"Uri-Path parameter {name!r} appears twice")
        if value == "":
            raise InvalidPath(f"Uri-Path parameter {name!r} has an empty value (RFC 9132 §4.4.1.1)")
        index = allowed.index(name)
        if index < position:
            raise InvalidPath(_misordered(name, allowed[position]))
        position = index
        values[name] = value
    for name in ("mid", "tsid", "tmid"):
        if name in values and "cuid" not in values:
            raise InvalidPath(f"'{name}' must follow 'cuid' (RFC 9132 §4.4.1.1, RFC 9244 §7.1.2)")
    if resource is Resource.MITIGATE and "cuid" not in values:
        raise InvalidPath("mitigation requests need the 'cuid' Uri-Path parameter")
    if resource in (Resource.TM_SETUP, Resource.TM) and "cuid" not in values:
        raise InvalidPath(f"{resource.value} requests need the 'cuid' Uri-Path parameter "
                          "(RFC 9244 §7.1.2, §8.2)")
    return DotsPath(
        resource,
        cdid=values.get("cdid"),
        cuid=values.get("cuid"),
        **{name: _uint32(values[name], name)
           for name in ("mid", "sid", "tsid", "tmid") if name in values},
    )


def _not_allowed(resource: Resource, name: str) -> str:
    if resource is Resource.HB:
        return "heartbeat requests carry no Uri-Path parameters (RFC 9132 §4.7)"
    if resource is Resource.CONFIG and name in ("cuid", "cdid", "mid"):
        return f"'{name}' must not be used on config requests (RFC 9132 §4.5.2)"
    return f"unknown Uri-Path parameter {name!r} for {resource.value}"


def _misordered(name: str, after: str) -> str:
    if name == "cdid":
        return "'cdid' must precede 'cuid' (RFC 9132 §4.4.1.2)"
    return f"'{name}' must not follow '{after}'"


def _uint32(text: str, name: str) -> int:
    # int() would accept "+5", " 5" and "5_0"; the wire form is plain decimal digits.
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > _UINT32_MAX:
        raise InvalidPath(f"'{name}' must be an unsigned 32-bit integer, got {text!r}")
    return int(text)


def build_path(
    resource: Resource,
    *,
    cdid: str | None = None,
    cuid: str | None = None,
    mid: int | None = None,
    sid: int | None = None,
    tsid: int | None = None,
    tmid: int | None = None,
) -> tuple[str, ...]:
    """The Uri-Path segments for a request; refuses combinations the RFC forbids."""
    from gateway.dots.errors import DotsUsageError

    segs = [*WELL_KNOWN, resource.value]
    given = {"cdid": cdid, "cuid": cuid, "mid": mid, "sid": sid, "tsid": tsid, "tmid": tmid}
    for name, value in given.items():
        if value is not None and name not in _ORDER[resource]:
            raise DotsUsageError(f"{name} is not a parameter of {resource.value}")
        if value == "":
            raise DotsUsageError(f"{name} must not be empty")
    if resource in (Resource.MITIGATE, Resource.TM_SETUP, Resource.TM) and cuid is None:
        raise DotsUsageError(f"{resource.value} paths need a cuid")
    for name in _ORDER[resource]:
        if given[name] is not None:
            segs.append(f"{name}={given[name]}")
    return tuple(segs)


def parse_query(queries: Sequence[str]) -> ContentFilter:
    """Uri-Query options of a mitigation GET -> the ``c`` filter (default ``a``)."""
    result = ContentFilter.ALL
    seen = False
    for query in queries:
        name, eq, value = query.partition("=")
        if name != "c" or not eq:
            raise InvalidPath(
                f"unknown Uri-Query {query!r}; only 'c=' is defined (RFC 9132 §4.4.2)"
            )
        if seen:
            raise InvalidPath("Uri-Query 'c' appears twice")
        try:
            result = ContentFilter(value)
        except ValueError:
            raise InvalidPath(f"Uri-Query 'c' must be c, n or a; got {value!r}") from None
        seen = True
    return result
