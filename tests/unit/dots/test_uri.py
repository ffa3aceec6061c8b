"""Signal-channel URIs: Uri-Path parsing and building, the ``c`` Uri-Query (RFC 9132 §4.2,
§4.4.1.1, §4.4.1.2, §4.4.2, §4.5, §4.7).
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dots.codes import Code
from gateway.dots.errors import DotsUsageError, InvalidPath, NotFound
from gateway.dots.uri import (
    WELL_KNOWN,
    ContentFilter,
    DotsPath,
    Resource,
    build_path,
    parse_path,
    parse_query,
)

CUID = "dz6pHjaADkaFTbjr0JGBpw"
CDID = "7eeaf349529eb55ed50113"


def path(*segments: str) -> list[str]:
    return [*WELL_KNOWN, *segments]


def path_error(segments: list[str], exc_type: type[Exception]) -> Any:
    with pytest.raises(exc_type) as info:
        parse_path(segments)
    assert type(info.value) is exc_type
    return info.value


# --- valid paths --------------------------------------------------------------------------------

VALID = [
    pytest.param(path("mitigate", f"cuid={CUID}"), DotsPath(Resource.MITIGATE, cuid=CUID),
                 id="mitigate-cuid"),
    pytest.param(path("mitigate", f"cuid={CUID}", "mid=123"),
                 DotsPath(Resource.MITIGATE, cuid=CUID, mid=123), id="mitigate-cuid-mid"),
    pytest.param(path("mitigate", f"cdid={CDID}", f"cuid={CUID}", "mid=123"),
                 DotsPath(Resource.MITIGATE, cdid=CDID, cuid=CUID, mid=123),
                 id="fig9-cdid-cuid-mid"),
    pytest.param(path("mitigate", f"cdid={CDID}", f"cuid={CUID}"),
                 DotsPath(Resource.MITIGATE, cdid=CDID, cuid=CUID), id="mitigate-cdid-cuid"),
    pytest.param(path("mitigate", f"cuid={CUID}", "mid=0"),
                 DotsPath(Resource.MITIGATE, cuid=CUID, mid=0), id="mid-0"),
    pytest.param(path("mitigate", f"cuid={CUID}", "mid=4294967295"),
                 DotsPath(Resource.MITIGATE, cuid=CUID, mid=2**32 - 1), id="mid-uint32-max"),
    pytest.param(path("config"), DotsPath(Resource.CONFIG), id="config"),
    pytest.param(path("config", "sid=123"), DotsPath(Resource.CONFIG, sid=123), id="config-sid"),
    pytest.param(path("hb"), DotsPath(Resource.HB), id="hb"),
    pytest.param(path("mitigate", "cuid=a=b"), DotsPath(Resource.MITIGATE, cuid="a=b"),
                 id="value-with-equals-sign"),
]  # fmt: skip


@pytest.mark.parametrize(("segments", "expected"), VALID)
def test_valid_path(segments: list[str], expected: DotsPath) -> None:
    assert parse_path(segments) == expected


@pytest.mark.parametrize(("segments", "expected"), VALID)
def test_build_then_parse_round_trips(segments: list[str], expected: DotsPath) -> None:
    assert expected.segments() == tuple(segments)
    assert parse_path(expected.segments()) == expected


@pytest.mark.parametrize(
    "segments",
    [
        pytest.param(path("hb", ""), id="hb"),
        pytest.param(path("config", ""), id="config"),
        pytest.param(path("config", "sid=1", ""), id="config-sid"),
        pytest.param(path("mitigate", f"cuid={CUID}", "mid=1", ""), id="mitigate"),
    ],
)
def test_one_trailing_empty_segment_is_tolerated(segments: list[str]) -> None:
    assert parse_path(segments) == parse_path(segments[:-1])


def test_two_trailing_empty_segments_are_invalid() -> None:
    error = path_error(path("hb", "", ""), InvalidPath)
    assert error.diagnostic == "Uri-Path segment '' is not a name=value parameter"


def test_build_path_orders_cdid_cuid_mid() -> None:
    assert build_path(Resource.MITIGATE, mid=5, cuid="c", cdid="d") == tuple(
        path("mitigate", "cdid=d", "cuid=c", "mid=5")
    )


# --- invalid paths: 4.00 ------------------------------------------------------------------------

INVALID = [
    pytest.param(path("mitigate", f"cuid={CUID}", f"cdid={CDID}"),
                 "'cdid' must precede 'cuid'", id="cdid-after-cuid"),
    pytest.param(path("mitigate", "mid=1", f"cuid={CUID}"), "'cuid' must not follow 'mid'",
                 id="mid-before-cuid"),
    pytest.param(path("mitigate", "mid=1", f"cdid={CDID}", f"cuid={CUID}"),
                 "'cdid' must precede 'cuid'", id="mid-first"),
    pytest.param(path("mitigate", "mid=1"), "'mid' must follow 'cuid'", id="mid-without-cuid"),
    pytest.param(path("mitigate", f"cdid={CDID}", "mid=1"), "'mid' must follow 'cuid'",
                 id="cdid-mid-without-cuid"),
    pytest.param(path("mitigate"), "need the 'cuid' Uri-Path parameter", id="missing-cuid"),
    pytest.param(path("mitigate", f"cdid={CDID}"), "need the 'cuid'", id="cdid-only"),
    pytest.param(path("config", f"cuid={CUID}"),
                 "'cuid' must not be used on config requests", id="cuid-on-config"),
    pytest.param(path("config", "sid=1", "mid=1"), "'mid' must not be used on config",
                 id="mid-on-config"),
    pytest.param(path("config", f"cdid={CDID}"), "'cdid' must not be used on config",
                 id="cdid-on-config"),
    pytest.param(path("hb", f"cuid={CUID}"), "heartbeat requests carry no Uri-Path parameters",
                 id="cuid-on-hb"),
    pytest.param(path("hb", "mid=1"), "heartbeat requests carry no", id="mid-on-hb"),
    pytest.param(path("hb", "sid=1"), "heartbeat requests carry no", id="sid-on-hb"),
    pytest.param(path("hb", "x"), "'x' is not a name=value parameter", id="bare-on-hb"),
    pytest.param(path("mitigate", "cuid="), "'cuid' has an empty value", id="empty-cuid"),
    pytest.param(path("mitigate", "cdid=", f"cuid={CUID}"), "'cdid' has an empty value",
                 id="empty-cdid"),
    pytest.param(path("mitigate", f"cuid={CUID}", "mid="), "'mid' has an empty value",
                 id="empty-mid"),
    pytest.param(path("config", "sid="), "'sid' has an empty value", id="empty-sid"),
    pytest.param(path("mitigate", f"cuid={CUID}", "foo=1"),
                 "unknown Uri-Path parameter 'foo' for mitigate", id="unknown-parameter"),
    pytest.param(path("mitigate", f"cuid={CUID}", "sid=1"), "unknown Uri-Path parameter 'sid'",
                 id="sid-on-mitigate"),
    pytest.param(path("config", "foo=1"), "unknown Uri-Path parameter 'foo' for config",
                 id="unknown-on-config"),
    pytest.param(path("mitigate", "cuid=a", "cuid=b"), "'cuid' appears twice", id="dup-cuid"),
    pytest.param(path("mitigate", "cuid=a", "mid=1", "mid=2"), "'mid' appears twice",
                 id="dup-mid"),
    pytest.param(path("config", "sid=1", "sid=2"), "'sid' appears twice", id="dup-sid"),
    pytest.param(path("mitigate", CUID), f"{CUID!r} is not a name=value parameter",
                 id="segment-without-equals"),
    pytest.param(path("mitigate", "", f"cuid={CUID}"), "'' is not a name=value parameter",
                 id="empty-segment-in-the-middle"),
    pytest.param(path("mitigate", "CUID=x"), "unknown Uri-Path parameter 'CUID'",
                 id="names-are-case-sensitive"),
]  # fmt: skip


@pytest.mark.parametrize(("segments", "fragment"), INVALID)
def test_invalid_path(segments: list[str], fragment: str) -> None:
    error = path_error(segments, InvalidPath)
    assert error.code is Code.BAD_REQUEST
    assert fragment in error.diagnostic


NUMBERS = [
    "abc",
    "-1",
    "+5",
    " 5",
    "5 ",
    "4294967296",
    "99999999999999999999",
    "1.0",
    "0x10",
    "5_0",
    "１２",
    "٣",
    "²",
]


@pytest.mark.parametrize("value", NUMBERS)
def test_mid_must_be_a_uint32(value: str) -> None:
    error = path_error(path("mitigate", f"cuid={CUID}", f"mid={value}"), InvalidPath)
    assert error.diagnostic == f"'mid' must be an unsigned 32-bit integer, got {value!r}"


@pytest.mark.parametrize("value", NUMBERS)
def test_sid_must_be_a_uint32(value: str) -> None:
    error = path_error(path("config", f"sid={value}"), InvalidPath)
    assert error.diagnostic == f"'sid' must be an unsigned 32-bit integer, got {value!r}"


def test_mid_with_thousands_of_digits_is_invalid() -> None:
    path_error(path("mitigate", f"cuid={CUID}", "mid=" + "9" * 5000), InvalidPath)


# --- not a DOTS resource: 4.04 ------------------------------------------------------------------

NOT_FOUND = [
    pytest.param([], "not a DOTS signal-channel resource", id="empty"),
    pytest.param([".well-known"], "not a DOTS signal-channel resource", id="well-known-only"),
    pytest.param(list(WELL_KNOWN), "not a DOTS signal-channel resource", id="no-resource"),
    pytest.param([".well-known", "dots", ""], "unknown DOTS resource ''", id="empty-resource"),
    pytest.param(["well-known", "dots", "hb"], "not a DOTS", id="missing-dot"),
    pytest.param([".well-known", "DOTS", "hb"], "not a DOTS", id="uppercase-dots"),
    pytest.param(["dots", "hb"], "not a DOTS", id="no-well-known"),
    pytest.param([".well-known", "core"], "not a DOTS", id="other-well-known"),
    pytest.param(["x", ".well-known", "dots", "hb"], "not a DOTS", id="extra-prefix"),
    pytest.param(path("mitigation", f"cuid={CUID}"), "unknown DOTS resource 'mitigation'",
                 id="unknown-resource"),
    pytest.param(path("HB"), "unknown DOTS resource 'HB'", id="uppercase-resource"),
]  # fmt: skip


@pytest.mark.parametrize(("segments", "fragment"), NOT_FOUND)
def test_not_a_dots_resource_is_not_found(segments: list[str], fragment: str) -> None:
    error = path_error(segments, NotFound)
    assert error.code is Code.NOT_FOUND
    assert fragment in error.diagnostic


# --- build_path refuses what the RFC forbids ----------------------------------------------------

FORBIDDEN_BUILDS = [
    pytest.param(Resource.MITIGATE, {}, "mitigate paths need a cuid", id="mitigate-no-cuid"),
    pytest.param(Resource.MITIGATE, {"mid": 1}, "need a cuid", id="mid-without-cuid"),
    pytest.param(Resource.MITIGATE, {"cuid": "c", "sid": 1}, "sid is not a parameter of mitigate",
                 id="sid-on-mitigate"),
    pytest.param(Resource.CONFIG, {"cuid": "c"}, "cuid is not a parameter of config",
                 id="cuid-on-config"),
    pytest.param(Resource.CONFIG, {"mid": 1}, "mid is not a parameter of config",
                 id="mid-on-config"),
    pytest.param(Resource.HB, {"cuid": "c"}, "cuid is not a parameter of hb", id="cuid-on-hb"),
    pytest.param(Resource.HB, {"sid": 0}, "sid is not a parameter of hb", id="sid-on-hb"),
    pytest.param(Resource.MITIGATE, {"cuid": ""}, "cuid must not be empty", id="empty-cuid"),
    pytest.param(Resource.MITIGATE, {"cuid": "c", "cdid": ""}, "cdid must not be empty",
                 id="empty-cdid"),
]  # fmt: skip


@pytest.mark.parametrize(("resource", "params", "fragment"), FORBIDDEN_BUILDS)
def test_build_path_refuses(resource: Resource, params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DotsUsageError, match=fragment):
        build_path(resource, **params)


# --- the c Uri-Query ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queries", "expected"),
    [
        pytest.param([], ContentFilter.ALL, id="absent-means-all"),
        pytest.param(["c=c"], ContentFilter.CONFIG, id="config"),
        pytest.param(["c=n"], ContentFilter.NON_CONFIG, id="non-config"),
        pytest.param(["c=a"], ContentFilter.ALL, id="all"),
    ],
)
def test_valid_query(queries: list[str], expected: ContentFilter) -> None:
    assert parse_query(queries) is expected


@pytest.mark.parametrize(
    ("queries", "fragment"),
    [
        pytest.param(["c=x"], "'c' must be c, n or a; got 'x'", id="bad-value"),
        pytest.param(["c="], "'c' must be c, n or a; got ''", id="empty-value"),
        pytest.param(["c=A"], "got 'A'", id="uppercase-value"),
        pytest.param(["c"], "unknown Uri-Query 'c'", id="no-equals"),
        pytest.param(["d=c"], "unknown Uri-Query 'd=c'", id="unknown-name"),
        pytest.param(["c=c", "x=1"], "unknown Uri-Query 'x=1'", id="unknown-after-c"),
        pytest.param(["c=c", "c=n"], "Uri-Query 'c' appears twice", id="duplicate"),
        pytest.param(["c=a", "c=a"], "appears twice", id="duplicate-same"),
    ],
)
def test_invalid_query(queries: list[str], fragment: str) -> None:
    with pytest.raises(InvalidPath) as info:
        parse_query(queries)
    assert info.value.code is Code.BAD_REQUEST
    assert fragment in info.value.diagnostic


# --- RFC 9244 telemetry resources ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        pytest.param(path("tm-setup", f"cuid={CUID}"), DotsPath(Resource.TM_SETUP, cuid=CUID),
                     id="tm-setup-all"),
        pytest.param(path("tm-setup", f"cuid={CUID}", "tsid=123"),
                     DotsPath(Resource.TM_SETUP, cuid=CUID, tsid=123), id="tm-setup-tsid"),
        pytest.param(path("tm", f"cdid={CDID}", f"cuid={CUID}", "tmid=567"),
                     DotsPath(Resource.TM, cdid=CDID, cuid=CUID, tmid=567), id="tm-cdid-tmid"),
    ],
)
def test_telemetry_paths_round_trip(segments: list[str], expected: DotsPath) -> None:
    parsed = parse_path(segments)
    assert parsed == expected
    assert list(parsed.segments()) == segments


@pytest.mark.parametrize(
    ("segments", "fragment"),
    [
        pytest.param(path("tm-setup", "tsid=1"), "'tsid' must follow 'cuid'", id="tsid-alone"),
        pytest.param(path("tm"), "tm requests need the 'cuid'", id="tm-no-cuid"),
        pytest.param(path("tm", "tmid=1", f"cuid={CUID}"), "must not follow", id="tmid-first"),
        pytest.param(path("tm", f"cuid={CUID}", "tsid=1"), "unknown Uri-Path parameter 'tsid'",
                     id="tsid-on-tm"),
        pytest.param(path("tm-setup", f"cuid={CUID}", "tsid=-1"), "unsigned 32-bit",
                     id="negative-tsid"),
        pytest.param(path("tm-setup", f"cuid={CUID}", "mid=1"),
                     "unknown Uri-Path parameter 'mid'", id="mid-on-tm-setup"),
    ],
)
def test_invalid_telemetry_paths(segments: list[str], fragment: str) -> None:
    error = path_error(segments, InvalidPath)
    assert fragment in error.diagnostic


def test_telemetry_build_path_needs_cuid() -> None:
    with pytest.raises(DotsUsageError):
        build_path(Resource.TM, tmid=1)
    assert build_path(Resource.TM, cuid=CUID, tmid=4)[-1] == "tmid=4"
