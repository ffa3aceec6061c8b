"""The conflict detector's target index gives exactly the answers of a scan of every record
with ``Targets.overlap`` (RFC 9132 §4.4.1.3 overlap rules), on random scopes."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dots.codes import Status
from gateway.dots.mitigation_conflicts import TargetIndex
from gateway.dots.mitigation_lifecycle import Mitigation, MitigationState, Owner
from gateway.dots.model import PortRange, Scope

CUIDS = ("client-a", "client-b", "client-c")

# Small address spaces and a wide spread of lengths, so that random prefixes nest often
# (both ways) and also miss each other.
v4 = st.builds(lambda a, n: ipaddress.ip_network((0x0A000000 | a, n), strict=False),
               st.integers(0, 0xFFFF), st.integers(8, 32))
v6 = st.builds(lambda a, n: ipaddress.ip_network((0x20010DB8 << 96 | a, n), strict=False),
               st.integers(0, 0xFFFF), st.sampled_from((32, 64, 100, 112, 116, 120, 127, 128)))
# IPv4-mapped IPv6 shares addresses with IPv4 but not the family: never an overlap.
mapped = st.builds(lambda a, n: ipaddress.ip_network((0xFFFF0A000000 | a, n), strict=False),
                   st.integers(0, 0xFFFF), st.integers(104, 128))
prefixes = st.lists(st.one_of(v4, v6, mapped), max_size=3, unique=True)
fqdns = st.lists(st.sampled_from(("a.example", "A.Example.", "b.example", "b.example.",
                                  "c.example")), max_size=2, unique_by=lambda f: f)
uris = st.lists(st.sampled_from(("https://a.example/x", "https://a.example/y",
                                 "coap://b.example/")), max_size=2, unique=True)
aliases = st.lists(st.sampled_from(("web", "dns", "Web")), max_size=2, unique=True)
ports = st.lists(st.builds(lambda lo, n: PortRange(lo, lo + n if n else None),
                           st.integers(0, 100), st.integers(0, 50)),
                 max_size=2, unique_by=lambda p: p.lower_port)
protocols = st.lists(st.sampled_from((6, 17, 1)), max_size=2, unique=True)


@st.composite
def scopes(draw: st.DrawFn) -> Scope:
    return Scope(target_prefix=tuple(draw(prefixes)), target_fqdn=tuple(draw(fqdns)),
                 target_uri=tuple(draw(uris)), alias_name=tuple(draw(aliases)),
                 target_port_range=tuple(draw(ports)), target_protocol=tuple(draw(protocols)),
                 lifetime=3600)


def record(cuid: str, mid: int, scope: Scope) -> Mitigation:
    return Mitigation(cuid, mid, Owner(cuid), scope, 3600, None, MitigationState.MITIGATING,
                      Status.ATTACK_MITIGATION_IN_PROGRESS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CUIDS), scopes()), max_size=25),
       st.sets(st.integers(0, 24)), st.lists(scopes(), min_size=1, max_size=4),
       st.sampled_from(CUIDS))
def test_index_answers_like_a_scan(entries: list[tuple[str, Scope]], removed: set[int],
                                   queries: list[Scope], cuid: str) -> None:
    index = TargetIndex()
    records = [record(c, mid, s) for mid, (c, s) in enumerate(entries)]
    for r in records:
        index.add(r)
    for mid in removed:
        if mid < len(records):
            index.remove((records[mid].cuid, mid))
    kept = [r for r in records if r.mid not in removed]
    assert len(index) == len(kept)
    for query in queries:
        scan = [r for r in kept if r.scope.overlap(query) is not None]
        assert index.overlapping(query) == scan
        assert index.overlapping(query, cuid=cuid) == [r for r in scan if r.cuid == cuid]
        assert index.overlapping(query, exclude=cuid) == [r for r in scan if r.cuid != cuid]


@settings(max_examples=50, deadline=None)
@given(st.lists(scopes(), max_size=15))
def test_index_is_empty_after_removing_everything(entries: list[Scope]) -> None:
    index = TargetIndex()
    for mid, s in enumerate(entries):
        index.add(record("client-a", mid, s))
    if entries:  # the same key added again replaces its entry
        index.add(record("client-a", 0, Scope(alias_name=("again",), lifetime=1)))
    for mid in range(len(entries)):
        index.remove(("client-a", mid))
    assert len(index) == 0
    assert index._leaves == {} and index._starts == {4: [], 6: []}
    assert index._lengths == {4: {}, 6: {}}


def test_prefixes_overlap_in_both_directions() -> None:
    index = TargetIndex()
    wide = record("a", 1, Scope(target_prefix=(ipaddress.ip_network("10.0.0.0/8"),)))
    narrow = record("a", 2, Scope(target_prefix=(ipaddress.ip_network("10.1.2.0/24"),)))
    index.add(wide)
    index.add(narrow)
    assert index.overlapping(Scope(target_prefix=(ipaddress.ip_network("10.1.0.0/16"),))) == [
        wide, narrow]  # one containing it, one inside it
    assert index.overlapping(Scope(target_prefix=(ipaddress.ip_network("11.0.0.0/8"),))) == []
